"""The tiny suite's runs on the whole val split: `evaluate --full` of every run and seed, then each run's
mean and sd and the paired differences with their 95% t-intervals, p-values and Holm-adjusted p-values over
these four differences (aed_jax/stats.py).

The suite's own table (results.md) reports the last in-training estimate, 10 random batches of 8 x 64
tokens (5,120); this evaluates every non-overlapping window of the val split (106k tokens), so the
difference between runs is not the estimate's sampling noise. Run from the repository root, after
`python -m experiments.reproduce --suite tiny --seeds 3`:

    python results/tiny-2026-12-04/full_val.py runs/tiny results/tiny-2026-12-04

writes full_val.csv (each run and seed), then full_val.md and holm.csv from it. `--tables` rewrites the last
two from the committed full_val.csv alone, with no runs (how the p-values and the Holm column were added
after the evaluation):

    python results/tiny-2026-12-04/full_val.py --tables results/tiny-2026-12-04
"""
import csv
import json
import os
import subprocess
import sys

sys.path.insert(0, os.getcwd())
from aed_jax import stats  # noqa: E402

RUNS = ("mse_pos_sub", "no_loss_no_pos", "baseline", "matched_baseline")
PAIRS = (("mse_pos_sub", "baseline"), ("mse_pos_sub", "matched_baseline"), ("no_loss_no_pos", "baseline"),
         ("mse_pos_sub", "no_loss_no_pos"))
SEEDS = (1337, 1338, 1339)


def main(runs_dir: str, out: str) -> None:
    ce = {run: {} for run in RUNS}
    for run in RUNS:
        for seed in SEEDS:
            workdir = os.path.join(runs_dir, run, f"seed{seed}")
            result = subprocess.run([sys.executable, "-m", "aed_jax.evaluate", "--workdir", workdir, "--full", "--json"],
                                    capture_output=True, text=True, check=True)
            ce[run][seed] = json.loads(result.stdout.strip().splitlines()[-1])["ce_loss"]
            print(f"{run} seed {seed}: {ce[run][seed]:.4f}", flush=True)
    with open(os.path.join(out, "full_val.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "seed", "full_val_ce"])
        for run in RUNS:
            for seed in SEEDS:
                writer.writerow([run, seed, f"{ce[run][seed]:.6f}"])
    tables(out)


def tables(out: str) -> None:
    """full_val.md and holm.csv from full_val.csv. The Holm family is the four differences of full_val.md."""
    ce = {run: {} for run in RUNS}
    with open(os.path.join(out, "full_val.csv"), encoding="utf-8") as f:
        for r in csv.DictReader(f):
            ce[r["run"]][int(r["seed"])] = float(r["full_val_ce"])
    intervals = [stats.t_interval(stats.paired(ce[a], ce[b])) for a, b in PAIRS]
    adjusted = stats.holm([i.p for i in intervals])
    with open(os.path.join(out, "holm.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "metric", "n", "mean", "sd", "ci_low", "ci_high", "p", "p_holm"])
        for (a, b), i, p_holm in zip(PAIRS, intervals, adjusted):
            writer.writerow([a, b, "full_val_ce", i.n]
                            + [f"{v:.6g}" for v in (i.mean, i.sd, i.low, i.high, i.p, p_holm)])
    lines = ["# Tiny suite: cross-entropy on the whole val split", "",
             "`evaluate --full` (every window of wiki_vital's val split, 106k tokens) of each run's last "
             "checkpoint (step 1,200); mean ± sd over seeds 1337, 1338, 1339.", "",
             "| run | " + " | ".join(f"seed {s}" for s in SEEDS) + " | mean ± sd |", "|---|---|---|---|---|"]
    for run in RUNS:
        s = stats.summary(list(ce[run].values()))
        lines.append(f"| `{run}` | " + " | ".join(f"{ce[run][seed]:.4f}" for seed in SEEDS)
                     + f" | {s.mean:.4f} ± {s.sd:.4f} |")
    lines += ["", "Paired differences (run a minus run b, seed by seed; p: the paired t-test, Holm-adjusted over "
              "these four: holm.csv):", ""]
    for (a, b), i, p_holm in zip(PAIRS, intervals, adjusted):
        lines.append("- " + stats.sentence(a, b, i, "val CE", 4, p_holm=p_holm, family=len(PAIRS)))
    with open(os.path.join(out, "full_val.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1] == "--tables":
        tables(sys.argv[2])
    else:
        main(*sys.argv[1:])
