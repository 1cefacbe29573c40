"""What the user did wrong, as one line: the base of every error a command reports without a traceback.

Each module raises its own subclass (ConfigError, DataError, CheckpointError, ...), so a caller can
catch one kind; every command's `main` runs under `cli.reporting`, which catches `UserError` once and
prints `error: <message>`. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import re


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


# The size an out-of-memory error names: numpy's "Unable to allocate 74.5 GiB for an array ...", XLA's
# "Out of memory allocating 6406400000 bytes" (CPU) or "... while trying to allocate 6406400000 bytes"
# and "Failed to allocate request for 1.50GiB (1610612736B)" (GPU).
_NUMPY_SIZE = re.compile(r"allocate (\d+(?:\.\d+)? [KMGTPE]?i?B) ")
_XLA_BYTES = re.compile(r"allocat\w* (\d+) bytes|\((\d+)B\)")


def out_of_memory(e: BaseException, program: str, remedy: str) -> str | None:
    """`program` ran out of memory, as one line: the size of the allocation that failed when the error
    names it, and `remedy` (what to make smaller); None when `e` is not an out-of-memory error. Host
    memory runs out as a MemoryError (numpy's names its size); device memory, and XLA:CPU's buffers
    in host memory, as jax's runtime error with RESOURCE_EXHAUSTED, recognised by its class's name so
    that this module, which every command imports before its flags are parsed, does not load jax."""
    text = str(e)
    if isinstance(e, MemoryError):
        match = _NUMPY_SIZE.search(text)
        size = match.group(1) if match else None
    elif any(c.__name__ in ("JaxRuntimeError", "XlaRuntimeError") for c in type(e).__mro__) \
            and "RESOURCE_EXHAUSTED" in text:
        match = _XLA_BYTES.search(text)
        size = _bytes_text(int(match.group(1) or match.group(2))) if match else None
    else:
        return None
    return f"{program} ran out of memory" + (f" allocating {size}" if size else "") + f": {remedy}"


def _bytes_text(n: int) -> str:
    """n bytes in the units numpy's message uses for its size: 5.97 GiB, 512 MiB, 900 KiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"
