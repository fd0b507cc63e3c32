"""The worker protocol's messages, one typed class each, in the order a run sends them:
hello (worker), setup (orchestrator), ready or unsupported (worker), measure (orchestrator),
result (worker); error (worker) at any point. Each side builds what it sends from these classes
and checks what it receives against them, so a message that does not fit is named by its field.

On the wire a message is its fields plus `type` (`wire`); numpy arrays travel as protocol.py
encodes them, bit for bit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from workers.contract.fileguard import FileGuard
from workers.contract.typed import Invalid, build, field, to_dict


@dataclass
class Hello:
    TYPE: ClassVar[str] = "hello"
    protocol: int = field(doc="the worker's PROTOCOL_VERSION; the orchestrator refuses another")
    pid: int = field(doc="the worker process, fresh for each run")
    uid: int | None = field(doc="the user it runs as (null where the OS has none)")
    python: str = field(doc="the worker's Python version")
    python_executable: str | None = field(None, doc="its interpreter")
    platform: str | None = field(None, doc="platform.platform()")
    machine: str | None = field(None, doc="platform.machine()")
    env: str | None = field(None, doc="the env it runs in")


@dataclass
class SetupModel:
    source: str = field(doc="`checkpoint` or `synthetic`")
    path: str = field(doc="the weights file")
    sha256: str = field(doc="pinned digest of the weights file, verified by the orchestrator once per session")
    guard: FileGuard = field(doc="the file as it was when verified; the worker compares it by os.stat")
    arch: dict[str, Any] = field(doc="the UNet preset's architecture (presets.UNetArch.as_dict)")


@dataclass
class SetupInputs:
    latent: np.ndarray = field(doc="[batch, 4, res/8, res/8] float32")
    text_embedding: np.ndarray = field(doc="[batch, 77, 768] float32")
    timestep: int = field(doc="the UNet timestep")
    sha256: dict[str, str] = field(doc="pinned digests of `latent` and `text_embedding`")


@dataclass
class Setup:
    TYPE: ClassVar[str] = "setup"
    cell: dict[str, Any] = field(doc="the cell as the worker receives it (Cell.as_setup)")
    model: SetupModel = field(doc="the pinned weights")
    inputs: SetupInputs = field(doc="the pinned inputs")
    warmup: int = field(doc="iterations run and discarded before `ready`")
    iterations: int = field(doc="timed iterations at least")
    min_window_s: float = field(0.0, unit="s", doc="the timed window lasts at least this long")
    cache_dir: str | None = field(None, doc="where a backend may cache conversions")
    nvml_check: bool = field(False, doc="read the NVML energy counter around the timed loop")


@dataclass
class Ready:
    TYPE: ClassVar[str] = "ready"
    load_s: float = field(unit="s", doc="model load, imports included")
    warmup_s: float = field(unit="s", doc="the warmup iterations")
    realized: dict[str, Any] = field(plain=True, doc="what runs: device, dtype, attention, threads, conversion facts")
    versions: dict[str, Any] = field(plain=True, doc="the toolchain's versions")
    model_sha256: str = field(doc="the weights loaded")

    def __post_init__(self) -> None:
        _conversion(self.realized, "realized")


@dataclass
class Unsupported:
    TYPE: ClassVar[str] = "unsupported"
    reason: str = field(doc="why this host cannot run the cell")
    versions: dict[str, Any] = field(factory=dict, plain=True, doc="the toolchain's versions")
    facts: dict[str, Any] = field(factory=dict, plain=True, doc="what the backend established first (a conversion)")

    def __post_init__(self) -> None:
        _conversion(self.facts, "facts")


def _conversion(facts: dict[str, Any], where: str) -> None:
    """A converting backend's facts ride under `conversion`; the run record keeps them as a table."""
    if not isinstance(facts.get("conversion", {}), dict):
        raise Invalid(f"{where}.conversion: expected a table or null, got {type(facts['conversion']).__name__}")


@dataclass
class Measure:
    TYPE: ClassVar[str] = "measure"


@dataclass
class NvmlCheck:
    start_ns: int = field(unit="ns", doc="monotonic stamp of the first counter read")
    end_ns: int = field(unit="ns", doc="monotonic stamp of the second counter read")
    joules: float = field(unit="J", doc="the counter's change between them")


