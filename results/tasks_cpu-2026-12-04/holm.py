"""holm.csv: differences.csv's paired differences with the t-test p-value and its Holm adjustment, which the
suite's tables were written without (experiments/runner.py now writes both columns itself).

The family is what the runner's is: every paired difference of the one results.md (36 comparisons, token
and sequence accuracy each: 72) with two seeds or more. The p-value needs only the mean, sd and n that
differences.csv holds (aed_jax/stats.py's t_test_p); differences.csv itself is left as it was written. Run
from the repository root:

    python results/tasks_cpu-2026-12-04/holm.py results/tasks_cpu-2026-12-04
"""
import csv
import os
import sys

sys.path.insert(0, os.getcwd())
from aed_jax import stats  # noqa: E402

COLUMNS = ("comparison", "a", "b", "metric", "n", "mean", "sd", "ci_low", "ci_high", "excludes_zero", "p", "p_holm")


def main(folder: str) -> None:
    with open(os.path.join(folder, "differences.csv"), encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if int(r["n"]) >= 2]
    p = [stats.t_test_p(float(r["mean"]), float(r["sd"]), int(r["n"])) for r in rows]
    with open(os.path.join(folder, "holm.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r, p_value, adjusted in zip(rows, p, stats.holm(p)):
            writer.writerow([r[k] for k in COLUMNS[:-2]] + [f"{p_value:.6g}", f"{adjusted:.6g}"])


if __name__ == "__main__":
    main(*sys.argv[1:])
