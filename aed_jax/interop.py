"""Parameters to and from the reference PyTorch implementation (yiphei/yif-AI), both ways.

    python -m aed_jax.interop export --workdir DIR --out model.npz   # writes model.npz and model.json
    python -m aed_jax.interop import --npz model.npz --config configs/X.py --workdir NEW_DIR

The files, their names and layouts, and how to load them in PyTorch: `reference.py`.
"""
from __future__ import annotations

if __name__ == "__main__":  # a signal, from the first line on: one line, exit 1
    from aed_jax import stopping
    stopping.exit_on_signals("error: interop was stopped by {signal}; "
                             "what it writes appears whole or not at all: run it again")

# Only what the flags need: jax and the libraries on it load in `main`, once the flags are parsed, so
# --help and a bad flag answer in a fraction of a second.
import os

from absl import flags

from aed_jax import cli
from aed_jax import config as config_lib


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("workdir", None, "export: the run to read; import: the new run folder to write.",
                        flag_values=fv)
    flags.DEFINE_string("checkpoint", "latest", "export: which checkpoint (latest, best or a step).", flag_values=fv)
    flags.DEFINE_string("out", None, "export: the .npz to write; the config goes beside it as .json.",
                        flag_values=fv)
    flags.DEFINE_string("npz", None, "import: the .npz of reference-named arrays.", flag_values=fv)
    flags.DEFINE_string("config", None, "import: the run config (configs/*.py) the weights belong to.",
                        flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    if len(argv) != 2 or argv[1] not in ("export", "import"):
        cli.fail("usage: python -m aed_jax.interop export --workdir DIR --out model.npz | "
                 "import --npz model.npz --config configs/X.py --workdir DIR")
    command = argv[1]
    needed = ("workdir", "out") if command == "export" else ("npz", "config", "workdir")
    if missing := [f"--{name}" for name in needed if not fv[name].value]:
        cli.fail(f"{command} needs {', '.join(missing)}")
    # Before any work: the checkpoint is read (and the model built) only for a place that can hold the result.
    if command == "export":
        cli.check_writable_folder(os.path.dirname(os.path.abspath(fv.out)), "--out")
    else:
        cli.check_writable_folder(fv.workdir, "--workdir")
    from aed_jax import reference
    if command == "export":
        try:
            npz, json_path = reference.export(fv.workdir, fv.out, fv.checkpoint)
        except OSError as e:  # nothing half-written is left: rundir.atomic_file removes its .tmp
            cli.fail(f"--out {fv.out}: cannot write {e.filename or fv.out} ({e.strerror or e}); choose a writable "
                     "file path with room for the arrays")
        print(f"wrote {npz} and {json_path}")
    else:
        reference.import_npz(fv.npz, config_lib.load(fv.config), fv.workdir)
        print(f"wrote checkpoint 0 of {fv.workdir}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
