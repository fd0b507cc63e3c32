"""Worker environments: discovery, listing, interpreter overrides, clear failures."""

import json
import os
import re
import subprocess
import tomllib

import pytest
from conftest import BIN, REPO, cli

from orchestrator.config.envs import Env, discover, ensure_synced, parse_overrides, sync
from orchestrator.errors import UserError
from orchestrator.results.provenance import env_record


def test_diffusers_env_is_discovered_with_its_lock():
    env = discover()["diffusers"]
    assert env.project == REPO / "envs" / "diffusers"
    assert len(env.lock_sha256()) == 64
    versions = env.locked_versions()
    assert {"torch", "diffusers", "numpy"} <= versions.keys()


def test_mlx_env_locks_the_cpu_build_for_linux_and_metal_for_macos():
    env = discover()["mlx"]
    packages = {p["name"]: p for p in tomllib.loads(env.lock.read_text())["package"]}
    assert {"mlx", "mlx-cpu", "mlx-metal", "numpy", "msgpack"} <= packages.keys()
    assert any("macosx" in w["url"] for w in packages["mlx-metal"]["wheels"])
    assert any("linux" in w["url"] for w in packages["mlx-cpu"]["wheels"])
    assert "mlx" in env.locked_versions()


ORCHESTRATOR_ONLY = ("click", "rich", "psutil", "safetensors")  # nvidia-ml-py: diffusers' --nvml-check needs it


@pytest.mark.parametrize("name", [e.name for e in discover().values() if e.lock_sha256()])
def test_worker_env_locks_hold_no_orchestrator_dependency(name):
    """An env installs its toolchain, numpy and msgpack, never the harness itself: the orchestrator's
    packages appear in its lock only when its toolchain asks for them (huggingface-hub brings click)."""
    packages = tomllib.loads(discover()[name].lock.read_text())["package"]
    names = {p["name"] for p in packages}
    assert "coreml-diffusion-benchmarks" not in names
    (project,) = [p for p in packages if p["name"] == f"cdb-env-{name}"]
    assert {"numpy", "msgpack"} <= {d["name"] for d in project["dependencies"]}
    wanted_by = {d["name"] for p in packages if p is not project for d in p.get("dependencies", [])}
    for dep in ORCHESTRATOR_ONLY:
        assert dep not in {d["name"] for d in project["dependencies"]}
        assert dep not in names or dep in wanted_by, f"{name} locks {dep}, which nothing in it needs"


def test_no_worker_code_imports_orchestrator_only_packages():
    """Worker code runs in envs that lack the orchestrator's dependencies."""
    imports = re.compile(r"^\s*(?:import|from)\s+(click|rich|psutil|safetensors)\b", re.M)
    found = [f"{p.relative_to(REPO)}: {m.group(1)}" for p in (REPO / "workers").rglob("*.py")
             for m in imports.finditer(p.read_text())]
    assert found == []


