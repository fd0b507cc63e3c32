"""Length-safe msgpack messages between orchestrator and worker (docs/design.md, "Protocol").

Every message is a map with a `type`. numpy arrays travel as msgpack ext type 1 holding
`[dtype, shape, bytes]`, so they survive the trip bit for bit. The reading side always uses a
bounded `msgpack.Unpacker`: a frame larger than `MAX_FRAME_BYTES` is refused, never buffered.
"""

from __future__ import annotations

import os
import selectors
import time
from typing import IO, Any, BinaryIO

import msgpack
import numpy as np

ARRAY_EXT = 1
MAX_FRAME_BYTES = 256 << 20  # an sd15 1024x1024 fp32 output is 2 MiB; headroom for larger models
PROTOCOL_VERSION = 1


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
    dtype, shape, raw = msgpack.unpackb(data)
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)


def encode(message: dict[str, Any]) -> bytes:
    if "type" not in message:
        raise ValueError("a protocol message needs a 'type'")
    return msgpack.packb(message, default=_default, use_bin_type=True)


def unpacker(max_bytes: int = MAX_FRAME_BYTES) -> msgpack.Unpacker:
    return msgpack.Unpacker(max_buffer_size=max_bytes, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def _checked(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(f"malformed frame: expected a map with a 'type', got {type(obj).__name__}")
    return obj


class FrameReader:
    """Reads messages from a pipe with a deadline (orchestrator side)."""

    def __init__(self, stream: IO[bytes], max_bytes: int = MAX_FRAME_BYTES):
        self._fd = stream.fileno()
        self._max_bytes = max_bytes
        self._unpacker = unpacker(max_bytes)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._fed = 0  # bytes fed in all; the unpacker's tell() is how many it consumed

    def recv(self, deadline: float) -> dict[str, Any]:
        """Next message; raises TimeoutError after `deadline` (time.monotonic())."""
        while True:
            try:
                obj = next(self._unpacker)
            except StopIteration:
                pass
            except (ValueError, msgpack.UnpackException) as e:
                raise ProtocolError(f"malformed frame: {e}") from e
            else:
                return _checked(obj)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                raise TimeoutError
            chunk = os.read(self._fd, 1 << 20)
            if not chunk:
                if (pending := self._fed - self._unpacker.tell()) > 0:
                    raise ProtocolError(f"truncated frame: stream ended {pending} bytes into a message")
                raise PeerClosed("stream ended")
            self._fed += len(chunk)
            try:
                self._unpacker.feed(chunk)
            except msgpack.BufferFull as e:
                raise ProtocolError(f"oversized frame: larger than {self._max_bytes} bytes") from e

    def close(self) -> None:
        self._selector.close()


class Channel:
    """Blocking message channel over a pair of binary streams (worker side)."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO, max_bytes: int = MAX_FRAME_BYTES):
        self._writer = writer
        self._unpacker = msgpack.Unpacker(
            reader, max_buffer_size=max_bytes, ext_hook=_ext_hook, raw=False, strict_map_key=False
        )

    def send(self, message: dict[str, Any]) -> None:
        self._writer.write(encode(message))
        self._writer.flush()

    def recv(self) -> dict[str, Any]:
        try:
            return _checked(self._unpacker.unpack())
        except msgpack.OutOfData as e:
            raise PeerClosed("orchestrator closed the stream") from e
        except (ValueError, msgpack.UnpackException) as e:
            raise ProtocolError(f"malformed frame: {e}") from e
