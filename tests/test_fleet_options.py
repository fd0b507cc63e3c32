"""What a fleet session checks without a cluster: the matrix's [fleet] section and cells'
`hosts` and `isolation`, `--ray` without Ray installed, node keys, label matching and which
node or GPU slot is free."""

import subprocess
import sys

import pytest
from conftest import REPO

from orchestrator.config.matrix import Cell, load_matrix
from orchestrator.energy import meters
from orchestrator.errors import UserError
from orchestrator.fleet.cluster import RayNode
from orchestrator.fleet.dispatch import Member, host_keys, refusals
from orchestrator.fleet.node import NodeFacts

QUICK = REPO / "examples" / "quick.toml"
ENVS = {"diffusers", "mlx"}


def _errors(tmp_path, text: str) -> list[str]:
    path = tmp_path / "m.toml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_matrix(path, ENVS)
    return e.value.lines


def test_fleet_section_and_cell_hosts_are_checked(tmp_path):
    text = QUICK.read_text().replace('id = "diffusers-cpu-fp32"', 'id = "diffusers-cpu-fp32"\nhosts = { "1chip" = "", os = "Linux*" }')
    lines = _errors(tmp_path, text + "\n[fleet]\nretries = -1\nreplicate = \"everywhere\"\n")
    assert any("[fleet]: field 'retries': must be >= 0 and <= 100, got -1" in line for line in lines), lines
    assert any("[fleet]: field 'replicate': 'everywhere' is not one of each-host, spread" in line for line in lines), lines
    assert any("cell 'diffusers-cpu-fp32': field 'hosts': a label name" in line and "'1chip'" in line for line in lines)
    assert any("label '1chip' has an empty pattern" in line for line in lines), lines
    assert not any("'os'" in line for line in lines)


def test_fleet_defaults(tmp_path):
    m = load_matrix(QUICK, ENVS)
    assert (m.fleet.retries, m.fleet.replicate) == (1, "spread")
    assert all(c.hosts == {} for c in m.cells)


