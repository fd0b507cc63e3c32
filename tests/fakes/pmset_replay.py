"""Stands in for macOS `pmset`: prints the real captured output (tests/fixtures/pmset/) named by
CDB_PMSET_BATT (`-g batt`), CDB_PMSET_SETTINGS (`-g`) and CDB_PMSET_THERM (`-g therm`)."""

import os
import sys

VARIABLES = {("-g", "batt"): "CDB_PMSET_BATT", ("-g",): "CDB_PMSET_SETTINGS", ("-g", "therm"): "CDB_PMSET_THERM"}

name = VARIABLES.get(tuple(sys.argv[1:]))
if name is None or name not in os.environ:
    sys.exit(f"pmset: no capture for {' '.join(sys.argv[1:])}")
with open(os.environ[name], encoding="utf-8") as f:
    sys.stdout.write(f.read())
