"""What the user did wrong, as one line: the base of every error a command reports without a traceback.

Each module raises its own subclass (ConfigError, DataError, CheckpointError, ...), so a caller can
catch one kind; every command's `main` runs under `cli.reporting`, which catches `UserError` once and
prints `error: <message>`. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno


class UserError(Exception):
    """A bad input, setting, file or run folder: the message is one line saying what and where."""


def one_line(e: BaseException) -> str:
    """An exception as one short line (ml_collections lists every other field; drop that)."""
    text = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
    text, _, others = text.partition(" Other fields present")
    if others:  # ml_collections quotes its message up to the list of every other field
        text = text.lstrip("'")
    return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no room: a full disk, a quota, a file-size limit
_FORBIDDEN = (errno.EROFS, errno.EACCES, errno.EPERM)
_NOT_A_FOLDER = (errno.ENOTDIR, errno.EEXIST)  # a file where the path needs a folder


def write_failed(e: OSError, path: str, then: str = "run the same command again") -> str:
    """What failed writing `path` and what to do, as one line: free space on a full disk, make a
    read-only or forbidden folder writable (else choose another path), or choose another path where
    a file stands in the way of a folder; then `then`."""
    what = e.strerror or str(e)
    if e.errno in _FULL:
        return f"{path}: {what}: free space on its disk (or choose another folder), then {then}"
    if e.errno in _FORBIDDEN:
        return f"{path}: {what}: make it writable (or choose another folder), then {then}"
    if e.errno in _NOT_A_FOLDER:
        return f"{path}: {what}: choose another folder, then {then}"
    return f"{path}: {what}"
