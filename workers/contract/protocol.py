"""Length-prefixed msgpack messages between orchestrator and worker (docs/design.md, "Protocol").

A frame is a 4-byte big-endian length, then that many bytes holding one msgpack map with a
`type`. The length is checked the moment the header arrives: a frame announced larger than
`MAX_FRAME_BYTES` is refused at once, never waited for or buffered. A stream that ends inside a
header or a body is a truncated frame, never a clean exit. numpy arrays travel as msgpack ext
type 1 holding `[dtype, shape, bytes]` (numeric dtypes only), so they survive bit for bit.
"""

from __future__ import annotations

import os
import selectors
import struct
import time
from typing import Any, BinaryIO, Protocol

import msgpack
import numpy as np

ARRAY_EXT = 1
MAX_FRAME_BYTES = 256 << 20  # an sd15 1024x1024 fp32 output is 2 MiB; headroom for larger models
PROTOCOL_VERSION = 3  # 2: length-prefixed frames; 3: setup.model.guard replaces the worker's rehash
HEADER = struct.Struct(">I")
ARRAY_KINDS = "biufc"  # bool, integers, floats, complex: never objects, strings or void


class ProtocolError(Exception):
    """The peer sent something that is not a valid message, or the stream ended mid-frame."""


class PeerClosed(ProtocolError):
    """The stream ended cleanly between frames."""


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        return msgpack.ExtType(ARRAY_EXT, msgpack.packb([a.dtype.str, list(a.shape), a.tobytes()]))
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__} over the worker protocol")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != ARRAY_EXT:
        raise ProtocolError(f"unknown ext type {code}")
    try:
        dtype_str, shape, raw = msgpack.unpackb(data)
        dtype = np.dtype(dtype_str)
        if dtype.kind not in ARRAY_KINDS:
            raise ValueError(f"dtype {dtype_str!r} is not numeric")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    except Exception as e:  # any bytes a peer sends: numpy and msgpack raise several unrelated types
        raise ProtocolError(f"bad array: {type(e).__name__}: {e}") from None


def encode(message: dict[str, Any]) -> bytes:
    """One frame: the length header, then the message."""
    if "type" not in message:
        raise ValueError("a protocol message needs a 'type'")
    body = msgpack.packb(message, default=_default, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes, max_bytes: int) -> int:
    """The body length a header announces; ProtocolError at once when it exceeds `max_bytes`."""
    (n,) = HEADER.unpack(header)
    if n > max_bytes:
        raise ProtocolError(f"oversized frame: the header announces {n} bytes, more than {max_bytes}")
    return n


def decode(body: bytes) -> dict[str, Any]:
    """One frame's body as a message: a map with a string `type`, or ProtocolError."""
    try:
        obj = msgpack.unpackb(body, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as e:  # any bytes a peer sends: msgpack raises several unrelated types
        raise ProtocolError(f"malformed frame: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(f"malformed frame: expected a map with a 'type', got {type(obj).__name__}")
    return obj


class HasFileno(Protocol):
    def fileno(self) -> int: ...


class FrameReader:
    """Reads messages from a pipe or a socket with a deadline (orchestrator side)."""

    def __init__(self, stream: HasFileno, max_bytes: int = MAX_FRAME_BYTES):
        self._fd = stream.fileno()
        self._max_bytes = max_bytes
        self._buf = bytearray()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)

    def _fill(self, n: int, deadline: float) -> None:
        """Until the buffer holds `n` bytes; TimeoutError, truncation or PeerClosed otherwise."""
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                raise TimeoutError
            chunk = os.read(self._fd, max(n - len(self._buf), 1 << 16))
            if not chunk:
                if self._buf:
                    raise ProtocolError(f"truncated frame: stream ended {len(self._buf)} bytes into a message")
                raise PeerClosed("stream ended")
            self._buf += chunk

    def recv(self, deadline: float) -> dict[str, Any]:
        """Next message; raises TimeoutError after `deadline` (time.monotonic())."""
        self._fill(HEADER.size, deadline)
        n = frame_length(bytes(self._buf[:HEADER.size]), self._max_bytes)
        self._fill(HEADER.size + n, deadline)
        body = bytes(self._buf[HEADER.size:HEADER.size + n])
        del self._buf[:HEADER.size + n]
        return decode(body)

    def close(self) -> None:
        self._selector.close()


class Channel:
    """Blocking message channel over a pair of binary streams (worker side)."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO, max_bytes: int = MAX_FRAME_BYTES):
        self._reader, self._writer, self._max_bytes = reader, writer, max_bytes

    def send(self, message: dict[str, Any]) -> None:
        self._writer.write(encode(message))
        self._writer.flush()

    def _read(self, n: int, started: bool) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._reader.read(n - len(data))
            if not chunk:
                if data or started:
                    raise ProtocolError("truncated frame: the orchestrator's stream ended inside a message")
                raise PeerClosed("orchestrator closed the stream")
            data += chunk
        return data

    def recv(self) -> dict[str, Any]:
        n = frame_length(self._read(HEADER.size, started=False), self._max_bytes)
        return decode(self._read(n, started=True))
