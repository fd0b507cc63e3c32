"""Splits powermetrics' `-f plist` output into samples as it streams in.

powermetrics writes one XML plist document per sample, separated by a NUL byte. A document is
taken as complete when its closing `</plist>` arrives, so documents separated by a newline alone
(a capture saved without the NULs) parse too, each at its own arrival. Bytes before a document's
start that are not blank are garbage (counted per NUL-separated piece, skipped); a document that
does not parse is garbage; a last document cut short when the stream ends is truncated (counted,
skipped). The stream holds at most MAX_DOCUMENT_BYTES waiting for a `</plist>` (a real sample is
a few KB): beyond that the bytes are dropped and counted as overflow, and each byte is scanned
for the end tag once, so a meter flooding bytes costs linear time and bounded memory."""

from __future__ import annotations

import plistlib
from dataclasses import dataclass, field
from typing import Any

CHANNELS = ("cpu", "gpu", "ane")
END = b"</plist>"
MAX_DOCUMENT_BYTES = 16 << 20  # a real sample (M4, every sampler) is 260 KB


@dataclass
class Sample:
    arrival_ns: int  # when the document was complete on our side (monotonic)
    elapsed_ns: int  # the sample's own duration, as powermetrics measured it
    joules: dict[str, float]
    thermal_pressure: str | None


def sample_joules(doc: dict[str, Any]) -> dict[str, float]:
    """`processor.<ch>_energy` (mJ over the sample) where present, else `<ch>_power` (mW) x elapsed."""
    proc = doc.get("processor", {})
    seconds = doc["elapsed_ns"] / 1e9
    out = {}
    for ch in CHANNELS:
        if f"{ch}_energy" in proc:
            out[ch] = proc[f"{ch}_energy"] / 1e3
        elif f"{ch}_power" in proc:
            out[ch] = proc[f"{ch}_power"] / 1e3 * seconds
    return out


@dataclass
class PlistStream:
    samples: list[Sample] = field(default_factory=list)
    documents: int = 0
    garbage: int = 0
    truncated: int = 0
    overflow: int = 0  # times MAX_DOCUMENT_BYTES passed without a `</plist>`
    _pending: bytearray = field(default_factory=bytearray)
    _scanned: int = 0  # bytes of _pending already searched for END

    def _parse(self, doc: bytes, arrival_ns: int) -> bool:
        try:
            d = plistlib.loads(doc)
            sample = Sample(arrival_ns, int(d["elapsed_ns"]), sample_joules(d), d.get("thermal_pressure"))
        except Exception:  # any unparseable document: plistlib raises several unrelated types
            return False
        self.samples.append(sample)
        self.documents += 1
        return True

    def _count_garbage(self, data: bytes | bytearray) -> None:
        self.garbage += sum(1 for piece in data.split(b"\x00") if piece.strip())

    def feed(self, data: bytes, arrival_ns: int) -> None:
        self._pending += data
        while (end := self._pending.find(END, self._scanned)) >= 0:
            chunk = bytes(self._pending[:end + len(END)])
            del self._pending[:end + len(END)]
            self._scanned = 0
            start = _document_start(chunk)
            self._count_garbage(chunk[:max(start, 0)])
            if start < 0 or not self._parse(chunk[start:], arrival_ns):
                self.garbage += 1
        if len(self._pending) > MAX_DOCUMENT_BYTES:
            self.overflow += 1
            del self._pending[:-(len(END) - 1)]  # what could still be the start of an end tag
        self._scanned = max(len(self._pending) - len(END) + 1, 0)

    def finish(self) -> None:
        """End of stream: what is left never saw its `</plist>`."""
        start = _document_start(self._pending)
        self._count_garbage(self._pending[:start] if start >= 0 else self._pending)
        if start >= 0:
            self.truncated += 1
        self._pending.clear()
        self._scanned = 0

    def counters(self) -> dict[str, int]:
        return {"documents": self.documents, "garbage": self.garbage, "truncated": self.truncated,
                "overflow": self.overflow}


def _document_start(data: bytes | bytearray) -> int:
    """Where the last document in `data` begins (its XML prolog, else its root tag), or -1."""
    start = data.rfind(b"<?xml")
    return start if start >= 0 else data.rfind(b"<plist")
