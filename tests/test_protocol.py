import os
import time

import msgpack
import numpy as np
import pytest

from workers.contract.messages import Hello, Measure, NvmlCheck, Result, parse, wire
from workers.contract.protocol import (
    ARRAY_EXT,
    HEADER,
    PROTOCOL_VERSION,
    Channel,
    FrameReader,
    PeerClosed,
    ProtocolError,
    encode,
)
from workers.contract.typed import Invalid


def _pipe_with(data: bytes, close: bool = True):
    r, w = os.pipe()
    os.write(w, data)
    if close:
        os.close(w)
    return os.fdopen(r, "rb", buffering=0), w


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "uint8"])
def test_arrays_round_trip_bit_for_bit(dtype):
    a = (np.arange(24).reshape(2, 3, 4) * 1.5).astype(dtype)
    reader, _ = _pipe_with(encode({"type": "x", "a": a, "n": 3}))
    msg = FrameReader(reader).recv(time.monotonic() + 5)
    assert msg["type"] == "x" and msg["n"] == 3
    assert msg["a"].dtype == a.dtype and msg["a"].shape == a.shape
    assert msg["a"].tobytes() == a.tobytes()


def test_truncated_frame_is_named():
    frame = encode({"type": "result", "output": np.zeros(1000, np.float32)})
    reader, _ = _pipe_with(frame[: len(frame) // 2])
    with pytest.raises(ProtocolError, match="truncated frame"):
        FrameReader(reader).recv(time.monotonic() + 5)


def test_clean_end_between_frames_is_peer_closed():
    reader, _ = _pipe_with(b"")
    with pytest.raises(PeerClosed):
        FrameReader(reader).recv(time.monotonic() + 5)


def test_oversized_frame_is_refused_not_buffered():
    frame = encode({"type": "result", "blob": b"x" * 5000})
    reader, _ = _pipe_with(frame)
    with pytest.raises(ProtocolError, match="oversized frame"):
        FrameReader(reader, max_bytes=1024).recv(time.monotonic() + 5)


def test_frame_that_is_not_a_typed_map_is_malformed():
    body = msgpack.packb([1, 2, 3])
    reader, _ = _pipe_with(HEADER.pack(len(body)) + body)
    with pytest.raises(ProtocolError, match="malformed"):
        FrameReader(reader).recv(time.monotonic() + 5)


def test_silence_times_out():
    reader, w = _pipe_with(b"", close=False)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        FrameReader(reader).recv(time.monotonic() + 0.3)
    assert time.monotonic() - t0 >= 0.3  # not before its deadline
    os.close(w)


def test_channel_reads_each_message_as_it_arrives():
    """The worker side must not wait for a full read buffer: one small message is enough."""
    r, w = os.pipe()
    channel = Channel(os.fdopen(r, "rb", buffering=0), open(os.devnull, "wb"))
    os.write(w, encode({"type": "measure"}))
    assert channel.recv() == {"type": "measure"}
    os.close(w)
    with pytest.raises(PeerClosed):
        channel.recv()


def test_encode_needs_a_type():
    with pytest.raises(ValueError):
        encode({"no": "type"})


def test_truncation_after_a_complete_frame_is_still_named():
    first = encode({"type": "hello"})
    second = encode({"type": "result", "output": np.zeros(1000, np.float32)})
    reader, _ = _pipe_with(first + second[: len(second) // 2])
    frames = FrameReader(reader)
    assert frames.recv(time.monotonic() + 5) == {"type": "hello"}
    with pytest.raises(ProtocolError, match="truncated frame"):
        frames.recv(time.monotonic() + 5)


def _result(**kw):
    fields = dict(window_start_ns=1, window_end_ns=3, iteration_start_ns=[1, 2], iteration_end_ns=[2, 3],
                  output=np.arange(8, dtype=np.float16).reshape(2, 4), output_sha256="s")
    return Result(**{**fields, **kw})


def test_typed_messages_cross_the_wire_intact():
    sent = _result(nvml_check=NvmlCheck(start_ns=1, end_ns=3, joules=2.5))
    reader, _ = _pipe_with(encode(wire(sent)))
    got = parse(FrameReader(reader).recv(time.monotonic() + 5), Result)
    assert got.nvml_check == sent.nvml_check and got.iteration_end_ns == [2, 3]
    assert got.output.dtype == np.float16 and got.output.tobytes() == sent.output.tobytes()
    assert wire(Measure()) == {"type": "measure"}


@pytest.mark.parametrize("change,error", [
    ({"iteration_start_ns": [1, "x"]}, "protocol: result: field iteration_start_ns[1]: expected an integer, got 'x'"),
    ({"output": [1.0, 2.0]}, "protocol: result: field output: expected an array, got [1.0, 2.0]"),
    ({"nvml_check": {"start_ns": 1, "end_ns": 2}}, "protocol: result: field nvml_check: expected a table or null, "
                                                   "got {'start_ns': 1, 'end_ns': 2}"),
    ({"surprise": 1}, "protocol: result: field surprise: unknown"),
    ({"type": "ready"}, "protocol: expected result, got 'ready'"),
])
def test_a_message_that_does_not_fit_names_its_field(change, error):
    with pytest.raises(Invalid) as e:
        parse({**wire(_result()), **change}, Result)
    assert str(e.value) == error


def test_the_worker_hello_carries_the_protocol_version():
    from workers.serve import hello

    h = parse(wire(hello("diffusers")), Hello)
    assert h.protocol == PROTOCOL_VERSION and h.pid == os.getpid() and h.env == "diffusers"


def _framed(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def test_a_bogus_length_fails_when_the_header_arrives_not_at_the_deadline():
    """The stream stays open and silent after the header: a reader that waited for the body
    would raise TimeoutError at its deadline instead."""
    reader, w = _pipe_with(HEADER.pack(0xFFFFFFF0), close=False)
    with pytest.raises(ProtocolError, match="oversized frame: the header announces 4294967280 bytes"):
        FrameReader(reader).recv(time.monotonic() + 60)
    os.close(w)


def test_every_cut_of_a_hello_frame_is_truncated_never_a_clean_end():
    from workers.serve import hello

    frame = encode(wire(hello("diffusers")))
    for cut in range(1, len(frame)):
        reader, _ = _pipe_with(frame[:cut])
        with pytest.raises(ProtocolError, match="truncated frame") as e:
            FrameReader(reader).recv(time.monotonic() + 5)
        assert not isinstance(e.value, PeerClosed), cut


def test_the_worker_side_tells_a_cut_frame_from_a_closed_stream():
    frame = encode({"type": "measure"})
    for cut in range(1, len(frame)):
        r, w = os.pipe()
        os.write(w, frame[:cut])
        os.close(w)
        with pytest.raises(ProtocolError, match="truncated frame") as e:
            Channel(os.fdopen(r, "rb", buffering=0), open(os.devnull, "wb")).recv()
        assert not isinstance(e.value, PeerClosed), cut


@pytest.mark.parametrize("ext,error", [
    (msgpack.ExtType(ARRAY_EXT, msgpack.packb(["|O", [1], b"\0" * 8])), "bad array: ValueError: dtype '|O' is not numeric"),
    (msgpack.ExtType(ARRAY_EXT, msgpack.packb(["no-such-dtype", [1], b""])), "bad array: TypeError"),
    (msgpack.ExtType(ARRAY_EXT, msgpack.packb(["<f4", [3], b"\0" * 8])), "bad array: ValueError"),
    (msgpack.ExtType(ARRAY_EXT, b"\xc1"), "bad array"),
    (msgpack.ExtType(7, b""), "unknown ext type 7"),
])
def test_a_bad_array_is_a_protocol_error(ext, error):
    reader, _ = _pipe_with(_framed(msgpack.packb({"type": "result", "output": ext})))
    with pytest.raises(ProtocolError, match=error.replace("|", "\\|")):
        FrameReader(reader).recv(time.monotonic() + 5)


@pytest.mark.parametrize("body", [b"\xc1", msgpack.packb({"type": "x"}) + b"\x00", msgpack.packb({1: 2}),
                                  msgpack.packb({"type": 3}), b"", msgpack.packb({(1,): 1})[:0] + b"\x81\x91\x01\x01"])
def test_a_body_that_is_not_one_typed_map_is_malformed(body):
    reader, _ = _pipe_with(_framed(body))
    with pytest.raises(ProtocolError, match="malformed frame"):
        FrameReader(reader).recv(time.monotonic() + 5)
