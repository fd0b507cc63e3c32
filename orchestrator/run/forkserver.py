"""The orchestrator's side of an env's fork server (workers/forkserver.py): start it, ask it for
a run's worker, and drive that worker through the same `WorkerRun` as a spawned one.

`ForkedWorker` is the part of `subprocess.Popen` that `WorkerRun` uses (pid, stdin, stdout,
poll, wait, returncode), so a run's protocol, deadlines, process-group kill and failure reasons
are one code path whichever way its worker started. The orchestrator is not the child's parent:
the server reaps it and sends its exit status on the run's connection.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from orchestrator.config.envs import Env
from orchestrator.errors import describe_exit
from orchestrator.processes import end_process
from orchestrator.run import scratch
from workers.contract.lifeline import ORPHAN_EXIT
from workers.contract.messages import Fork, Forked, ForkExit, ForkReady, parse, wire
from workers.contract.protocol import FrameReader, PeerClosed, ProtocolError, encode
from workers.contract.typed import Invalid

START_TIMEOUT_S = 300.0  # imports only; the SD1.5 toolchain took 16 s on a cold disk
SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107  # sun_path, less its NUL


class ForkServerError(Exception):
    """The server cannot give this run a worker; the message is one line."""


class ForkedWorker:
    """A run's worker, forked by the server; what WorkerRun needs of a Popen."""

    def __init__(self, pid: int, stdin: IO[bytes], stdout: IO[bytes], conn: socket.socket, reader: FrameReader):
        self.pid, self.stdin, self.stdout = pid, stdin, stdout
        self.returncode: int | None = None
        self.server_died = False  # the server went before telling how the worker ended
        self._conn, self._reader = conn, reader

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        deadline = time.monotonic() + (timeout if timeout is not None else 1e6)
        try:
            self.returncode = parse(self._reader.recv(deadline), ForkExit).code
        except TimeoutError:
            raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout or 0.0) from None
        except (ProtocolError, Invalid, OSError):
            self.returncode = ORPHAN_EXIT  # the server is gone, and with it, by its lifeline, the child
            self.server_died = True
        self._reader.close()
        self._conn.close()
        return self.returncode


class ForkServer:
    """One env's fork server for a session: launched as the session starts, its imports waited
    for when a run (or the idle-power window of a meter that sees the host) needs them, restarted
    once per run when it has died, ended by close()."""

    def __init__(self, env: Env, preload: list[str], log_path: Path):
        self.env, self.preload, self.log_path = env, preload, log_path
        self.ready: ForkReady | None = None
        self.waited_s = 0.0  # how long the session waited for the imports, once it needed the server
        self._launched_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = ""

    def start(self) -> ForkReady:
        """Start the server and wait for its `fork_ready`; ForkServerError with the reason."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start the server's process, not waiting for its imports: the session goes on meanwhile
        (`wait_ready` collects them)."""
        self.close()
        self.ready, self.waited_s = None, 0.0
        self._dir = str(scratch.folder("fork"))
        if (length := len(os.fsencode(self._socket))) > SOCKET_PATH_MAX:
            self.close()
            raise ForkServerError(f"the fork server's socket path in the temp dir would be {length} bytes, over the "
                                  f"{SOCKET_PATH_MAX} a Unix socket's may have here: set TMPDIR to a shorter folder")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                              start_new_session=True, env=self.env.worker_environ())
            except OSError as e:
                raise ForkServerError(f"cannot start the fork server ({self.env.python}): {e.strerror or e}") from None
        self._launched_at = time.monotonic()

    def wait_ready(self) -> ForkReady:
        """The launched server's `fork_ready`, waited for; ForkServerError with the reason."""
        if self.ready is not None:
            return self.ready
        assert self._proc is not None and self._proc.stdout is not None, "launch first"
        t0 = time.monotonic()
        reader = FrameReader(self._proc.stdout)
        try:
            self.ready = parse(reader.recv(self._launched_at + START_TIMEOUT_S), ForkReady)
        except TimeoutError:
            self.close()
            raise ForkServerError(f"the fork server did not get ready within {START_TIMEOUT_S:g} s") from None
        except PeerClosed:
            try:
                code: int | None = self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            self.close()
            raise ForkServerError(f"the fork server {describe_exit(code)} before it was ready") from None
        except (ProtocolError, Invalid) as e:
            self.close()
            raise ForkServerError(f"the fork server: {e}") from None
        finally:
            reader.close()
            self.waited_s = time.monotonic() - t0
        return self.ready

    def command(self) -> list[str]:
        """The server's command line (benchmarks/overhead.py starts one whose children may also be
        its bare loop, to compare the two as children of one parent)."""
        return [str(self.env.python), "-m", "workers", "--forkserver", self._socket, "--env-name", self.env.name,
                "--preload", *self.preload]

    @property
    def _socket(self) -> str:
        return os.path.join(self._dir, "sock")

    def fork(self, argv: list[str], environ: dict[str, str], log: IO[bytes], timeout_s: float) -> ForkedWorker:
        """A fresh worker for one run, its stderr on `log`; ForkServerError with the reason. A
        server that died since the last run is started again, once."""
        if self._proc is None or self._proc.poll() is not None:
            self.start()
        try:
            return self._fork(argv, environ, log, timeout_s)
        except ForkServerError:
            assert self._proc is not None
            try:
                self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                raise  # alive, yet it gave no worker: starting another would hide why
        self.start()
        return self._fork(argv, environ, log, timeout_s)

    def _fork(self, argv: list[str], environ: dict[str, str], log: IO[bytes], timeout_s: float) -> ForkedWorker:
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ok = False
        try:
            conn.settimeout(timeout_s)
            conn.connect(self._socket)
            socket.send_fds(conn, [encode(wire(Fork(argv=argv, environ=environ)))], [stdin_r, stdout_w, log.fileno()])
            reader = FrameReader(conn)
            try:
                pid = parse(reader.recv(time.monotonic() + timeout_s), Forked).pid
            except BaseException:
                reader.close()
                raise
            conn.settimeout(None)
            ok = True
        except (OSError, TimeoutError, ProtocolError, Invalid) as e:
            raise ForkServerError(f"the fork server gave no worker: {str(e) or type(e).__name__}") from None
        finally:
            os.close(stdin_r)
            os.close(stdout_w)
            if not ok:
                conn.close()
                os.close(stdin_w)
                os.close(stdout_r)
        return ForkedWorker(pid, os.fdopen(stdin_w, "wb", buffering=0), os.fdopen(stdout_r, "rb", buffering=0), conn,
                            reader)

    def close(self) -> None:
        if self._proc is not None:
            end_process(self._proc, grace_s=5)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""


def chosen(setting: str, platform: str = sys.platform) -> tuple[str, str]:
    """How this host starts workers for `timing.worker_start`, and why."""
    if setting == "spawn":
        return "spawn", "timing.worker_start = \"spawn\""
    if platform != "linux":
        return "spawn", (f"timing.worker_start = \"{setting}\": forking after Metal, Core ML or Accelerate are loaded "
                         "is not safe on macOS, so every worker is spawned here")
    return "forkserver", f"timing.worker_start = \"{setting}\" on Linux"
