"""Privilege separation under `sudo`, as OpenSSH does it: the orchestrator's first act is to fork
this broker, which stays root, and then to drop to the invoking user for good (real, effective
and saved ids, supplementary groups, HOME; `config/privileges.py`). Nothing the user or a matrix
names ever runs as root after that.

The broker does one thing: start `POWERMETRICS` (a fixed path) with fixed arguments, of which
only the interval (an integer in `INTERVAL_MS`) and the samplers (a subset of `SAMPLERS`) are
chosen by the orchestrator, and stop it; `hello` only says which powermetrics it runs and
whether it finds it. It hands the orchestrator the read ends of powermetrics' stdout and stderr
over a Unix socket (SCM_RIGHTS), so the output streams straight to the unprivileged side and the
broker never parses a byte of it. It holds one powermetrics at a time, reports its exit status
when asked to stop it, and ends it, then itself, the moment the orchestrator's end of the
socket closes, however the orchestrator died.

`POWERMETRICS` is a module attribute and nothing else (no environment variable, no setting):
only code already running inside the root process before the fork can change it, which is how
the tests point it at a stand-in on Linux; a matrix, an environment variable or any file the
user controls cannot.

A machine whose sessions run without sudo (a Mac node of a Ray fleet, whose actors Ray starts
as the user) runs `sudo orchestrate broker` once instead: `listen()` serves the same `serve()`
to each connection on a Unix socket (`SOCKET`, or `--socket`) that only the invoking user and
root can open, one powermetrics per connection, ended when that connection closes. The user's
processes find it through `client()`, at `SOCKET` or where `CDB_BROKER_SOCKET` says: that
variable only tells them where to knock, never the root side what to run.

Requests and replies are JSON objects, one per line, at most `MAX_LINE` bytes."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
from typing import Any

from orchestrator.config.privileges import InvokingUser, drop_to, invoking_user
from orchestrator.errors import UserError
from orchestrator.processes import end_process

POWERMETRICS = "/usr/bin/powermetrics"
SAMPLERS = ("cpu_power", "gpu_power", "ane_power", "thermal")
INTERVAL_MS = range(10, 60_001)
MAX_LINE = 4096
STOP_GRACE_S = 2.0
SAFE_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
SOCKET = "/var/run/coreml-diffusion-benchmarks/broker.sock"  # a node broker's, unless --socket
SOCKET_ENV = "CDB_BROKER_SOCKET"  # where the unprivileged side looks for it instead
MAX_PEERS = 16  # connections a node broker serves at once: each may hold one powermetrics
HELLO_TIMEOUT_S = 5.0
MAX_SOCKET_PATH = 103  # bytes: clients connect by the whole path, and macOS's sun_path holds 104 with its NUL

_client: BrokerClient | None = None
_looked_up = False
_lookup_lock = threading.Lock()


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
            elif op == "hello":
                _send(sock, {"ok": True, "powermetrics": POWERMETRICS, "found": os.path.isfile(POWERMETRICS)})
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


def peer_ids(sock: socket.socket) -> tuple[int, int] | None:
    """(pid, uid) of the socket's peer as the kernel recorded them at connect (Linux
    SO_PEERCRED); None where this platform offers no such option to Python."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


class BrokerClient:
    """The orchestrator's end of a broker's socket. `where` names the broker for records and
    messages; `powermetrics` is the executable the broker runs, as it says, or None where it
    finds none; `pid` is the broker's process where known (the forked one's, or a node
    broker's from the kernel's peer credentials), else None."""

    def __init__(self, sock: socket.socket, pid: int | None, where: str, powermetrics: str | None):
        self._sock, self.pid, self.where, self.powermetrics = sock, pid, where, powermetrics

    def _reply(self) -> tuple[dict[str, Any], list[int]]:
        data, fds, _, _ = socket.recv_fds(self._sock, MAX_LINE, 2)
        if not data:
            raise BrokerError("the meter broker is gone")
        reply = json.loads(data)
        if not isinstance(reply, dict) or not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise BrokerError(str(reply.get("error")) if isinstance(reply, dict) else "a reply is a JSON object")
        return reply, fds

    def hello(self) -> str | None:
        """The powermetrics the broker runs, where it finds it (a node broker is asked on connecting)."""
        _send(self._sock, {"op": "hello"})
        reply, fds = self._reply()
        for fd in fds:
            os.close(fd)
        exe = reply.get("powermetrics")
        return exe if reply.get("found") is True and isinstance(exe, str) else None

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

    def close(self) -> None:
        """Hang up: the broker ends any powermetrics it runs for this connection."""
        self._sock.close()


def socket_path() -> str:
    """Where the unprivileged side looks for a node broker."""
    return os.environ.get(SOCKET_ENV) or SOCKET


def connect(path: str) -> BrokerClient | None:
    """A node broker answering at `path`, or None (no socket, refused, or no answer to hello)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(HELLO_TIMEOUT_S)
        sock.connect(path)
        ids = peer_ids(sock)
        broker = BrokerClient(sock, ids[0] if ids else None, f"the meter broker at {path}", None)
        broker.powermetrics = broker.hello()
        sock.settimeout(None)
    except (OSError, ValueError, BrokerError):
        sock.close()
        return None
    return broker


def client() -> BrokerClient | None:
    """The broker `separate()` forked, when it did; else a node broker answering at
    `socket_path()`, connected on the first call and kept for the process (so a Ray actor and a
    session without sudo reach powermetrics); None when there is neither."""
    global _client, _looked_up
    with _lookup_lock:
        if _client is None and not _looked_up:
            _looked_up = True
            _client = connect(socket_path())
        return _client


def separate() -> InvokingUser | None:
    """Under sudo: fork the broker (root), then drop this process to the invoking user for
    good. Returns that user, or None where there is nothing to drop (not root, or root without
    sudo). Must run before anything else: no thread, no file, no child exists yet."""
    global _client
    user = invoking_user()
    if user is None:
        return None
    found = POWERMETRICS if os.path.isfile(POWERMETRICS) else None  # as root sees it
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
    _client = BrokerClient(parent_end, pid, "the root meter broker", found)
    return user


class _Stop(Exception):
    """SIGINT, SIGTERM or SIGHUP reached the node broker."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop


