"""What every command line shares: the `--config` flag and one-line user errors."""
from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from aed_jax import config as config_lib


def define_config_flag(flag_values: flags.FlagValues = flags.FLAGS):
    """`--config=configs/x.py` plus `--config.key=value` overrides, type-checked by ml_collections.

    Call it from the command's own module: the flag is declared key to the running program, so
    `--help` lists it beside the command's other flags (absl lists only the main module's).
    """
    holder = config_flags.DEFINE_config_file(
        "config", None, "Path to a config file (configs/*.py); override keys with --config.<key>=<value>.",
        lock_config=True, flag_values=flag_values)
    flag_values.register_key_flag_for_module(sys.argv[0], flag_values["config"])
    return holder


def get_config():
    """The parsed `--config`, validated; a bad value exits with one line naming the key."""
    flag = flags.FLAGS["config"]
    filename = config_flags.get_config_filename(flag)
    if not filename:
        fail("--config is required, e.g. --config=configs/tiny.py")
    if not os.path.isfile(filename):
        fail(f"--config: no such file {filename!r}")
    try:
        config_lib.validate(flag.value)
    except (config_lib.ConfigError, OSError) as e:
        fail(f"{filename}: {config_lib.one_line(e)}")
    return flag.value


def run(main):
    """`app.run(main)`, but a bad flag or config file is one line on stderr and exit 1, not a traceback."""
    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except AttributeError as e:  # a misspelt key in a config file or an override
            fail(f"unknown config key: {config_lib.one_line(e).lstrip(chr(39))}")
        except (flags.Error, TypeError, KeyError, ValueError) as e:
            fail(config_lib.one_line(e))
    app.run(lambda argv: main(_quiet_libraries(argv)), flags_parser=parse)


def _quiet_libraries(argv):
    """Keeps orbax's, grain's and jax's INFO lines (one per save, backend probing) out of the log; their warnings still show."""
    quiet = lambda record: record.levelno >= std_logging.WARNING or not any(
        f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("orbax", "grain", "jax"))
    logging.get_absl_handler().addFilter(quiet)
    return argv


def no_extra_args(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def fail(message: str):
    """Exit 1 with `error: message` on stderr, no traceback: the way every CLI reports user errors."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)
