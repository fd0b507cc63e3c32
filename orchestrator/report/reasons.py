"""Long reasons said once: a report or a terminal gives a reason in full the first time and a
short form that refers back to it after that."""

from __future__ import annotations

import re

_PARENTHESES = re.compile(r" \((?:[^()]|\([^()]*\))*\)")  # one level of nesting, as meters' reasons have
LONG = 100  # characters: a reason this long is worth saying once


def brief(reason: str) -> str:
    """`reason` without its parenthesized details when it is long, e.g. "no power meter available
    on this host; energy is not measured"; short reasons as they are."""
    return _PARENTHESES.sub("", reason) if len(reason) > LONG else reason


def again(reason: str, where: str = "Energy") -> str:
    """A reason given in full elsewhere (`where`: the line that has it), referred to."""
    short = brief(reason)
    return reason if short == reason else f"{short}; in full under {where}"