@dataclass
class Result:
    TYPE: ClassVar[str] = "result"
    window_start_ns: int = field(unit="ns", doc="monotonic: the first iteration's start")
    window_end_ns: int = field(unit="ns", doc="monotonic: the last iteration's end")
    iteration_start_ns: list[int] = field(unit="ns", doc="each timed iteration's start")
    iteration_end_ns: list[int] = field(unit="ns", doc="each timed iteration's end")
    output: np.ndarray = field(doc="the UNet output of the last iteration")
    output_sha256: str = field(doc="of `output`")
    nvml_check: NvmlCheck | None = field(None, doc="with `nvml_check`: the worker's own counter reads")
    minor_faults: int | None = field(None, unit="count", doc="the worker's minor page faults over the timed loop, all "
                                     "its threads (getrusage): memory the steps took fresh from the kernel")

    def minor_faults_per_step(self) -> float | None:
        """`minor_faults` per timed iteration; None from a worker that did not count them."""
        return None if self.minor_faults is None else self.minor_faults / len(self.iteration_start_ns)

    def check(self, setup: Setup) -> None:
        """What the types cannot say: at least the iterations asked for, each ending after it
        starts and after the one before, all inside the window, on a clock numpy can hold; an
        output of the latent's shape in a float dtype. Invalid names the field."""
        where = "protocol: result: field"
        starts, ends = self.iteration_start_ns, self.iteration_end_ns
        if len(starts) != len(ends):
            raise Invalid(f"{where} iteration_end_ns: {len(ends)} ends for {len(starts)} starts")
        if len(starts) < max(setup.iterations, 1):
            raise Invalid(f"{where} iteration_start_ns: {len(starts)} iterations, at least "
                          f"{max(setup.iterations, 1)} asked for")
        stamps = [self.window_start_ns, *(t for pair in zip(starts, ends, strict=True) for t in pair), self.window_end_ns]
        if not all(0 <= t < 2**63 for t in stamps):
            raise Invalid(f"{where} iteration_start_ns: a stamp outside 0..2**63-1 ns")
        for i, (a, b) in enumerate(zip(stamps, stamps[1:])):
            if b < a:
                raise Invalid(f"{where} iteration_end_ns: the stamps go backwards at position {i + 1} "
                              f"({b} after {a}; window start, then each iteration's start and end, then window end)")
        if self.minor_faults is not None and self.minor_faults < 0:
            raise Invalid(f"{where} minor_faults: {self.minor_faults}, a count cannot be negative")
        if self.window_end_ns <= self.window_start_ns:
            raise Invalid(f"{where} window_end_ns: the window lasts {self.window_end_ns - self.window_start_ns} ns")
        expected = tuple(setup.inputs.latent.shape)
        if self.output.shape != expected:
            raise Invalid(f"{where} output: shape {list(self.output.shape)}, the latent's is {list(expected)}")
        if self.output.dtype.kind != "f":
            raise Invalid(f"{where} output: dtype {self.output.dtype}, expected a float dtype")


@dataclass
class Error:
    TYPE: ClassVar[str] = "error"
    message: str = field(doc="one line: the exception that ended the worker")


# A fork server's messages (workers/forkserver.py): it says `fork_ready` once on its stdout; then,
# per run, the orchestrator connects, sends `fork` with the run's stdin, stdout and log as file
# descriptors, and reads `forked` (the child's pid) and, when the server has reaped the child,
# `fork_exit`.


@dataclass
class ForkReady:
    TYPE: ClassVar[str] = "fork_ready"
    pid: int = field(doc="the fork server")
    import_s: float = field(unit="s", doc="importing the preloaded modules, paid once per env and session")
    preloaded: list[str] = field(doc="the modules imported before any fork")
    not_preloaded: dict[str, str] = field(factory=dict, doc="module -> why it could not be imported (a run imports "
                                                            "it again and reports the failure itself)")
    threads: int | None = field(None, unit="count", doc="the server's OS threads when it forks (numpy's BLAS pool "
                                                        "is one; none of them is copied into a child)")
    cuda_fork_unsafe: str | None = field(None, doc="why a forked worker could not use CUDA; the orchestrator then "
                                                   "spawns the workers of this env's CUDA cells")


@dataclass
class Fork:
    TYPE: ClassVar[str] = "fork"
    argv: list[str] = field(doc="the command line a spawned worker would have had (sys.argv of the child)")
    environ: dict[str, str] = field(doc="the environment a spawned worker would have had")


@dataclass
class Forked:
    TYPE: ClassVar[str] = "forked"
    pid: int = field(doc="the child: a new session and process group, the run's worker")


@dataclass
class ForkExit:
    TYPE: ClassVar[str] = "fork_exit"
    code: int = field(doc="the child's exit status as Popen reports it (negative: the signal)")


Message = Hello | Setup | Ready | Unsupported | Measure | Result | Error | ForkReady | Fork | Forked | ForkExit
M = TypeVar("M", Hello, Setup, Ready, Unsupported, Measure, Result, Error, ForkReady, Fork, Forked, ForkExit)


def wire(message: Message) -> dict[str, Any]:
    """The message as protocol.encode sends it."""
    return {"type": message.TYPE, **to_dict(message)}


def parse(data: dict[str, Any], cls: type[M]) -> M:
    """A received frame as `cls`; Invalid names the message and field (`protocol: result:
    field iteration_start_ns[3]: expected an integer, got 'x'`)."""
    if data.get("type") != cls.TYPE:
        raise Invalid(f"protocol: expected {cls.TYPE}, got {data.get('type')!r}")
    return build(cls, {k: v for k, v in data.items() if k != "type"}, f"protocol: {cls.TYPE}")
