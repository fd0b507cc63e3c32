"""Privilege separation under `sudo`, as OpenSSH does it: the orchestrator's first act is to fork
this broker, which stays root, and then to drop to the invoking user for good (real, effective
and saved ids, supplementary groups, HOME; `config/privileges.py`). Nothing the user or a matrix
names ever runs as root after that.

The broker does one thing: start `POWERMETRICS` (a fixed path) with fixed arguments, of which
only the interval (an integer in `INTERVAL_MS`) and the samplers (a subset of `SAMPLERS`) are
chosen by the orchestrator, and stop it. It hands the orchestrator the read ends of
powermetrics' stdout and stderr over a Unix socket (SCM_RIGHTS), so the output streams straight
to the unprivileged side and the broker never parses a byte of it. It holds one powermetrics at
a time, reports its exit status when asked to stop it, and ends it, then itself, the moment the
orchestrator's end of the socket closes, however the orchestrator died.

`POWERMETRICS` is a module attribute and nothing else (no environment variable, no setting):
only code already running inside the root process before the fork can change it, which is how
the tests point it at a stand-in on Linux; a matrix, an environment variable or any file the
user controls cannot.

Requests and replies are JSON objects, one per line, at most `MAX_LINE` bytes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from orchestrator.config.privileges import InvokingUser, drop_to, invoking_user
from orchestrator.processes import end_process

POWERMETRICS = "/usr/bin/powermetrics"
SAMPLERS = ("cpu_power", "gpu_power", "ane_power", "thermal")
INTERVAL_MS = range(10, 60_001)
MAX_LINE = 4096
STOP_GRACE_S = 2.0
SAFE_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"

_client: BrokerClient | None = None


class BrokerError(Exception):
    """The broker refused a request, or is gone."""


def command(interval_ms: Any, samplers: Any) -> list[str]:
    """The only command line the broker runs; BrokerError for anything outside the fixed set."""
    if not isinstance(interval_ms, int) or isinstance(interval_ms, bool) or interval_ms not in INTERVAL_MS:
        raise BrokerError(f"interval_ms must be an integer in {INTERVAL_MS.start}..{INTERVAL_MS.stop - 1}")
    if (not isinstance(samplers, list) or not samplers or len(set(samplers)) != len(samplers)
            or not all(isinstance(s, str) and s in SAMPLERS for s in samplers)):
        raise BrokerError(f"samplers must be distinct names from {', '.join(SAMPLERS)}")
    return [POWERMETRICS, "--samplers", ",".join(samplers), "-i", str(interval_ms), "-f", "plist", "-b", "0"]


def _read_line(sock: socket.socket, buf: bytearray) -> dict[str, Any] | None:
    """The next JSON line, or None when the peer closed its end."""
    while b"\n" not in buf:
        chunk = sock.recv(MAX_LINE)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > MAX_LINE:
            raise BrokerError("request too long")
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise BrokerError("a request is a JSON object")
    return obj


def _send(sock: socket.socket, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode() + b"\n"
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def _end(proc: subprocess.Popen | None) -> int | None:
    """Stop powermetrics (TERM, then KILL); its exit status."""
    return None if proc is None else end_process(proc, STOP_GRACE_S)


def serve(sock: socket.socket) -> int:
    """The broker's loop (root): start, stop, and nothing else, until the orchestrator is gone."""
    proc: subprocess.Popen | None = None
    buf = bytearray()
    try:
        while True:
            try:
                request = _read_line(sock, buf)
            except (BrokerError, ValueError) as e:
                _send(sock, {"ok": False, "error": f"bad request: {e}"})
                return 1  # a peer that speaks nonsense is not the orchestrator we forked from
            if request is None:
                return 0
            op = request.get("op")
            if op == "start" and proc is None:
                try:
                    argv = command(request.get("interval_ms"), request.get("samplers"))
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, cwd="/", env={"PATH": SAFE_PATH},
                                            start_new_session=True, close_fds=True)
                except (BrokerError, OSError) as e:
                    _send(sock, {"ok": False, "error": str(e)})
                    continue
                assert proc.stdout is not None and proc.stderr is not None
                _send(sock, {"ok": True, "pid": proc.pid}, [proc.stdout.fileno(), proc.stderr.fileno()])
                proc.stdout.close()
                proc.stderr.close()
            elif op == "stop" and proc is not None:
                ended_before = proc.poll() is not None
                code = _end(proc)
                proc = None
                _send(sock, {"ok": True, "returncode": code, "ended_before_stop": ended_before})
            else:
                _send(sock, {"ok": False, "error": f"unknown or untimely request {op!r}"})
    except OSError:
        return 0  # the orchestrator's end is gone mid-reply
    finally:
        _end(proc)


class BrokerClient:
    """The orchestrator's end of the broker's socket."""

    def __init__(self, sock: socket.socket, pid: int):
        self._sock, self.pid, self._buf = sock, pid, bytearray()

    def _reply(self) -> tuple[dict[str, Any], list[int]]:
        data, fds, _, _ = socket.recv_fds(self._sock, MAX_LINE, 2)
        if not data:
            raise BrokerError("the meter broker is gone")
        reply = json.loads(data)
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise BrokerError(str(reply.get("error")))
        return reply, fds

    def start(self, interval_ms: int, samplers: list[str]) -> tuple[int, int, int]:
        """(pid, stdout fd, stderr fd) of a fresh powermetrics."""
        _send(self._sock, {"op": "start", "interval_ms": interval_ms, "samplers": samplers})
        reply, fds = self._reply()
        if len(fds) != 2:
            raise BrokerError("the meter broker sent no output streams")
        return int(reply["pid"]), fds[0], fds[1]

    def stop(self) -> tuple[int | None, bool]:
        """(exit status, whether powermetrics had ended on its own before this stop)."""
        _send(self._sock, {"op": "stop"})
        reply, _ = self._reply()
        return reply.get("returncode"), bool(reply.get("ended_before_stop"))


def client() -> BrokerClient | None:
    """The broker of this process, when `separate()` started one."""
    return _client


def separate() -> InvokingUser | None:
    """Under sudo: fork the broker (root), then drop this process to the invoking user for
    good. Returns that user, or None where there is nothing to drop (not root, or root without
    sudo). Must run before anything else: no thread, no file, no child exists yet."""
    global _client
    user = invoking_user()
    if user is None:
        return None
    parent_end, broker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the broker
        parent_end.close()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)  # the broker prints nothing; a caller reading our stdout must see its end with ours
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the orchestrator's; the socket's end is ours
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            code = serve(broker_end)
        finally:
            broker_end.close()
        os._exit(code)
    broker_end.close()
    try:
        drop_to(user)
    except OSError as e:
        sys.exit(f"error: cannot drop root privileges to {user.name} (uid {user.uid}): {e}")
    _client = BrokerClient(parent_end, pid)
    return user
