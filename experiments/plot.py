"""`python -m experiments.plot --out DIR [--suite seed|smoke]`: loss curves of a reproduction's runs as PNGs.

One figure per comparison of the seed's README (embedding-loss types; pos sub; both together; AED
against the baselines): eval-mode train and val loss of each estimate against the step (for long
runs the y axis starts at a quarter of the run, so that the final differences show), plus the
training embedding loss (log scale when it spans orders of magnitude) when a run in the comparison
has one. The legend sits below the panels, never over the curves. `experiments.reproduce` calls
`plot_comparisons` after training; notebooks call `plot_runs` for any set of workdirs.
"""
from __future__ import annotations

import json
import os

from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import matplotlib.ticker  # noqa: E402

from aed_jax import cli  # noqa: E402


def read_metrics(workdir: str) -> tuple[list[dict], list[dict]]:
    """(training lines, estimate lines) of `<workdir>/metrics.jsonl`, each sorted by step.

    A resumed run may log a step twice (a kill between a log line and the next checkpoint); the
    last line of a step wins. A missing file gives two empty lists.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    train, estimates = {}, {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if "val_loss" in row:
                    estimates[row["step"]] = row
                elif "ce" in row:
                    train[row["step"]] = row
    return [train[s] for s in sorted(train)], [estimates[s] for s in sorted(estimates)]


def plot_runs(runs: dict[str, str], path: str, title: str = "", seed_points: dict[str, dict] | None = None
              ) -> str | None:
    """Writes the figure of `runs` ({legend label: workdir}) to `path`; returns it, or None if no run has data.

    seed_points: {label: {"step", "train_loss", "val_loss"}}, the seed's published final values,
    drawn as crosses in the run's colour (only meaningful when the runs follow the seed's recipe).
    """
    curves = {label: read_metrics(workdir) for label, workdir in runs.items()}
    curves = {label: (train, est) for label, (train, est) in curves.items() if train or est}
    if not curves:
        return None
    embedding = {label: train for label, (train, _) in curves.items() if any(r.get("embedding_loss") for r in train)}
    panels = [("train_loss", "train loss"), ("val_loss", "val loss")] + ([("embedding_loss", "embedding loss")]
                                                                         if embedding else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), layout="constrained", squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (key, name), ax in zip(panels, axes[0]):
        for i, (label, (train, est)) in enumerate(curves.items()):
            rows = embedding.get(label, []) if key == "embedding_loss" else est
            rows = [r for r in rows if key in r and (key != "embedding_loss" or r[key] > 0)]
            if not rows:
                continue
            style = dict(color=colors[i % len(colors)], label=label, linewidth=1.5)
            if len(rows) < 30:
                style.update(marker="o", markersize=3)
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], **style)
            seed = (seed_points or {}).get(label)
            if seed and seed.get(key) is not None:
                ax.plot([seed["step"]], [seed[key]], linestyle="none", marker="x", markersize=9, markeredgewidth=2,
                        color=style["color"], label="_seed")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("embedding loss (training)" if key == "embedding_loss" else "cross-entropy (eval mode)")
        points = [(x, y) for line in ax.get_lines() for x, y in zip(line.get_xdata(), line.get_ydata())]
        values = [y for _, y in points]
        if key == "embedding_loss" and min(values) > 0 and max(values) / min(values) > 30:
            ax.set_yscale("log")  # the seed's embedding losses fall by orders of magnitude
        elif key != "embedding_loss" and len(points) > 8 * len(ax.get_lines()):
            _zoom(ax, points)
        ax.grid(alpha=0.3)
    legend = {}  # a run with no estimate yet still has its embedding-loss curve
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    if seed_points:
        handles.append(plt.Line2D([], [], linestyle="none", marker="x", markersize=9, markeredgewidth=2, color="black"))
        labels.append("seed's published final value")
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 2), frameon=False)
    if title:
        fig.suptitle(title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _zoom(ax, points: list[tuple[float, float]]) -> None:
    """Clips the steep first quarter of long loss curves, so that the runs' differences at the end show."""
    last_step = max(x for x, _ in points)
    low, high = min(y for _, y in points), max(y for x, y in points if x >= last_step / 4)
    margin = 0.05 * (high - low) or 0.01
    ax.set_ylim(low - margin, high + margin)


def plot_comparisons(out: str, comparisons, labels: dict[str, str], scale_note: str = "",
                     seed_points: dict[str, dict] | None = None) -> list[str]:
    """One `<out>/<comparison>.png` per comparison with at least one run that has metrics; the written paths.

    comparisons: objects with .name, .title and .runs (run names, each a folder of `out`);
    labels: run name -> legend label; seed_points: run name -> the seed's final values (see plot_runs).
    """
    written = []
    for comparison in comparisons:
        runs = {labels[name]: os.path.join(out, name) for name in comparison.runs}
        points = {labels[name]: seed_points[name] for name in comparison.runs if seed_points and name in seed_points}
        title = comparison.title + (f" ({scale_note})" if scale_note else "")
        path = plot_runs(runs, os.path.join(out, f"{comparison.name}.png"), title, points or None)
        if path:
            written.append(path)
    return written


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_enum("suite", "seed", ["seed", "smoke"], "Which suite's comparisons to draw.", flag_values=fv)
    flags.DEFINE_string("out", None, "The reproduction's folder (one workdir per run); default: the suite's "
                        "default --out of experiments.reproduce at full scale.", flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    from experiments import reproduce  # the suites' runs and comparisons live there

    cli.no_extra_args(argv)
    suite = reproduce.SUITES[fv.suite]
    out = fv.out or reproduce.default_out(fv.suite, "full")
    if not os.path.isdir(out):
        cli.fail(f"--out: no such folder {out!r}")
    for path in plot_comparisons(out, suite.comparisons, {r.name: r.label for r in suite.runs}):
        print(path)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
