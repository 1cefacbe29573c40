"""`python -m experiments.plot --out DIR [--suite NAME] [--scale SCALE]`: a reproduction's figures as PNGs.

One figure per comparison of the suite, as `experiments.reproduce` draws them after training; what
each shows: `experiments/figures.py`.
"""
from __future__ import annotations

if __name__ == "__main__":  # a signal, from the first line on: one line, exit 1
    from aed_jax import stopping
    stopping.exit_on_signals("error: plot was stopped by {signal}; "
                             "each figure is written whole or not at all: run it again for the rest")

# Only what the flags need: matplotlib, jax and the libraries on it load in `main`, once the flags are
# parsed, so --help and a bad flag answer in a fraction of a second.
import os

from absl import flags

from aed_jax import cli
from experiments import suites


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_enum("suite", "seed", list(suites.SCALES), "Which suite's comparisons to draw.", flag_values=fv)
    flags.DEFINE_string("scale", None, "The suite's scale, as given to experiments.reproduce (default: its "
                        "first, e.g. full; the task suite's runs differ by scale).", flag_values=fv)
    flags.DEFINE_string("out", None, "The reproduction's folder (one workdir per run, or per run and seed); "
                        "default: the suite's default --out of experiments.reproduce at that scale.", flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    scale = suites.pick_scale(fv.suite, fv.scale)
    suite = suites.get(fv.suite, scale)
    out = fv.out or suites.default_out(fv.suite, scale)
    if not os.path.isdir(out):
        cli.fail(f"--out: no such folder {out!r}")
    from experiments import figures
    paths = figures.plot_comparisons(out, suite, {run.name: figures.seed_workdirs(out, run.name) for run in suite.runs})
    if not paths:
        cli.fail(f"--out {out}: no run of --suite {fv.suite} has logged anything there; any runs compare with "
                 "python -m experiments.compare --workdir A --workdir B ...")
    for path in paths:
        print(path)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
