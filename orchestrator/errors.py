"""Errors a user can fix: printed as one line each, exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something in the user's input or host that must be fixed before anything runs."""

    exit_code = 2

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)
