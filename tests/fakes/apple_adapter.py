"""Run inside envs/coreml-ct8 by tests/test_coreml_apple.py: the `apple` adapter against the
stand-in of Apple's module (tests/fakes/apple_standin), installed here as a git install of
version 1.1.0 at the commit given, with PEP 610 metadata. Prints what happened, as JSON."""

import json
import shutil
import sys
from pathlib import Path

STANDIN = Path(__file__).resolve().parent / "apple_standin"


def install(site: Path, commit: str) -> None:
    """The stand-in as pip or uv leave a git install: the package and a dist-info with direct_url.json."""
    shutil.copytree(STANDIN / "python_coreml_stable_diffusion", site / "python_coreml_stable_diffusion")
    info = site / "python_coreml_stable_diffusion-1.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: python_coreml_stable_diffusion\nVersion: 1.1.0\n")
    (info / "direct_url.json").write_text(json.dumps(
        {"url": "https://github.com/apple/ml-stable-diffusion", "vcs_info": {"vcs": "git", "commit_id": commit}}))


def main(work: Path, commit: str) -> dict:
    site = work / "site"
    install(site, commit)
    sys.path.insert(0, str(site))

    from python_coreml_stable_diffusion import torch2coreml

    from workers.contract.checkpoint import write_synthetic
    from workers.contract.digest import sha256_file
    from workers.contract.presets import PRESETS
    from workers.coreml import convert
    from workers.coreml.artifact import Source, key_fields, prepare
    from workers.coreml.cache import ConversionCache, cache_key
    from workers.coreml.request import ConversionRequest
    from workers.coreml.verify import SpecMismatch

    path = write_synthetic(PRESETS["tiny"], 0, work / "tiny.safetensors")
    src = Source(PRESETS["tiny"], str(path), sha256_file(path))
    out: dict = {"converter_version": convert.converter_version("apple")}
    for pal in (None, "w4"):
        req = ConversionRequest("apple", "split_einsum_v2", "fp16", pal, 256, "macOS13")
        torch2coreml.CALLS.clear()
        target = work / f"{pal or 'fp16'}.mlpackage"
        timings = convert.convert_apple(req, PRESETS["tiny"], str(path), target)
        out[pal or "fp16"] = {"calls": torch2coreml.CALLS[:], "timings": sorted(timings),
                              "package": target.is_dir(), "key": cache_key(key_fields(req, src))}
    cache = ConversionCache(work / "cache")
    try:
        prepare(ConversionRequest("apple", "split_einsum_v2", "fp16", "w4", 256, "macOS13"), src, cache)
        out["prepare"] = "verified"
    except SpecMismatch as e:
        out["prepare"] = f"SpecMismatch: {e}"
    out["cache_entries"] = sorted(p.name for p in cache.root.iterdir() if not p.name.endswith(".lock"))
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2])))