def _cli_without_ray(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a process where `import ray` fails, as in a checkout synced without the extra."""
    code = ("import sys; sys.modules['ray'] = None; from orchestrator.cli import main; "
            f"sys.argv = ['orchestrate', *{list(args)!r}]; main()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_ray_option_without_ray_says_how_to_install_it(tmp_path):
    p = _cli_without_ray(str(QUICK), "--out", str(tmp_path), "--ray", "local:2")
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: --ray needs Ray, the optional extra `fleet`: run `uv sync --extra fleet` once, or "
        "`uv run --extra fleet orchestrate ... --ray ...`"]
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def test_a_local_cluster_has_a_bounded_number_of_nodes(tmp_path):
    p = _cli_without_ray(str(QUICK), "--out", str(tmp_path), "--ray", "local:0")
    assert p.returncode == 2 and p.stderr.strip() == "error: --ray local:0: a local cluster has 1 to 16 nodes"


def _facts(hostname: str, system: str = "Linux", machine: str = "x86_64", cpu: str = "AMD EPYC",
           gpus: list[str] | None = None) -> NodeFacts:
    return NodeFacts(host={"hostname": hostname, "system": system, "machine": machine, "cpu": cpu,
                           "gpus": gpus or []})


def test_nodes_sharing_a_hostname_get_a_key_each():
    assert host_keys([_facts("vm"), _facts("mac"), _facts("vm")]) == ["vm/node-1", "mac", "vm/node-2"]


def test_cells_select_nodes_by_facts_chip_and_ray_labels():
    def cell(**hosts: str) -> Cell:
        return Cell(id="c", backend="diffusers", precision="fp32", device="cpu", hosts=hosts)

    mac = Member("mac", RayNode("a", "10.0.0.1", {"rack": "r1"}), None, _facts("mac", "Darwin", "arm64", "Apple M2 Max"))
    gpu = Member("gpu", RayNode("b", "10.0.0.2"), None,
                 _facts("gpu", gpus=["NVIDIA H100 80GB HBM3, 550.54, GPU-1234"]))
    assert mac.serves(cell(chip="Apple M2*")) and not gpu.serves(cell(chip="Apple M2*"))
    assert gpu.serves(cell(chip="NVIDIA H100*")) and gpu.serves(cell(gpu="NVIDIA H100 80GB HBM3"))
    assert mac.serves(cell(rack="r1")) and not gpu.serves(cell(rack="r1"))
    assert mac.serves(cell()) and gpu.serves(cell())
    assert not mac.serves(cell(chip="apple m2*"))  # patterns are case-sensitive


def test_a_node_whose_study_differs_from_the_drivers_is_refused_naming_each_difference():
    study = {"matrix sha256": "a" * 64, "model sha256": "b" * 64, "env diffusers lock sha256": "c" * 64,
             "harness commit": ["d" * 40]}
    same = Member("vm/node-1", RayNode("1", "10.0.0.1"), None, NodeFacts(study=dict(study)))
    other = Member("vm/node-2", RayNode("2", "10.0.0.2"), None,
                   NodeFacts(study={**study, "env diffusers lock sha256": "e" * 64, "harness commit": ["f" * 40]}))
    broken = Member("gpu", RayNode("3", "10.0.0.3"), None, NodeFacts(problem="envs/mlx: uv is not installed"))
    assert refusals(study, [same]) == []
    assert refusals(study, [same, other, broken]) == [
        "--ray: refusing node vm/node-2 (10.0.0.2), it differs from this driver: env diffusers lock sha256 "
        "eeeeeeeeeeee… (vs cccccccccccc…); harness commit ['ffffffffffffffffffffffffffffffffffffffff'] "
        "(vs ['dddddddddddddddddddddddddddddddddddddddd'])",
        "--ray: refusing node gpu (10.0.0.3): envs/mlx: uv is not installed"]


GPU_CELL = '\n[[cells]]\nid = "g"\nbackend = "diffusers"\ndevice = "cuda"\nprecision = "fp16"\nresolution = 64\n'


def test_gpu_isolation_needs_a_cuda_device_and_a_per_board_meter(tmp_path):
    text = QUICK.read_text() + GPU_CELL + 'isolation = "gpu"\n'
    bad = (text.replace('id = "g"', 'id = "g1"') + GPU_CELL.replace('"g"', '"g2"').replace('"cuda"', '"cuda:1"')
           + 'isolation = "gpu"\n' + GPU_CELL.replace('"g"', '"g3"').replace('"cuda"', '"cpu"') + 'isolation = "gpu"\n'
           + GPU_CELL.replace('"g"', '"g4"') + 'isolation = "board"\n')
    lines = _errors(tmp_path, bad)
    assert [line.split(": ", 1)[1] for line in lines] == [
        "cell 'g2': field 'isolation': \"gpu\" needs device = \"cuda\" (a run gets one GPU of its node, which it "
        "sees as cuda:0), got device 'cuda:1'",
        "cell 'g3': field 'isolation': \"gpu\" needs device = \"cuda\" (a run gets one GPU of its node, which it "
        "sees as cuda:0), got device 'cpu'",
        "cell 'g4': field 'isolation': 'board' is not one of gpu, node"], lines
    path = tmp_path / "ok.toml"
    for meter in ("auto", "nvml"):
        path.write_text(text.replace('meter = "auto"', f'meter = "{meter}"'))
        m = load_matrix(path, ENVS)
        meters.check(m, str(path))
        assert [c.isolation for c in m.cells] == ["node", "node", "node", "gpu"]
    for meter in ("rapl", "none"):
        path.write_text(text.replace('meter = "auto"', f'meter = "{meter}"'))
        with pytest.raises(UserError) as e:
            meters.check(load_matrix(path, ENVS), str(path))
        assert e.value.lines == [f"{path}: cell 'g': field 'isolation': \"gpu\" needs a per-board meter ([power] "
                                 f"meter = \"auto\" or nvml); '{meter}' cannot tell one GPU's runs from the others'"]


def test_a_gpu_slot_meters_its_own_board_whatever_device_the_cell_names():
    cell = Cell(id="g", backend="diffusers", precision="fp16", device="cuda", isolation="gpu")
    assert meters.Meters(None, "none").index(cell) == 0
    assert meters.Meters(None, "none", gpu=3).index(cell) == 3


def test_gpu_slots_of_a_node_run_together_and_never_beside_a_whole_node_run():
    def member(key: str, node: str, gpu: int | None = None) -> Member:
        return Member(key, RayNode(node, "10.0.0.1"), None, NodeFacts(host={"hostname": "gpu"}, gpu=gpu))

    whole, g0, g1 = member("h", "a"), member("h/gpu-0", "a", 0), member("h/gpu-1", "a", 1)
    other = member("h2", "b")
    assert g1.free([g0]) and not whole.free([g0]) and not g0.free([whole]) and not g0.free([g0])
    assert whole.free([other]) and g0.free([other]) and whole.free([]) and not whole.free([whole])
    gpu_cell = Cell(id="g", backend="diffusers", precision="fp16", device="cuda", isolation="gpu")
    node_cell = Cell(id="n", backend="diffusers", precision="fp16", device="cuda")
    assert g0.serves(gpu_cell) and not whole.serves(gpu_cell)
    assert whole.serves(node_cell) and not g0.serves(node_cell)
