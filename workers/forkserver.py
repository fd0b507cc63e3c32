"""A fresh worker per run without a fresh import per run, as asv's ForkServer does it.

One server per env and session imports the toolchain and the worker code once, touches no device,
loads no weights and runs nothing, then forks a child per run. The child is the run's worker: a
new pid, a new session and process group, its own device context and allocator (none existed
before the fork), the run's stdin, stdout and log as its fds 0, 1 and 2, the environment and
command line a spawned worker would have had, and the same protocol; it exits after its run.
Nothing a run sets (module state, caches, a device context) reaches the next run: every child
starts from the server's state, and the server never runs a step.

Fork after these imports is safe on Linux: CUDA is initialized lazily, by the child; numpy's
BLAS pool is the one thread the server has, and OpenBLAS re-creates it in a child
(pthread_atfork). On macOS, frameworks loaded by the imports (Metal, Core ML, Accelerate)
are not fork-safe, so the orchestrator spawns there (docs/design.md, "Worker start").
"""

from __future__ import annotations

import contextlib
import importlib
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable

from workers.contract.lifeline import ORPHAN_EXIT, exit_with_parent
from workers.contract.messages import Fork, Forked, ForkExit, ForkReady, parse, wire
from workers.contract.protocol import HEADER, MAX_FRAME_BYTES, decode, encode, frame_length
from workers.contract.typed import Invalid

MAX_FDS = 3  # the run's stdin, stdout and log


# While importing: torch answers `torch.cuda.is_available()` (which diffusers asks at import) from
# NVML instead of the CUDA runtime, whose device count marks a process as unable to fork a CUDA
# user ("Cannot re-initialize CUDA in forked subprocess"). A child gets the run's own environment.
PRELOAD_ENVIRON = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1"}


def preload(modules: list[str]) -> tuple[list[str], dict[str, str]]:
    """Import `modules` as the server does before it forks: the imported ones, and why the others failed."""
    os.environ.update(PRELOAD_ENVIRON)
    done, failed = [], {}
    for name in modules:
        try:
            importlib.import_module(name)
            done.append(name)
        except Exception as e:  # an env without this toolchain: the run imports it again and says why
            failed[name] = f"{type(e).__name__}: {e}"
    return done, failed


def cuda_fork_unsafe() -> str | None:
    """Why a child forked now could not use CUDA, or None: a throwaway child asks torch whether it
    was forked from a process that had initialized or queried CUDA. Where NVML is missing (no
    NVIDIA driver), torch's availability check still goes through the CUDA runtime and marks the
    server; its children then run CPU cells only, which is all such a host has."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if torch.cuda.is_initialized():
        return "torch initialized CUDA while the fork server imported it"
    pid = os.fork()
    if pid == 0:
        os._exit(1 if torch.cuda._is_in_bad_fork() else 0)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
        return "torch marked the fork server as unable to fork a CUDA user (it queried CUDA while importing)"
    return None


def _threads() -> int | None:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _recv_request(conn: socket.socket) -> tuple[Fork, list[int]]:
    """One `fork` frame and the fds that came with it; the frame may arrive in several reads."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, MAX_FDS)
    try:
        if len(data) < HEADER.size:
            raise Invalid("fork: truncated request")
        n = frame_length(data[:HEADER.size], MAX_FRAME_BYTES)
        while len(data) < HEADER.size + n:
            chunk = conn.recv(HEADER.size + n - len(data))
            if not chunk:
                raise Invalid("fork: truncated request")
            data += chunk
        request = parse(decode(data[HEADER.size:]), Fork)
        if len(fds) != MAX_FDS:
            raise Invalid(f"fork: {len(fds)} file descriptors sent, {MAX_FDS} needed")
    except Exception:
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


def _child(server: int, request: Fork, fds: list[int], keep_closed: list[int], run: Callable[[], int]) -> None:
    """Become the run's worker, then leave without returning to the server's loop. Its lifeline is
    set first, against the server's pid taken before the fork: a server that died since is seen."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        exit_with_parent(parent=server)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in keep_closed:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request.environ)
        sys.argv = list(request.argv)
        code = run()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def serve_forks(socket_path: str, modules: list[str], run: Callable[[], int]) -> int:
    """Import `modules`, say `fork_ready` on stdout, then fork a child running `run` per request
    on the Unix socket at `socket_path`, until the orchestrator goes away."""
    exit_with_parent(on_gone=lambda: _leave(socket_path))
    t0 = time.perf_counter()
    preloaded, failed = preload(modules)
    import_s = time.perf_counter() - t0
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(16)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    out.write(encode(wire(ForkReady(pid=os.getpid(), import_s=import_s, preloaded=preloaded, not_preloaded=failed,
                                    threads=_threads(), cuda_fork_unsafe=cuda_fork_unsafe()))))
    out.close()
    children: dict[int, socket.socket] = {}
    while True:
        readable = select.select([listener, wake_r], [], [])[0]
        if wake_r in readable:
            os.read(wake_r, 4096)
            _reap(children)
        if listener not in readable:
            continue
        conn, _ = listener.accept()
        try:
            request, fds = _recv_request(conn)
        except Exception as e:  # a bad request costs its connection, never the server
            print(f"forkserver: refused a request: {e}", file=sys.stderr)
            conn.close()
            continue
        sys.stderr.flush()
        # SIGTERM, the server's own way out, is blocked across the fork until the child has reset
        # it: signalled early by the orchestrator, a child must die, not leave as the server would.
        server = os.getpid()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            pid = os.fork()
            if pid == 0:
                _child(server, request, fds, [listener.fileno(), conn.fileno(), wake_r, wake_w,
                                              *(c.fileno() for c in children.values())], run)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        for fd in fds:
            os.close(fd)
        children[pid] = conn
        try:
            conn.sendall(encode(wire(Forked(pid=pid))))
        except OSError:
            pass  # the orchestrator gave up on this run; the child is reaped all the same
        _reap(children)


def _leave(socket_path: str) -> None:
    """Exit on SIGTERM: the orchestrator's close(), or the kernel's word that the orchestrator is
    gone. Killed, it removed nothing, so the socket and the folder it made for this server alone go
    with the server instead of piling up in the temp dir."""
    for remove, path in ((os.unlink, socket_path), (os.rmdir, os.path.dirname(socket_path))):
        with contextlib.suppress(OSError):  # not bound yet, or the orchestrator's close() got there first
            remove(path)
    os._exit(ORPHAN_EXIT)


def _reap(children: dict[int, socket.socket]) -> None:
    """Tell each exited child's orchestrator connection how it ended."""
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        try:
            conn.sendall(encode(wire(ForkExit(code=os.waitstatus_to_exitcode(status)))))
        except OSError:
            pass
        conn.close()
