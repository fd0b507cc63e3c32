"""Errors a user can fix: printed as one line each, exit code 2, no traceback; and the words for
how a child process (a worker, a meter) ended, which every failure reason uses."""

from __future__ import annotations

import signal


def describe_exit(code: int | None) -> str:
    """A Popen returncode in words: `exited with code 3`, `killed by signal SIGKILL`."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class UserError(Exception):
    """Something in the user's input or host that must be fixed before anything runs."""

    exit_code = 2

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)

    def printed(self) -> str:
        """As printed to the user: `error: ` before each line but a continuation (indented)."""
        return "\n".join(line if line.startswith(" ") else f"error: {line}" for line in self.lines)
