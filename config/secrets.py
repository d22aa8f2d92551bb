"""Secrets at rest: files that hold tokens, the webhook secret or the Redis password.

``*_FILE`` settings follow the Docker / Kubernetes secrets convention (the value is the file's
content, a trailing newline dropped). Such a file, and ``THREADS_TOKENS_FILE``, must not be
readable by anyone who does not need it. The rule (``mode_problem``, pure) is OpenSSH's and
PostgreSQL's: never readable or writable by others; readable by the group only when someone else
(root) owns the file, which is how a Kubernetes secret mounted with ``fsGroup`` and
``defaultMode: 0440`` looks. ``SECRET_FILE_MODE_CHECK=warn`` loads such a file anyway, saying so.
"""

from __future__ import annotations

import os
import stat
from enum import StrEnum
from pathlib import Path

MAX_SECRET_FILE_BYTES = 1 << 20


class FileModeCheck(StrEnum):
    REFUSE = "refuse"
    WARN = "warn"


class SecretFileError(ValueError):
    """A secrets file that cannot be used; the message never quotes its content."""


def mode_problem(mode: int, owner_uid: int, my_uid: int) -> str | None:
    """Why a secrets file with these permissions is too open, or None. Pure."""
    perms = stat.S_IMODE(mode)
    if perms & (stat.S_IROTH | stat.S_IWOTH):
        return f"readable or writable by others (mode {perms:04o})"
    if perms & stat.S_IWGRP:
        return f"writable by its group (mode {perms:04o})"
    if perms & stat.S_IRGRP and owner_uid == my_uid:
        return f"readable by its group although this user owns it (mode {perms:04o})"
    return None


def file_mode_problem(path: Path) -> str | None:
    """``mode_problem`` of a file (following symlinks, as Kubernetes mounts them)."""
    st = path.stat()
    return mode_problem(st.st_mode, st.st_uid, os.geteuid())


def mode_advice(name: str) -> str:
    return (
        f"chmod 600 {name}'s file (Kubernetes: defaultMode 0400, or 0440 with fsGroup), or set "
        "SECRET_FILE_MODE_CHECK=warn"
    )


def read_secret_file(path: Path, *, name: str, check: FileModeCheck) -> tuple[str, str | None]:
    """The file's content without its trailing newline, and a warning (or None).

    SecretFileError when it is missing, unreadable, too large, empty, not UTF-8, or too open
    while ``check`` is ``refuse``."""
    try:
        problem = file_mode_problem(path)
        if problem is not None and check is FileModeCheck.REFUSE:
            raise SecretFileError(f"{path} is {problem}; {mode_advice(name)}")
        if not stat.S_ISREG(path.stat().st_mode):
            # A FIFO or /dev/zero would block or never end.
            raise SecretFileError(f"{path} is not a regular file")
        with path.open("rb") as f:
            raw = f.read(MAX_SECRET_FILE_BYTES + 1)
        if len(raw) > MAX_SECRET_FILE_BYTES:
            raise SecretFileError(f"{path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    except OSError as exc:
        raise SecretFileError(f"{str(path)!r} cannot be read ({type(exc).__name__})") from None
    try:
        value = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SecretFileError(f"{path} is not UTF-8 text") from None
    if not value.strip():
        raise SecretFileError(f"{path} is empty")
    warning = f"{name} {path} is {problem}; {mode_advice(name)}" if problem else None
    return value, warning
