"""The tiny suite's runs on the whole val split: `evaluate --full` of every run and seed, then each run's
mean and sd and the paired differences with their 95% t-intervals (aed_jax/stats.py).

The suite's own table (results.md) reports the last in-training estimate, 10 random batches of 8 x 64
tokens (5,120); this evaluates every non-overlapping window of the val split (106k tokens), so the
difference between runs is not the estimate's sampling noise. Run from the repository root, after
`python -m experiments.reproduce --suite tiny --seeds 3`:

    python results/tiny-2026-12-04/full_val.py runs/tiny results/tiny-2026-12-04
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
    lines = ["# Tiny suite: cross-entropy on the whole val split", "",
             "`evaluate --full` (every window of wiki_vital's val split, 106k tokens) of each run's last "
             "checkpoint (step 1,200); mean ± sd over seeds 1337, 1338, 1339.", "",
             "| run | " + " | ".join(f"seed {s}" for s in SEEDS) + " | mean ± sd |", "|---|---|---|---|---|"]
    for run in RUNS:
        s = stats.summary(list(ce[run].values()))
        lines.append(f"| `{run}` | " + " | ".join(f"{ce[run][seed]:.4f}" for seed in SEEDS)
                     + f" | {s.mean:.4f} ± {s.sd:.4f} |")
    lines += ["", "Paired differences (run a minus run b, seed by seed):", ""]
    for a, b in PAIRS:
        lines.append("- " + stats.sentence(a, b, stats.t_interval(stats.paired(ce[a], ce[b])), "val CE", 4))
    with open(os.path.join(out, "full_val.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
