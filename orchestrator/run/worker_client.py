"""One run: a fresh worker process in the cell's env, driven through the protocol in two phases.

`WorkerRun.start()` brings the worker to ready (loaded and warm) or unsupported; the caller does
what must happen with the worker idle (cooldown, the baseline window), then `measure()` runs the
timed loop and `close()` ends the process. The time between ready and measure does not count
against the run's timeout.

Any ending other than hello, ready, result and exit 0 (a non-zero exit, a signal, a timeout, a
malformed frame or message, another protocol version, an error message) becomes a `failed`
outcome with a one-line reason; nothing here raises for a misbehaving worker, so a session
always goes on to its next run.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from orchestrator.config.envs import Env
from orchestrator.errors import describe_exit
from orchestrator.run.forkserver import ForkedWorker, ForkServer, ForkServerError
from workers.contract.messages import Error, Hello, M, Measure, Message, Ready, Result, Setup, Unsupported, parse, wire
from workers.contract.protocol import PROTOCOL_VERSION, FrameReader, PeerClosed, ProtocolError, encode
from workers.contract.typed import Invalid

STOP_GRACE_S = 5.0


@dataclass
class RunOutcome:
    status: str = "failed"  # "ok" | "failed" | "unsupported"
    reason: str | None = None
    hello: Hello | None = None
    ready: Ready | None = None
    unsupported: Unsupported | None = None
    result: Result | None = None
    wait_s: float = 0.0  # between ready and measure (cooldown, baseline): not counted against the timeout
    wall_s: float = 0.0
    exit_code: int | None = None
    worker_start: str = "spawn"  # or "forkserver": how the worker process came to be


class _Failed(Exception):
    pass


def worker_command(env: Env, label: str) -> list[str]:
    return [str(env.python), "-m", "workers", "--serve", "--env-name", env.name, "--run-label", label]


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _ended(proc: subprocess.Popen[bytes] | ForkedWorker) -> str:
    """How the worker ended, in words; a forked worker whose server died ends with it and says so."""
    if isinstance(proc, ForkedWorker) and proc.server_died:
        return "went down with its fork server, which died,"
    return describe_exit(proc.returncode)


class WorkerRun:
    """One worker process, from start() through an optional measure() to close(); `outcome`
    says how it went. close() always ends the process and anything it started."""

    def __init__(self, env: Env, setup: Setup, *, label: str, log_path: Path, timeout_s: float,
                 forkserver: ForkServer | None = None):
        self.env, self.setup, self.label, self.log_path, self.timeout_s = env, setup, label, log_path, timeout_s
        self.forkserver = forkserver
        self.outcome = RunOutcome(worker_start="forkserver" if forkserver is not None else "spawn")
        self._proc: subprocess.Popen[bytes] | ForkedWorker | None = None
        self._reader: FrameReader | None = None
        self._log: IO[bytes] | None = None
        self._t0 = self._deadline = self._ready_at = 0.0

    def start(self) -> Ready | Unsupported | None:
        """Start the worker and send its setup: Ready (loaded and warm, waiting for measure),
        Unsupported, or None when the run failed (`outcome.reason` says why)."""
        o = self.outcome
        self._t0 = time.monotonic()
        self._deadline = self._t0 + self.timeout_s
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        command = worker_command(self.env, self.label)
        try:
            if self.forkserver is not None:
                self._proc = self.forkserver.fork(command[1:], self.env.worker_environ(), self._log,
                                                  max(0.1, self._deadline - time.monotonic()))
            else:
                self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                              start_new_session=True, env=self.env.worker_environ())
        except ForkServerError as e:
            o.reason = str(e)
            return None
        except OSError as e:
            o.reason = f"cannot start the worker ({self.env.python}): {e.strerror or e}"
            return None
        assert self._proc.stdout is not None
        self._reader = FrameReader(self._proc.stdout)
        try:
            o.hello = self._parse(self._receive(Hello), Hello)
            self._send(self.setup)
            msg = self._receive(Ready, Unsupported)
            if msg["type"] == Unsupported.TYPE:
                o.unsupported = self._parse(msg, Unsupported)
                self._exit()
                o.status, o.reason = "unsupported", o.unsupported.reason
                return o.unsupported
            o.ready = self._parse(msg, Ready)
        except _Failed as e:
            o.reason = str(e)
            return None
        self._ready_at = time.monotonic()
        return o.ready

    def measure(self) -> Result | None:
        """Run the timed loop of a ready worker: its Result, or None when the run failed."""
        o = self.outcome
        if o.ready is None or o.result is not None or o.reason is not None:
            raise RuntimeError("measure() needs a worker that start() brought to ready")
        o.wait_s = time.monotonic() - self._ready_at
        self._deadline += o.wait_s
        try:
            self._send(Measure())
            result = self._parse(self._receive(Result), Result)
            try:
                result.check(self.setup)
            except Invalid as e:
                raise _Failed(str(e)) from None
            self._exit()
        except _Failed as e:
            o.reason = str(e)
            return None
        o.result, o.status = result, "ok"
        return result

    def close(self) -> RunOutcome:
        """End the worker however far it got; the outcome, final."""
        o = self.outcome
        started = self._proc is not None
        if self._proc is not None:
            _stop(self._proc)
            o.exit_code = self._proc.returncode
            self._proc = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._log is not None:
            self._log.close()
            self._log = None
            o.wall_s = time.monotonic() - self._t0
        if o.status == "failed" and started:
            o.reason = o.reason or "the run ended before the worker was asked to measure"
            if (last := _last_line(self.log_path)) and last not in o.reason:
                o.reason = f"{o.reason} (log: {last})"
        return o

    def __enter__(self) -> WorkerRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _receive(self, *kinds: type[Message]) -> dict[str, Any]:
        """The next frame, if it is one of `kinds` (and, for hello, of this protocol version)."""
        assert self._proc is not None and self._reader is not None
        names = " or ".join(k.TYPE for k in kinds)
        try:
            msg = self._reader.recv(self._deadline)
        except TimeoutError:
            raise _Failed(f"timeout: no {names} within run_timeout_s={self.timeout_s:g}") from None
        except PeerClosed:
            try:
                self._proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass  # described as still running; _stop ends it
            raise _Failed(f"worker {_ended(self._proc)} before sending {kinds[0].TYPE}") from None
        except ProtocolError as e:
            raise _Failed(str(e)) from None
        if msg["type"] == Error.TYPE:
            raise _Failed(f"worker error: {self._parse(msg, Error).message}")
        if msg["type"] not in {k.TYPE for k in kinds}:
            raise _Failed(f"protocol: expected {names}, got {msg['type']!r}")
        if msg["type"] == Hello.TYPE and msg.get("protocol") != PROTOCOL_VERSION:
            raise _Failed(f"protocol: the worker speaks version {msg.get('protocol')!r}, "
                          f"this orchestrator version {PROTOCOL_VERSION}")
        return msg

    @staticmethod
    def _parse(msg: dict[str, Any], kind: type[M]) -> M:
        try:
            return parse(msg, kind)
        except Invalid as e:
            raise _Failed(str(e)) from None

    def _send(self, message: Message) -> None:
        """Write one message, within the run's deadline: a worker that stops reading (hung after
        hello, say) cannot block the orchestrator on a full pipe."""
        assert self._proc is not None and self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        os.set_blocking(fd, False)
        data = memoryview(encode(wire(message)))
        while data:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                raise _Failed(f"timeout: the worker did not read its {message.TYPE} within "
                              f"run_timeout_s={self.timeout_s:g}")
            try:
                data = data[os.write(fd, data):]
            except BlockingIOError:
                continue
            except OSError:
                try:
                    self._proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass  # described as still running; _stop ends it
                raise _Failed(f"worker {_ended(self._proc)} before reading its "
                              f"{message.TYPE}") from None

    def _exit(self) -> None:
        """The worker said its last message: it must now exit 0 on its own."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            code = self._proc.wait(timeout=max(0.1, min(STOP_GRACE_S, self._deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            raise _Failed("worker did not exit after sending its result") from None
        if code != 0:
            raise _Failed(f"worker {_ended(self._proc)} after its result")


def run_worker(env: Env, setup: Setup, *, label: str, log_path: Path, timeout_s: float,
               forkserver: ForkServer | None = None) -> RunOutcome:
    """One run with nothing between ready and measure (a reference output, a debug run)."""
    with WorkerRun(env, setup, label=label, log_path=log_path, timeout_s=timeout_s, forkserver=forkserver) as run:
        if isinstance(run.start(), Ready):
            run.measure()
    return run.outcome


def _stop(proc: subprocess.Popen[bytes] | ForkedWorker) -> None:
    """The worker and anything it started are gone when a run ends, however it ended."""
    if proc.poll() is None:
        _signal(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal(proc.pid, signal.SIGKILL)
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream and not stream.closed:
            try:
                stream.close()
            except OSError:
                pass


def _signal(pid: int, signum: int) -> None:
    """Signal the worker's process group, or the worker alone while it has none: a forked worker
    makes its group (setsid) only once it runs, and the server names it right after the fork, so
    a run stopped at once would otherwise leave it waiting on its stdin and the orchestrator on it."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # already gone; the wait that follows collects its status
