"""Protocol frames fuzzed on both sides (hypothesis): whatever bytes or messages a peer sends,
the reading side yields a message that fits its typed contract, or a ProtocolError or Invalid
that names what is wrong; never another exception, never a wait past the bytes it was given.
`uv run pytest tests/test_fuzz_protocol.py --hypothesis-show-statistics` shows the outcomes."""

import json
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from workers.contract.fileguard import FileGuard
from workers.contract.messages import (
    Error,
    Hello,
    Ready,
    Result,
    Setup,
    SetupInputs,
    SetupModel,
    Unsupported,
    parse,
    wire,
)
from workers.contract.protocol import Channel, FrameReader, PeerClosed, ProtocolError, encode
from workers.contract.typed import Invalid, to_dict

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

arrays = hnp.arrays(dtype=st.sampled_from([np.float32, np.float16, np.float64, np.int32, np.uint8, np.bool_]),
                    shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=3))
leaves = (st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64 - 1)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | st.binary(max_size=12) | arrays)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6) | st.integers(-3, 3), inner, max_size=4), max_leaves=16)

SETUP = Setup(cell={"id": "c", "backend": "fake"}, model=SetupModel(source="synthetic", path="/m", sha256="m" * 64,
                 guard=FileGuard(size=1, mtime_ns=1, ctime_ns=1, inode=1, device=1), arch={}),
              inputs=SetupInputs(latent=np.zeros((1, 4, 2, 2), np.float32), text_embedding=np.zeros((1, 77, 768), np.float32),
                                 timestep=500, sha256={"latent": "l", "text_embedding": "t"}),
              warmup=0, iterations=2)
VALID = {
    Hello: wire(Hello(protocol=2, pid=1, uid=501, python="3.12.1", env="diffusers")),
    Ready: wire(Ready(load_s=1.5, warmup_s=0.2, realized={"device": "cpu", "conversion": {"cached": True}},
                      versions={"torch": "2.5"}, model_sha256="m" * 64)),
    Unsupported: wire(Unsupported(reason="needs macOS", versions={"coremltools": "9.0"}, facts={"conversion": {}})),
    Result: wire(Result(window_start_ns=10, window_end_ns=40, iteration_start_ns=[10, 25], iteration_end_ns=[20, 40],
                        output=np.ones((1, 4, 2, 2), np.float32), output_sha256="o")),
    Error: wire(Error(message="RuntimeError: [bold]out of memory[/]")),
}


def _read_all(data: bytes) -> list[dict]:
    """Every message in `data`; the way the stream ended is the hypothesis event. The stream is
    closed after `data`, so a reader that waited for more would raise TimeoutError."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    stream = os.fdopen(r, "rb", buffering=0)
    reader, got = FrameReader(stream), []
    try:
        while True:
            got.append(reader.recv(time.monotonic() + 5))
    except PeerClosed:
        event(f"stream: clean end after {len(got)} message(s)")
    except ProtocolError as e:
        event("stream: " + str(e).split(":")[0])
    finally:
        reader.close()
        stream.close()
    return got


def _accepted(msg: dict, kind: type) -> None:
    """The orchestrator's checks of a frame that arrived whole: the typed message, a result's
    semantics, and that what it keeps fits a JSON record."""
    try:
        parsed = parse(msg, kind)
        if isinstance(parsed, Result):
            parsed.check(SETUP)
    except Invalid:
        event(f"{kind.TYPE}: refused (Invalid)")
        return
    if isinstance(parsed, (Ready, Unsupported, Hello, Error)):
        json.dumps(to_dict(parsed), allow_nan=False)  # what a run record keeps of it
    event(f"{kind.TYPE}: accepted")


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes_from_a_worker_are_messages_or_a_protocol_error(data):
    _read_all(data)


@FUZZ
@given(st.sampled_from(list(VALID)), st.data())
def test_a_valid_frame_cut_or_flipped_anywhere_is_read_or_refused(kind, data):
    frame = bytearray(encode(VALID[kind]))
    if data.draw(st.booleans()):
        frame = frame[:data.draw(st.integers(0, len(frame)))]
    for _ in range(data.draw(st.integers(0, 3))):
        if frame:
            frame[data.draw(st.integers(0, len(frame) - 1))] ^= data.draw(st.integers(1, 255))
    for msg in _read_all(bytes(frame)):
        _accepted(msg, kind)


@FUZZ
@given(st.sampled_from(list(VALID)), st.data())
def test_a_message_with_any_field_changed_fits_its_contract_or_is_refused(kind, data):
    msg = dict(VALID[kind])
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(msg)) | st.text(max_size=6))
        if data.draw(st.booleans()) and key in msg and key != "type":
            del msg[key]
        else:
            msg[key] = data.draw(values)
    for got in _read_all(encode(msg)):
        _accepted(got, kind)


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes_from_the_orchestrator_are_a_setup_or_a_named_refusal(data):
    """The worker side: its channel and its parse of the setup."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    channel = Channel(os.fdopen(r, "rb", buffering=0), open(os.devnull, "wb"))
    try:
        parse(channel.recv(), Setup)
        event("setup: accepted")
    except PeerClosed:
        event("setup: clean end")
    except ProtocolError as e:
        event("setup: " + str(e).split(":")[0])
    except Invalid:
        event("setup: refused (Invalid)")


def test_a_nested_table_with_keys_of_mixed_types_is_refused_by_name():
    """Found by the fuzzer: sorting the unknown keys of a nested table of int and str keys raised
    TypeError instead of Invalid."""
    msg = {**VALID[Result], "nvml_check": {"": None, 0: None}}
    with pytest.raises(Invalid, match="protocol: result: field nvml_check: expected a table or null"):
        parse(msg, Result)
