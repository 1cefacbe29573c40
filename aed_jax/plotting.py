"""matplotlib for figures written to files: the Agg backend (no window, no display needed) and a
folder for its settings and font cache that it can write, so that importing it prints nothing.
`analysis` and `experiments.figures` get pyplot here."""
from __future__ import annotations

import os
import sys
import tempfile


def pyplot():
    """matplotlib.pyplot on the Agg backend.

    matplotlib keeps its settings and font cache in ~/.config/matplotlib and ~/.cache/matplotlib (or
    their XDG homes). Where it cannot create or write them (a HOME that is missing, read-only or not
    a folder, as on a cluster's compute node) it prints two warning lines on every import and builds
    the font cache again each time in a new temporary folder. So, before it loads, MPLCONFIGDIR
    points it at one folder of this user's in the temporary directory instead, kept from run to run.
    An MPLCONFIGDIR already set is left alone.
    """
    if "MPLCONFIGDIR" not in os.environ and not all(_writable(folder) for folder in _default_folders()):
        try:
            os.environ["MPLCONFIGDIR"] = _own_temporary_folder()
        except OSError:  # no temporary directory to write either: matplotlib says so itself
            pass
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _default_folders() -> list[str]:
    """The folders matplotlib (3.x) uses without MPLCONFIGDIR: its settings and its cache."""
    home = os.path.expanduser("~")
    if sys.platform.startswith(("linux", "freebsd")):
        return [os.path.join(os.environ.get(variable) or os.path.join(home, default), "matplotlib")
                for variable, default in (("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache"))]
    return [os.path.join(home, ".matplotlib")]


def _writable(folder: str) -> bool:
    """matplotlib's own test of its folder: it can be created (it does so itself) and written."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return os.path.isdir(folder) and os.access(folder, os.W_OK)


def _own_temporary_folder() -> str:
    """<tmp>/aed_jax-matplotlib-<uid>, this user's alone (mode 0700); a fresh folder when that name is
    taken by someone else's or by a file."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = os.path.join(tempfile.gettempdir(), f"aed_jax-matplotlib-{uid}")
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:  # this user's from an earlier run, or not: checked below
        pass
    if os.path.isdir(folder) and not os.path.islink(folder) and os.stat(folder).st_uid == uid \
            and os.access(folder, os.W_OK):
        return folder
    return tempfile.mkdtemp(prefix="aed_jax-matplotlib-")