def test_a_synced_worker_env_runs_the_checkout_without_the_orchestrators_packages(mlx_python, diffusers_python,
                                                                                  tmp_path):
    """Synced envs cannot import the orchestrator's packages, yet run the workers from this
    checkout (on PYTHONPATH), from any folder."""
    missing = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    for python, absent in ((mlx_python, ["click", "rich", "psutil", "pynvml", "safetensors"]),
                           (diffusers_python, ["rich", "psutil"])):
        p = subprocess.run([str(python), "-c", missing, *absent], capture_output=True, text=True, cwd=tmp_path)
        assert p.returncode == 0 and p.stdout.strip() == "[]", (python, p.stdout, p.stderr)
    for python, backend in ((diffusers_python, "diffusers"), (mlx_python, "mlx")):
        bare = subprocess.run([str(python), "-m", "workers", "--probe", backend], capture_output=True, text=True,
                              cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert bare.returncode != 0 and "No module named workers" in bare.stderr
        p = subprocess.run([str(python), "-m", "workers", "--probe", backend], capture_output=True, text=True,
                           cwd=tmp_path, env=Env.worker_environ(), timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        assert json.loads(p.stdout.strip().splitlines()[-1])["devices"]["cpu"]


def test_envs_list_json(diffusers_python):
    p = cli("envs", "list", "--json")
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    d = rows["diffusers"]
    assert d["synced"] is True and d["python"].startswith("3.")
    assert d["lock_sha256"] == discover()["diffusers"].lock_sha256()
    assert d["packages_from"] == "installed" and "torch" in d["packages"]
    (site,) = (REPO / "envs" / "diffusers" / ".venv" / "lib").glob("python*/site-packages")
    assert [f"numpy-{d['packages']['numpy']}.dist-info"] == [p.name for p in site.glob("numpy-*.dist-info")]
    assert all(not r["python"].startswith("/") for r in rows.values())  # a version or "not built", never a path


TWO_NUMPYS = """version = 1
requires-python = ">=3.11"

[[package]]
name = "numpy"
version = "2.4.6"
resolution-markers = ["python_full_version < '3.12'"]

[[package]]
name = "numpy"
version = "2.5.5"
resolution-markers = ["python_full_version >= '3.12'"]

[[package]]
name = "torch"
version = "2.15.0"
"""


@pytest.mark.parametrize(("python", "numpy"), [("3.11.7", "2.4.6"), ("3.12.1", "2.5.5")])
def test_versions_are_the_installed_ones_or_the_lock_entry_for_the_env_s_python(tmp_path, python, numpy):
    """A lock pinning numpy once per Python range: the entry whose markers match the env's Python."""
    project = tmp_path / "envs" / "x"
    site = project / ".venv" / "lib" / f"python{python[:4]}" / "site-packages"
    site.mkdir(parents=True)
    (project / "uv.lock").write_text(TWO_NUMPYS)
    env = Env("x", project)
    assert env.python_label() == "not built"
    (project / ".venv" / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion_info = {python}\n")
    assert env.locked_versions() == {"numpy": numpy, "torch": "2.15.0"}
    assert env.python_label() == python
    (site / "numpy-2.4.0.dist-info").mkdir()  # what is installed wins once the env is synced
    (project / ".venv" / "bin").mkdir()
    (project / ".venv" / "bin" / "python").write_text("")
    assert env.package_versions() == ({"numpy": numpy, "torch": "2.15.0"}, "lock")
    (project / ".venv" / ".cdb-synced-lock").write_text(env.lock_sha256())
    assert env.package_versions() == ({"numpy": "2.4.0"}, "installed")
    record = env_record(env)  # what session.json keeps of the env
    assert record["installed_versions"] == {"numpy": "2.4.0"} and record["locked_versions"]["numpy"] == numpy


def test_a_changed_lock_means_not_synced(tmp_path):
    project = tmp_path / "envs" / "x"
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "python").write_text("")
    (project / "uv.lock").write_text("version = 1\n")
    env = Env("x", project)
    assert not env.synced
    (project / ".venv" / ".cdb-synced-lock").write_text(env.lock_sha256())
    assert env.synced
    (project / "uv.lock").write_text("version = 1\n# changed\n")
    assert not env.synced


def test_override_needs_name_and_existing_interpreter(tmp_path):
    with pytest.raises(UserError, match="expected NAME=/path/to/python"):
        parse_overrides(["diffusers"])
    with pytest.raises(UserError, match="interpreter not found"):
        parse_overrides([f"diffusers={tmp_path / 'nope'}"])
    envs = discover(parse_overrides([f"cluster={BIN / 'python'}"]))
    assert envs["cluster"].external_python == BIN / "python" and envs["cluster"].synced


def test_missing_uv_is_a_clear_error(tmp_path, monkeypatch):
    project = tmp_path / "x"
    project.mkdir()
    (project / "uv.lock").write_text("")
    monkeypatch.delenv("UV", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="uv is not installed"):
        sync(Env("x", project), log=lambda m: None)


def test_ensure_synced_refuses_a_vanished_interpreter(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ensure_synced([Env("gone", None, external_python=tmp_path / "python")], log=lambda m: None)


@pytest.mark.slow
def test_env_pointed_at_an_existing_interpreter_runs_a_cell(diffusers_python, cache_dir):
    """--env NAME=PYTHON: the interpreter has torch but the harness comes from this checkout."""
    p = subprocess.run([str(BIN / "worker"), "--cell", "diffusers-cpu-fp32", "--iterations", "2",
                        "--env", f"diffusers={diffusers_python}"],
                       capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, "CDB_CACHE_DIR": str(cache_dir)})
    assert p.returncode == 0, p.stderr
    assert f"({diffusers_python})" in p.stdout and p.stdout.count("  iteration ") == 2


def test_doctor_says_what_this_host_can_measure(diffusers_python, mlx_python):
    p = cli("doctor", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert set(r["meters"]) == {"powermetrics", "nvml", "rapl"}
    for m in r["meters"].values():
        assert m["detail"]  # a reason either way
    d = r["backends"]["diffusers"]
    assert d["synced"] and d["devices"]["cpu"] and "torch" in d["versions"]
    m = r["backends"]["mlx"]
    assert m["synced"] and m["devices"]["cpu"] and "mlx" in m["versions"]
    assert m["devices"]["gpu"] is False  # Linux mlx[cpu]: no Metal, no CUDA
    coreml = r["backends"]["coreml"]["envs"]
    for name in ("coreml-ct8", "coreml-ct9"):
        if coreml[name]["synced"]:  # the Core ML tests sync them; this host converts but cannot predict
            assert coreml[name]["devices"]["converters"] and coreml[name]["devices"]["predict"] is False
    assert "no uv.lock yet" in coreml["coreml-apple"]["detail"]
    text = cli("doctor")
    assert text.returncode == 0 and "power meters (auto would use:" in text.stdout
    assert r["meter_broker"] == {"socket": "/var/run/coreml-diffusion-benchmarks/broker.sock", "answers": False}
    assert "  no meter broker answers at /var/run/coreml-diffusion-benchmarks/broker.sock" in text.stdout
    assert "mlx           env mlx: cpu: " in text.stdout and "gpu: no" in text.stdout
