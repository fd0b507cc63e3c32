"""Under `sudo`, only powermetrics needs root. The orchestrator forks its meter broker
(`energy/meters/broker.py`) and then drops to the user who invoked sudo, for good: from then on
workers, env syncing, uv, pmset, doctor's probes and every file the session writes run as, and
belong to, that user. Nothing is chowned afterwards, so nothing is ever chowned through a link."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass


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


def drop_to(user: InvokingUser) -> None:
    """Become `user` for good: supplementary groups (the user's own), then the group ids, then
    the user ids (real, effective and saved: root sets all three), then HOME and the user's
    names. Raises OSError if root could be regained afterwards."""
    try:
        os.initgroups(user.name, user.gid)
    except (OSError, KeyError):  # a uid without a passwd entry: its primary group only
        os.setgroups([user.gid])
    os.setgid(user.gid)
    os.setuid(user.uid)
    if hasattr(os, "getresuid") and (os.getresuid() != (user.uid,) * 3 or os.getresgid() != (user.gid,) * 3):
        raise OSError(f"ids after the drop: uid {os.getresuid()}, gid {os.getresgid()}")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise OSError("root could be regained after the drop")
    os.environ.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    os.umask(0o022)
