"""Test-wide settings: CPU only, strict rank promotion (shape bugs fail loudly), and a persistent
compilation cache shared with the subprocesses that tests start, since XLA's CPU compiles of the
train step dominate the suite's time and many tests compile the same small models; and a command
stopped by a signal at a chosen moment (`stop_command`)."""
import os
import signal
import subprocess
import sys
import time

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


# A command, stopped by a signal at a chosen moment: as soon as its handlers are in (its libraries still
# load), or once a function it calls has paused (the patched function prints "paused" and sleeps).
_PAUSED = """import runpy, sys, time
import {module} as target
real = target.{name}
def pause():  # not print: it may be the function paused
    sys.stdout.write("paused\\n")
    sys.stdout.flush()
    time.sleep(300)
def before(*args, **kwargs):
    pause()
    return real(*args, **kwargs)
def after_first(*args, **kwargs):
    for i, item in enumerate(real(*args, **kwargs)):
        if i == 1:
            pause()
        yield item
target.{name} = {how}
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (SigCgt in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.fixture
def stop_command():
    """stop(argv, sig, pause=None) -> (returncode, stdout, stderr): `python -m *argv` sent `sig` once its
    handlers are installed (pause None; the command installs SIGTERM's last, and nothing else catches it
    so early), or once `pause` = (module, function, "before" | "after_first") has paused: before the
    function runs, or, for an iterator, after its first item."""
    procs = []

    def stop(argv, sig, pause=None):
        if pause is None:
            command = [sys.executable, "-m", *argv]
        else:
            module, name, how = pause
            command = [sys.executable, "-c", _PAUSED.format(module=module, name=name, how=how), *argv]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        deadline = time.monotonic() + 240
        if pause is None:
            while not _catches_sigterm(proc.pid):
                assert proc.poll() is None and time.monotonic() < deadline, "the command never installed its handler"
                time.sleep(0.01)
        else:
            line = proc.stdout.readline()
            assert line == "paused\n", (line, proc.communicate(timeout=60))
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
        return proc.returncode, stdout, stderr

    yield stop
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# The fast tier (`python -m pytest -m fast`, README): every quick test of these unit-level files, plus the
# tests marked @pytest.mark.fast in the others: each module's core behaviour in about a minute and a half.
FAST_FILES = {"test_stats.py", "test_docs.py", "test_data.py", "test_tokenizer.py", "test_tasks.py", "test_summary.py",
              "test_config.py", "test_compare.py", "test_prepare.py", "test_prepare_faults.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in FAST_FILES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)
