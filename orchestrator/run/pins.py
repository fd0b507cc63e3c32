"""What every run is pinned to: the weights file and the input tensors, checked against the
digests in the matrix before the first run. A mismatch is fatal, never benchmarked. The weights
are hashed once per session; each run's worker checks the file against the guard taken with
the digest (workers/contract/fileguard.py) instead of hashing it again."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.matrix import Cell, InputsSpec, Matrix, ModelSpec
from orchestrator.errors import UserError
from workers.contract.checkpoint import is_whole, write_synthetic
from workers.contract.digest import sha256_file
from workers.contract.fileguard import FileGuard
from workers.contract.inputs import PinnedInputs, pinned_inputs
from workers.contract.messages import Setup, SetupInputs, SetupModel
from workers.contract.presets import preset


@dataclass(frozen=True)
class PinnedModel:
    path: Path
    sha256: str
    source: str
    preset: str
    seed: int | None
    guard: FileGuard

    def describe(self) -> str:
        what = f"synthetic {self.preset} (seed {self.seed})" if self.source == "synthetic" else f"checkpoint {self.path}"
        return f"{what}, sha256 {self.sha256[:12]}…"


def synthetic_path(spec: ModelSpec) -> Path:
    return spec.cache_dir / "synthetic" / f"{spec.preset}-seed{spec.seed}.safetensors"


def pin_model(spec: ModelSpec, matrix_path: Path, log=print) -> PinnedModel:
    if spec.synthetic:
        path = synthetic_path(spec)
        if path.is_file() and not is_whole(path):
            log(f"cached {path.name} is incomplete; writing it again")
        if not is_whole(path):
            log(f"writing synthetic {spec.preset} weights (seed {spec.seed}) to {path}")
            write_synthetic(preset(spec.preset), spec.seed, path)
        digest, guard = _guarded_digest(path, matrix_path)
        if spec.sha256 and digest != spec.sha256:
            log(f"cached {path.name} does not match the pinned digest; writing it again")
            write_synthetic(preset(spec.preset), spec.seed, path)
            digest, guard = _guarded_digest(path, matrix_path)
        if not spec.sha256:
            log(f"note: the synthetic model is not pinned; add  sha256 = \"{digest}\"  to [model] in {matrix_path}")
    else:
        assert spec.path is not None
        log(f"verifying {spec.path}")
        path = spec.path
        digest, guard = _guarded_digest(path, matrix_path)
    if spec.sha256 and digest != spec.sha256:
        raise UserError(
            f"{matrix_path}: [model] sha256 mismatch for {path}",
            f"  pinned:   {spec.sha256}",
            f"  on disk:  {digest}",
        )
    return PinnedModel(path, digest, spec.source, spec.preset, spec.seed if spec.synthetic else None, guard)


def _guarded_digest(path: Path, matrix_path: Path) -> tuple[str, FileGuard]:
    """The file's digest and the guard that stands for it in each run: taken before the read and
    compared after it, so a file written while it is hashed is refused."""
    guard = FileGuard.of(path)
    digest = sha256_file(path)
    if changes := guard.changes(path):
        raise UserError(f"{matrix_path}: [model] {path} changed while its sha256 was computed "
                        f"({', '.join(changes)}); run again once nothing writes it")
    return digest, guard


def pin_inputs(spec: InputsSpec, resolutions: list[int], matrix_path: Path) -> dict[int, PinnedInputs]:
    out: dict[int, PinnedInputs] = {}
    problems: list[str] = []
    for res in resolutions:
        inputs = pinned_inputs(res, batch=spec.batch, seed=spec.seed, timestep=spec.timestep)
        got = inputs.digests()
        pin = spec.sha256.get(res)
        if pin is None:
            problems.append(
                f"{matrix_path}: [inputs.sha256] no pin for resolution {res}; add under [inputs.sha256]:\n"
                f"  \"{res}\" = {{ latent = \"{got['latent']}\", text_embedding = \"{got['text_embedding']}\" }}"
            )
            continue
        for name in ("latent", "text_embedding"):
            if got[name] != pin[name]:
                problems.append(
                    f"{matrix_path}: [inputs.sha256.{res}] {name} mismatch\n  pinned:   {pin[name]}\n  computed: {got[name]}"
                )
        out[res] = inputs
    if problems:
        raise UserError(*problems)
    return out


def setup_message(matrix: Matrix, cell: Cell, model: PinnedModel, inputs: PinnedInputs,
                  warmup: int | None = None, iterations: int | None = None, min_window_s: float | None = None,
                  nvml_check: bool = False) -> Setup:
    """The `setup` message a worker receives for `cell`."""
    return Setup(
        cell=cell.as_setup(),
        model=SetupModel(source=model.source, path=str(model.path), sha256=model.sha256,
                         guard=model.guard, arch=preset(matrix.model.preset).as_dict()),
        inputs=SetupInputs(latent=inputs.latent, text_embedding=inputs.text_embedding, timestep=inputs.timestep,
                           sha256=inputs.digests()),
        warmup=matrix.timing.warmup if warmup is None else warmup,
        iterations=matrix.timing.iterations if iterations is None else iterations,
        min_window_s=(matrix.timing.min_window_s or 0.0) if min_window_s is None else min_window_s,
        cache_dir=str(matrix.model.cache_dir),
        nvml_check=nvml_check,
    )
