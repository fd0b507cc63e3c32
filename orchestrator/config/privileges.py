"""Under `sudo`, only the meter needs root: workers, env syncing and uv run as the invoking user
(SUDO_UID/SUDO_GID, with that user's HOME), and the files a session writes are theirs."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InvokingUser:
    uid: int
    gid: int
    name: str
    home: str


def invoking_user() -> InvokingUser | None:
    """The user behind sudo, when running as root under sudo; else None (nothing to drop)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or "SUDO_UID" not in os.environ:
        return None
    uid = int(os.environ["SUDO_UID"])
    if uid == 0:
        return None
    gid = int(os.environ.get("SUDO_GID", uid))
    try:
        entry = pwd.getpwuid(uid)
        name, home = entry.pw_name, entry.pw_dir
    except KeyError:
        name, home = os.environ.get("SUDO_USER", str(uid)), "/"
    return InvokingUser(uid, gid, name, home)


def child_kwargs(environ: dict[str, str]) -> dict[str, Any]:
    """subprocess keyword arguments that start a child as the invoking user (or unchanged)."""
    user = invoking_user()
    if user is None:
        return {"env": environ}
    return {"user": user.uid, "group": user.gid, "extra_groups": [],
            "env": {**environ, "HOME": user.home, "USER": user.name, "LOGNAME": user.name}}


def give_to_invoking_user(*paths: Path) -> None:
    """chown what the session wrote (recursively) to the invoking user."""
    user = invoking_user()
    if user is None:
        return
    for path in paths:
        if not path.exists():
            continue
        os.chown(path, user.uid, user.gid)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)
