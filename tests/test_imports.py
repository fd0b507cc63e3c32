"""The orchestrator never imports a toolchain: it runs where torch, mlx and coremltools are not
installed (the root env has none), and a session must never pay their import time or state."""

from __future__ import annotations

import json
import subprocess
import sys

TOOLCHAINS = ("torch", "mlx", "coremltools", "diffusers", "transformers")


def test_importing_every_orchestrator_module_imports_no_toolchain():
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import orchestrator\n"
        "for m in pkgutil.walk_packages(orchestrator.__path__, 'orchestrator.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        f"print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in {TOOLCHAINS!r})))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == []
