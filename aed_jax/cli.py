"""What every command line shares: the `--config` flag, one-line user errors, malloc's setting."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging as std_logging
import os
import tempfile
import warnings
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from aed_jax import config as config_lib
from aed_jax import errors


class _ConfigFileParser(flags.ArgumentParser):
    """In place of ml_collections' parser: reads the file with `config_lib.read`, so a missing file, a
    syntax error or a file without `get_config` is one line naming it, whatever overrides follow
    (raised as a flags.Error, which absl passes on unwrapped)."""

    def parse(self, path):
        try:
            return config_lib.read(path)
        except config_lib.ConfigError as e:
            raise flags.Error(str(e)) from None

    def flag_type(self):
        return "config file"


def define_config_flag(flag_values: flags.FlagValues = flags.FLAGS):
    """`--config=configs/x.py` plus `--config.key=value` overrides, type-checked by ml_collections,
    and `--show_config`.

    Call it from the command's own module: the flags are declared key to the running program, so
    `--help` lists them beside the command's other flags (absl lists only the main module's).
    """
    holder = config_flags.DEFINE_config_file(
        "config", None, "Path to a config file (configs/*.py, or a run's config.json); override keys with "
        "--config.<key>=<value>.",
        lock_config=True, flag_values=flag_values)
    flag_values["config"].parser = _ConfigFileParser()
    flags.DEFINE_bool("show_config", False, "Print every config key with its value (overrides applied) and its "
                      "meaning, then exit.", flag_values=flag_values)
    for name in ("config", "show_config"):
        flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])
    return holder


def get_config(flag_values: flags.FlagValues = flags.FLAGS):
    """The parsed `--config`, validated; a bad value exits with one line naming the key. With
    `--show_config`, prints the keys, values and meanings and exits 0. A train_steps raised past the
    schedule's decay is said in one line (`past_decay_note`)."""
    flag = flag_values["config"]
    if flag.value is None:
        fail("--config is required, e.g. --config=configs/tiny.py")
    filename = config_flags.get_config_filename(flag)
    try:
        config_lib.validate(flag.value)
    except config_lib.ConfigError as e:
        fail(f"{filename}: {e}")
    if flag_values.show_config:
        print(f"{filename}, overrides applied:\n{config_lib.describe(flag.value)}")
        sys.exit(0)
    note = past_decay_note(flag.value, config_flags.get_override_values(flag), filename)
    if note and _first_process():
        print(note, file=sys.stderr)
    return flag.value


def _first_process() -> bool:
    """Whether this is process 0 of a job (or the one process of a run), told before jax joins the others,
    from JAX_PROCESS_ID or SLURM's rank: the other processes print only their own errors."""
    return os.environ.get("JAX_PROCESS_ID", os.environ.get("SLURM_PROCID", "0")).strip() in ("0", "")


def past_decay_note(c, overridden: dict, filename: str) -> str | None:
    """One line when the command line raised `train_steps` past the config's `lr_decay_iters` and left the
    schedule as written (`overridden`: ml_collections' record of the --config.<key> flags given), so that a
    run trained longer is not left at min_lr for its last steps unawares; None otherwise.

    Saying it rather than stretching the schedule: the keys are nanoGPT's, where lr_decay_iters is a setting
    of its own and max_iters moves nothing else, so a config's values are what a run uses; and raising
    train_steps is also how a finished run trains on (main says so), whose resume must keep its schedule
    (rundir refuses another lr_decay_iters), so it goes on at min_lr, as a nanoGPT run past lr_decay_iters does."""
    if not c.decay_lr or "train_steps" not in overridden or "lr_decay_iters" in overridden \
            or c.train_steps <= c.lr_decay_iters:
        return None
    return (f"warning: --config.train_steps={c.train_steps} trains past {filename}'s lr_decay_iters="
            f"{c.lr_decay_iters}: its last {c.train_steps - c.lr_decay_iters:,} steps at min_lr={c.min_lr:g}; "
            f"for a new run whose decay spans it, pass --config.lr_decay_iters={c.train_steps} too")


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """`flag_values(argv)`, but a bad flag or config file is one line on stderr and exit 1."""
    try:
        return flag_values(argv)
    except (AttributeError, KeyError) as e:  # a misspelt key in an override; ml_collections quotes it
        key, _, hint = errors.one_line(e).partition(" Did you mean ")
        fail(f"unknown config key {key}" + (f"; did you mean {hint}" if hint else "; --show_config lists the keys"))
    except (flags.Error, TypeError, ValueError) as e:
        fail(errors.one_line(e))


def reporting(main):
    """`main`, but any `errors.UserError` it raises is one line on stderr and exit 1: the one place a
    command's user errors are caught (a test calls `reporting(module.main)` as the command line does)."""
    def reported(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except errors.UserError as e:
            fail(str(e))
    return reported


def run(main):
    """`app.run(main)`, but a bad flag or config file, a user error (`reporting`) or Ctrl-C is one line
    on stderr and exit 1, not a traceback. (The trainer catches Ctrl-C itself in its loop, to save first.)"""
    def interruptible(argv):
        try:
            return reporting(main)(quiet_libraries(argv))
        except KeyboardInterrupt:
            fail("interrupted")
    keep_freed_host_memory()
    app.run(interruptible, flags_parser=parse_flags)


def keep_freed_host_memory() -> bool:
    """Makes glibc's malloc keep and reuse the big blocks XLA:CPU frees instead of unmapping them.

    XLA:CPU allocates a step's temporaries in one block (about 2 GB for a seed-size micro-batch of
    8) from a worker thread; glibc serves a block that big from a thread's arena with mmap and
    unmaps it when freed, so every step faulted half a million fresh pages in: 25-30% of a CPU
    step (BENCHMARKS.md). With one arena, no mmap and no trimming, the freed block stays in the
    heap for the next step. The cost: host memory, once used, stays with the process.
    It must run before jax starts its threads (each command's start does it); a process whose
    environment already tunes malloc (MALLOC_*, GLIBC_TUNABLES) is left alone, as is any libc
    without mallopt. Returns whether it applied."""
    if any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return False
    try:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the process's own C library
    except (OSError, TypeError):  # no C library to load by name (Windows)
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc's malloc.h; a threshold of -1 never trims
    return all(mallopt(option, value) == 1
               for option, value in ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, -1)))


def quiet_libraries(argv=None):
    """Keeps orbax's, grain's and jax's INFO lines (one per save, backend probing) out of the log; their
    warnings still show, but for the compilation cache's."""
    quiet = lambda record: record.levelno >= std_logging.WARNING or not any(
        f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("orbax", "grain", "jax"))
    logging.get_absl_handler().addFilter(quiet)
    # The compilation cache only saves time: failing to write an entry (a full disk), or to read one a full
    # disk cut short (jax compiles the program again and rewrites it), is not the user's news.
    warnings.filterwarnings("ignore", message="Error (writing|reading) persistent compilation cache entry")
    return argv


def check_writable_folder(path: str, flag: str = "--out") -> None:
    """Exit with one line (errors.write_failed: what, and the remedy) unless a file can be written in
    folder `path`, once it and its missing parents are created. A command calls it before any work, so
    an unwritable output is refused at once, not after the minutes of computing whose results it
    would hold. It creates nothing: the nearest part of `path` that exists must be a folder, where a
    probe file of one byte is written and removed (which a full disk, a read-only file system or a
    forbidden folder refuses, whatever access(2) would say for root)."""
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is not a folder")
        fd, probe = tempfile.mkstemp(prefix=".aed_jax-write-check-", dir=existing)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        fail(errors.write_failed(e, f"{flag} {path}"))


@contextlib.contextmanager
def out_of_memory_is_one_line(program: str, remedy: str):
    """Out of host or device memory inside the block: one line naming the size that failed and
    `remedy` (errors.out_of_memory), exit 1; any other error goes on as it was."""
    try:
        yield
    except Exception as e:
        message = errors.out_of_memory(e, program, remedy)
        if message is None:
            raise
        fail(message)


def no_extra_args(argv):
    """One `error:` line (not absl's whole usage text) for positional arguments a command does not take."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])} (the flags are --name=value; --help lists them)")


def fail(message: str):
    """Exit 1 with `error: message` on stderr, no traceback: the way every CLI reports user errors."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)
