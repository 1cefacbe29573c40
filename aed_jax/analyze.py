"""`python -m aed_jax.analyze --workdir A [--workdir B ...] --out DIR`: what a run's parts are worth and
what its embeddings and attention look like, several runs side by side on the same sampled windows.

Writes DIR/report.md, one PNG per figure, DIR/metrics.json and DIR/windows.npz. What each number
is and how it is computed: `analysis.py`. A task run's windows are sequences drawn from its task
with --seed, scored on their answers (in windows.npz its CE is NaN elsewhere, and its offsets are
each sequence's index in the draw). SIGTERM or Ctrl-C at any point ends it with one line that
says what it wrote: each file is written whole or not at all, report.md last.
"""
from __future__ import annotations

if __name__ == "__main__":  # from the start: while the libraries load, as while it measures (`main` moves it on)
    from aed_jax import stopping
    stopping.exit_on_signals("error: analyze was stopped by {signal}; it wrote nothing")

import functools
import os

# Only what the flags need: jax and the libraries on it load in `main`, once the flags are parsed, so
# --help and a bad flag answer in a fraction of a second.
from absl import flags  # noqa: E402  (after the handlers)

from aed_jax import cli  # noqa: E402
from aed_jax import errors  # noqa: E402
from aed_jax import stopping  # noqa: E402

# An interval over N windows narrows as 1/sqrt(N): a million make it 30 times narrower than the default
# 1,000, and each run keeps a float64 CE per window and position (8 GB at a million windows of 1,024).
MAX_WINDOWS = 1_000_000


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_multi_string("workdir", None, "A run folder; repeat it to compare runs side by side (the first "
                              "is the one the others' differences are taken from).", flag_values=fv)
    flags.DEFINE_string("checkpoint", "latest", "Which checkpoint of each run: latest, best, or a step number.",
                        flag_values=fv)
    flags.DEFINE_string("data", None, "A token folder or one .bin file to draw windows from; default: each run's "
                        "val split. Corpus runs only: a task run draws its sequences from its task.", flag_values=fv)
    flags.DEFINE_integer("windows", 1000, "How many windows (a task run: sequences) to draw at random (a sample "
                         f"size: intervals narrow as it grows), at most {MAX_WINDOWS:,}.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the window (or task sequence) draw and of the bootstrap.",
                         flag_values=fv)
    flags.DEFINE_bool("ablations", True, "Measure the eval-time ablations (one more forward pass each).",
                      flag_values=fv)
    flags.DEFINE_integer("batch_size", None, "Sequences per batch (default: the run config's batch_size).",
                         flag_values=fv)
    flags.DEFINE_string("out", None, "Folder for report.md, the PNGs, metrics.json and windows.npz.", flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    if not fv.workdir:
        cli.fail("--workdir is required (repeat it to compare runs)")
    if not fv.out:
        cli.fail("--out is required: the folder for report.md, the figures, metrics.json and windows.npz")
    for name in ("windows", "batch_size"):
        if fv[name].value is not None and fv[name].value < 1:
            cli.fail(f"--{name} must be at least 1, got {fv[name].value}")
    if fv.windows < 2:
        cli.fail(f"--windows must be at least 2 (an interval needs two windows), got {fv.windows}")
    if fv.windows > MAX_WINDOWS:
        cli.fail(f"--windows must be at most {MAX_WINDOWS:,} (its intervals are already 30 times narrower than "
                 f"1,000 windows give), got {fv.windows:,}")
    cli.check_writable_folder(fv.out)  # before any work: the report is written only once it is all computed
    from aed_jax import analysis
    out_of_memory = functools.partial(cli.out_of_memory_is_one_line, "analyze",
                                      f"pass a smaller --batch_size or fewer --windows (now {fv.windows:,})")
    with out_of_memory():
        runs = {label: analysis.analyze_run(workdir, fv.checkpoint, fv.data, fv.windows, fv.seed, fv.batch_size,
                                            fv.ablations, label)
                for workdir, label in zip(fv.workdir, analysis.labels(fv.workdir))}
    command = "python -m aed_jax.analyze " + " ".join(argv_ for argv_ in _flag_args(fv))
    stopping.now_say(f"error: analyze was stopped by {{signal}} while writing; {fv.out} may hold some of "
                     "this run's figures and data files, but not its report.md (written last)")
    try:
        with out_of_memory():  # the differences' bootstrap
            figures = analysis.write_report(runs, fv.out, command, fv.seed)
    except OSError as e:  # each file is written whole or not at all
        cli.fail(errors.write_failed(e, f"--out {fv.out}: cannot write the report", "run the same command again"))
    stopping.now_say(f"analyze was stopped by {{signal}} once its report was written: "
                     f"{os.path.join(fv.out, 'report.md')}", code=0)
    print(f"wrote {os.path.join(fv.out, 'report.md')}, metrics.json, windows.npz and {len(figures)} figures: "
          f"{', '.join(figures)}")


def _flag_args(fv: flags.FlagValues) -> list[str]:
    args = [f"--workdir {w}" for w in fv.workdir] + [f"--checkpoint {fv.checkpoint}"]
    args += [f"--{name} {fv[name].value}" for name in ("data", "windows", "seed", "batch_size")
             if fv[name].value is not None]
    args += [] if fv.ablations else ["--noablations"]
    return args + [f"--out {fv.out}"]


if __name__ == "__main__":
    define_flags()
    cli.run(main)
