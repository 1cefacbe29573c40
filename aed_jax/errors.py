"""What the user did wrong, as one line: the base of every error a command reports without a traceback.

Each module raises its own subclass (ConfigError, DataError, CheckpointError, ...), so a caller can
catch one kind; every command's `main` runs under `cli.reporting`, which catches `UserError` once and
prints `error: <message>`. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A bad input, setting, file or run folder: the message is one line saying what and where."""


def one_line(e: BaseException) -> str:
    """An exception as one short line (ml_collections lists every other field; drop that)."""
    text = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
    text, _, others = text.partition(" Other fields present")
    if others:  # ml_collections quotes its message up to the list of every other field
        text = text.lstrip("'")
    return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text
