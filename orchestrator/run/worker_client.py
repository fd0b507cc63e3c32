"""One run: a fresh worker process in the cell's env, driven through the protocol.

Any ending other than hello, ready, result and exit 0 (a non-zero exit, a signal, a timeout, a
malformed frame, an error message) becomes a `failed` outcome with a one-line reason; nothing
here raises for a misbehaving worker, so a session always goes on to its next run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config.envs import Env
from orchestrator.config.privileges import child_kwargs
from workers.contract.protocol import FrameReader, PeerClosed, ProtocolError, encode

STOP_GRACE_S = 5.0


@dataclass
class RunOutcome:
    status: str  # "ok" | "failed" | "unsupported"
    reason: str | None = None
    hello: dict[str, Any] = field(default_factory=dict)
    ready: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    unsupported_versions: dict[str, Any] = field(default_factory=dict)
    unsupported_facts: dict[str, Any] = field(default_factory=dict)  # what the worker established first
    wait_s: float = 0.0  # time spent in `between` (cooldown), not counted against the timeout
    wall_s: float = 0.0
    exit_code: int | None = None


class _Failed(Exception):
    pass


def worker_command(env: Env, label: str) -> list[str]:
    return [str(env.python), "-m", "workers", "--serve", "--env-name", env.name, "--run-label", label]


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def run_worker(
    env: Env,
    setup: dict[str, Any],
    *,
    label: str,
    log_path: Path,
    timeout_s: float,
    between: Callable[[dict[str, Any]], None] = lambda ready: None,
) -> RunOutcome:
    """Run one worker to completion. `between(ready)` runs after the worker reported ready and
    before `measure` is sent (cooldown, baseline); its time does not count against `timeout_s`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    outcome = RunOutcome(status="failed")
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                worker_command(env, label), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True, **child_kwargs(env.worker_environ()),
            )
        except OSError as e:
            outcome.reason = f"cannot start the worker ({env.python}): {e.strerror or e}"
            outcome.wall_s = time.monotonic() - t0
            return outcome
        reader = FrameReader(proc.stdout)
        deadline = t0 + timeout_s

        def expect(*types: str) -> dict[str, Any]:
            try:
                msg = reader.recv(deadline)
            except TimeoutError:
                raise _Failed(f"timeout: no {' or '.join(types)} within run_timeout_s={timeout_s:g}") from None
            except PeerClosed:
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass  # described as still running; _stop ends it
                raise _Failed(f"worker {_describe_exit(proc.returncode)} before sending {types[0]}") from None
            except ProtocolError as e:
                raise _Failed(str(e)) from None
            if msg["type"] == "error":
                raise _Failed(f"worker error: {msg.get('message', '')}")
            if msg["type"] not in types:
                raise _Failed(f"protocol: expected {' or '.join(types)}, got {msg['type']!r}")
            return msg

        def send(msg: dict[str, Any]) -> None:
            try:
                proc.stdin.write(encode(msg))
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                raise _Failed(f"worker closed its input ({_describe_exit(proc.poll())})") from None

        try:
            outcome.hello = expect("hello")
            send(setup)
            msg = expect("ready", "unsupported")
            if msg["type"] == "unsupported":
                outcome.status, outcome.reason = "unsupported", msg.get("reason")
                outcome.unsupported_versions = msg.get("versions", {})
                outcome.unsupported_facts = msg.get("facts") or {}
            else:
                outcome.ready = msg
                w0 = time.monotonic()
                between(msg)
                outcome.wait_s = time.monotonic() - w0
                deadline += outcome.wait_s
                send({"type": "measure"})
                outcome.result = expect("result")
                outcome.status = "ok"
            proc.stdin.close()
            try:
                outcome.exit_code = proc.wait(timeout=max(0.1, min(STOP_GRACE_S, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                raise _Failed("worker did not exit after sending its result") from None
            if outcome.exit_code != 0:
                raise _Failed(f"worker {_describe_exit(outcome.exit_code)} after its result")
        except _Failed as e:
            outcome.status, outcome.reason = "failed", str(e)
        finally:
            _stop(proc)
            reader.close()
            outcome.exit_code = proc.returncode
    if outcome.status == "failed" and (last := _last_line(log_path)) and last not in (outcome.reason or ""):
        outcome.reason = f"{outcome.reason} (log: {last})"
    outcome.wall_s = time.monotonic() - t0
    return outcome


def _stop(proc: subprocess.Popen) -> None:
    """The worker and anything it started are gone when a run ends, however it ended."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=STOP_GRACE_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream and not stream.closed:
            try:
                stream.close()
            except OSError:
                pass
