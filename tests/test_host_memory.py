"""cli.keep_freed_host_memory: the malloc options it sets, and a process that tunes malloc itself left alone.

What the options buy (XLA:CPU's freed temporaries not faulted in afresh every step) depends on the
machine's kernel as well, so it is a row of BENCHMARKS.md, not a test: here only what the code controls.
"""
import ctypes
import os
import subprocess
import sys

import pytest

from aed_jax import cli
from test_train import ROOT

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
SET = [(M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)]  # one arena, no mmap, never trim


class _Libc:
    """ctypes.CDLL(None) with a mallopt that records its calls and answers `result`."""

    def __init__(self, result=1):
        self.calls, self.result = [], result

    def mallopt(self, option, value):
        self.calls.append((option, value))
        return self.result


@pytest.fixture
def libc(monkeypatch):
    """A recording C library for cli, in an environment that does not tune malloc."""
    for name in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(name)
    fake = _Libc()
    monkeypatch.setattr(cli.ctypes, "CDLL", lambda name: fake)  # cli asks for CDLL(None): the process's own
    return fake


def test_one_arena_no_mmap_and_no_trimming_are_set(libc):
    assert cli.keep_freed_host_memory()
    assert libc.calls == SET


@pytest.mark.parametrize("variable", ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"])
def test_a_process_that_tunes_malloc_itself_is_left_alone(libc, monkeypatch, variable):
    monkeypatch.setenv(variable, "glibc.malloc.arena_max=4" if variable == "GLIBC_TUNABLES" else "4")
    assert not cli.keep_freed_host_memory()
    assert libc.calls == []


def test_an_option_glibc_refuses_is_not_reported_as_applied(libc):
    libc.result = 0  # mallopt's answer to an option or value it does not take
    assert not cli.keep_freed_host_memory()


def test_a_libc_without_mallopt_is_left_alone(monkeypatch, libc):
    monkeypatch.setattr(cli.ctypes, "CDLL", lambda name: object())
    assert not cli.keep_freed_host_memory()


# The same, read back from glibc itself in a fresh process: a 64 MiB block (above any mmap threshold
# glibc's default would use) comes from the heap instead of its own mapping, and stays there once
# freed. mallinfo2 counts malloc's own bookkeeping, so this does not depend on the kernel.
PROBE = """
import ctypes, sys
from aed_jax import cli
applied = cli.keep_freed_host_memory()
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype, libc.malloc.argtypes = Mallinfo2, ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblkhd - before  # bytes in blocks of their own mapping
libc.free(block)
print(applied, mapped >= 64 << 20, libc.mallinfo2().fordblks >= 64 << 20)  # free bytes the heap keeps
"""


def _probe(**env):
    untuned = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**untuned, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def _has_mallinfo2():
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc >= 2.33
    except (OSError, TypeError):
        return False


@pytest.mark.skipif(not (sys.platform.startswith("linux") and _has_mallinfo2()), reason="glibc's mallinfo2")
def test_glibc_keeps_a_freed_big_block_in_the_heap():
    applied, mapped, kept = _probe()
    assert (applied, mapped, kept) == ("True", "False", "True")
    applied, mapped, kept = _probe(MALLOC_ARENA_MAX="4")  # left alone: glibc maps the block and unmaps it on free
    assert (applied, mapped, kept) == ("False", "True", "False")
