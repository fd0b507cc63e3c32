"""Splits powermetrics' `-f plist` output into samples as it streams in.

powermetrics writes one XML plist document per sample and separates documents with a NUL byte.
Chunks that do not parse are garbage (counted, skipped); a last document cut short when the
stream ends is truncated (counted, skipped)."""

from __future__ import annotations

import plistlib
from dataclasses import dataclass, field
from typing import Any

CHANNELS = ("cpu", "gpu", "ane")


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
    _pending: bytes = b""

    def _parse(self, chunk: bytes, arrival_ns: int) -> bool:
        chunk = chunk.strip()
        if not chunk:
            return True
        try:
            doc = plistlib.loads(chunk)
            sample = Sample(arrival_ns, int(doc["elapsed_ns"]), sample_joules(doc), doc.get("thermal_pressure"))
        except Exception:  # any unparseable chunk: plistlib raises several unrelated types
            return False
        self.samples.append(sample)
        self.documents += 1
        return True

    def feed(self, data: bytes, arrival_ns: int) -> None:
        *complete, self._pending = (self._pending + data).split(b"\x00")
        for chunk in complete:
            if not self._parse(chunk, arrival_ns):
                self.garbage += 1

    def finish(self, arrival_ns: int) -> None:
        """End of stream: a last document without its NUL counts if whole."""
        if self._pending.strip() and not self._parse(self._pending, arrival_ns):
            self.truncated += 1
        self._pending = b""

    def counters(self) -> dict[str, int]:
        return {"documents": self.documents, "garbage": self.garbage, "truncated": self.truncated}