def _own_folder(folder: str, user: InvokingUser) -> int:
    """An fd of the socket's folder: made now (root's, then given to `user`, mode 0700), or one
    made so before (the user's, mode 0700). Links are not followed; anything else is refused."""
    try:
        os.mkdir(folder, 0o700)
        created = True
    except FileExistsError:
        created = False
    except OSError as e:
        raise UserError(f"cannot create the meter broker's folder {folder}: {e.strerror}") from None
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        raise UserError(f"{folder} is not a folder (a link is not followed): remove it or choose another --socket") from None
    st = os.fstat(fd)
    if created and st.st_uid == 0:
        os.fchown(fd, user.uid, user.gid)
        os.fchmod(fd, 0o700)
    elif st.st_uid != user.uid or stat.S_IMODE(st.st_mode) != 0o700:
        os.close(fd)
        raise UserError(f"{folder} exists and is not a meter broker's folder ({user.name}'s, mode 0700): "
                        "remove it or choose another --socket")
    return fd


def _bind(path: str, user: InvokingUser) -> tuple[socket.socket, int, str, int]:
    """The listening socket at `path` (mode 0600, the user's), its folder's fd, its name in
    that folder and its inode. A stale socket of the user's left by an earlier broker is
    replaced; anything else at `path`, or a broker that still answers there, is refused. The
    process works inside the folder from here, so no name is resolved through a link."""
    folder, name = os.path.split(os.path.abspath(path))
    if not name:
        raise UserError(f"{path} names no socket in a folder: choose another --socket")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise UserError(f"{path} is too long for a Unix socket (at most {MAX_SOCKET_PATH} bytes): choose another --socket")
    folder_fd = _own_folder(folder, user)
    os.fchdir(folder_fd)
    try:
        st: os.stat_result | None = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != user.uid:
            raise UserError(f"{path} exists and is not a meter broker's socket: remove it or choose another --socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(name)
            except OSError:
                os.unlink(name, dir_fd=folder_fd)  # stale: its broker is gone
            else:
                raise UserError(f"a meter broker already listens at {path}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        listener.bind(name)
    except OSError as e:
        raise UserError(f"cannot listen at {path}: {e.strerror or e}") from None
    finally:
        os.umask(umask)
    os.chown(name, user.uid, user.gid, dir_fd=folder_fd, follow_symlinks=False)
    listener.listen(MAX_PEERS)
    return listener, folder_fd, name, os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_ino


def _serve_peer(conn: socket.socket, user: InvokingUser, peers: set[socket.socket], lock: threading.Lock) -> None:
    """One connection of a node broker: the invoking user's or root's (where the kernel says
    whose it is), then `serve()`."""
    try:
        ids = peer_ids(conn)
        if ids is not None and ids[1] not in (0, user.uid):
            _send(conn, {"ok": False, "error": f"uid {ids[1]} may not use this meter broker"})
        else:
            serve(conn)
    except OSError:
        pass
    finally:
        with lock:
            peers.discard(conn)
        conn.close()


def listen(path: str) -> int:
    """`sudo orchestrate broker`: a root meter broker for this machine, serving `serve()` to each
    connection at `path` until SIGINT, SIGTERM or SIGHUP; then its socket is removed and every
    powermetrics it started is ended. It runs nothing else and drops nothing: it is the root part."""
    user = invoking_user()
    if user is None:
        raise UserError("the meter broker runs as root under sudo, for the user who will use it: "
                        "sudo orchestrate broker")
    path = os.path.abspath(path)
    listener, folder_fd, name, inode = _bind(path, user)
    peers: set[socket.socket] = set()
    lock = threading.Lock()
    threads: list[threading.Thread] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    print(f"meter broker: listening at {path} for {user.name} (uid {user.uid}) and root; "
          f"powermetrics: {POWERMETRICS}", flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            with lock:
                full = len(peers) >= MAX_PEERS
                if not full:
                    peers.add(conn)
            if full:
                with conn:
                    try:
                        _send(conn, {"ok": False, "error": f"the meter broker serves {MAX_PEERS} connections at most"})
                    except OSError:
                        pass
                continue
            threads = [t for t in threads if t.is_alive()]
            threads.append(threading.Thread(target=_serve_peer, args=(conn, user, peers, lock),
                                            name="meter-broker-peer", daemon=True))
            threads[-1].start()
    except _Stop:
        pass
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # the cleanup below is not interrupted
        listener.close()
        try:
            if os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_ino == inode:
                os.unlink(name, dir_fd=folder_fd)
        except OSError:
            pass
        os.close(folder_fd)
        with lock:
            for conn in peers:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # serve() sees its peer gone and ends its powermetrics
                except OSError:
                    pass
        for t in threads:
            t.join(STOP_GRACE_S + 5)
    return 0
