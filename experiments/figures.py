"""A reproduction's figures as PNGs: what `python -m experiments.plot` and `experiments.reproduce` draw.

One figure per comparison of the suite. For the language-model suites (the seed's README's
comparisons: embedding-loss types; pos sub; both together; AED against the baselines): eval-mode
train and val loss of each estimate against the step (for long runs the y axis starts at a quarter
of the run, so that the final differences show), plus the training embedding loss (log scale when
it spans orders of magnitude) when a run in the comparison has one. For the task suite: each
task's last val token and sequence accuracy against the model width, one line per model, one
panel per difficulty. A run trained with several seeds is drawn as the mean over its seeds with a
band from the lowest to the highest seed (the legend says so). The legend sits below the panels,
never over the curves. `experiments.reproduce` calls `plot_comparisons` after training; notebooks
call `plot_runs` for any set of workdirs.
"""
from __future__ import annotations

import glob
import os

from aed_jax import plotting
from aed_jax import rundir
from experiments import suites

plt = plotting.pyplot()
import matplotlib.patches  # noqa: E402  (once plotting has set matplotlib up)
import matplotlib.ticker  # noqa: E402

BAND = "band: lowest to highest seed"  # the legend's words for the band around a mean over seeds


def plot_runs(runs: dict[str, str | list[str]], path: str, title: str = "", seed_points: dict[str, dict] | None = None
              ) -> str | None:
    """Writes the figure of `runs` ({legend label: workdir, or its workdirs one per seed}) to `path`; returns
    it, or None if no run has data. Several workdirs: their mean at the steps they all logged, in a band
    from the lowest to the highest.

    seed_points: {label: {"step", "train_loss", "val_loss"}}, the seed's published final values,
    drawn as crosses in the run's colour (only meaningful when the runs follow the seed's recipe).
    """
    curves = {}
    for label, workdirs in runs.items():
        metrics = [rundir.read_metrics(w) for w in ([workdirs] if isinstance(workdirs, str) else workdirs)]
        metrics = [(train, est) for train, est in metrics if train or est]
        if metrics:
            curves[label] = metrics
    if not curves:
        return None
    has_embedding = {label for label, metrics in curves.items()
                     if any(r.get("embedding_loss") for train, _ in metrics for r in train)}
    panels = [("train_loss", "train loss"), ("val_loss", "val loss")] + ([("embedding_loss", "embedding loss")]
                                                                         if has_embedding else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), layout="constrained", squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    banded = False
    for (key, name), ax in zip(panels, axes[0]):
        for i, (label, metrics) in enumerate(curves.items()):
            if key == "embedding_loss" and label not in has_embedding:
                continue
            per_seed = [[r for r in (train if key == "embedding_loss" else est)
                         if key in r and (key != "embedding_loss" or r[key] > 0)] for train, est in metrics]
            per_seed = [rows for rows in per_seed if rows]
            steps, mean, low, high = _mean_over_seeds(per_seed, key)
            if not steps:
                continue
            n = len(per_seed)
            style = dict(color=colors[i % len(colors)], label=label + (f" (mean of {n} seeds)" if n > 1 else ""),
                         linewidth=1.5)
            if len(steps) < 30:
                style.update(marker="o", markersize=3)
            ax.plot(steps, mean, **style)
            if n > 1:
                ax.fill_between(steps, low, high, color=style["color"], alpha=0.2, linewidth=0)
                banded = True
            seed = (seed_points or {}).get(label)
            if seed and seed.get(key) is not None:
                ax.plot([seed["step"]], [seed[key]], linestyle="none", marker="x", markersize=9, markeredgewidth=2,
                        color=style["color"], label="_seed")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("embedding loss (training, before × coeff)" if key == "embedding_loss"
                      else "cross-entropy (eval mode)")
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
    _legend_and_save(fig, handles, labels, banded, title, path)
    return path


def plot_compare(groups: dict[str, list[str]], path: str, chance: float | None = None, smooth: int = 10,
                 title: str = "") -> str | None:
    """Writes the figure of any runs to `path`: {legend label: its workdirs, one per seed}. Panels: the
    training cross-entropy logged every log_interval steps (without the AED's embedding loss, so models
    compare; a moving mean over `smooth` logged points, so the
    noise of single batches does not hide the trend), the val loss at each estimate, and for task runs
    the val token accuracy with `chance` drawn as a dashed line. Several seeds: their mean in a band
    from the lowest to the highest. None if no run has logged anything."""
    curves = {label: [m for m in (rundir.read_metrics(w) for w in workdirs) if m[0] or m[1]]
              for label, workdirs in groups.items()}
    curves = {label: metrics for label, metrics in curves.items() if metrics}
    if not curves:
        return None
    accuracy = any("val_token_accuracy" in r for metrics in curves.values() for _, est in metrics for r in est)
    panels = [("ce", "training cross-entropy", "train"), ("val_loss", "val loss", "est")] + (
        [("val_token_accuracy", "val token accuracy", "est")] if accuracy else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), layout="constrained", squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    banded = False
    for (key, name, source), ax in zip(panels, axes[0]):
        for i, (label, metrics) in enumerate(curves.items()):
            per_seed = [[r for r in (train if source == "train" else est) if key in r] for train, est in metrics]
            per_seed = [_smoothed(rows, key, smooth) if source == "train" else rows for rows in per_seed if rows]
            steps, mean, low, high = _mean_over_seeds(per_seed, key)
            if not steps:
                continue
            style = dict(color=colors[i % len(colors)], linewidth=1.5,
                         label=label + (f" (mean of {len(per_seed)} seeds)" if len(per_seed) > 1 else ""))
            if len(steps) < 30:
                style.update(marker="o", markersize=3)
            ax.plot(steps, mean, **style)
            if len(per_seed) > 1:
                ax.fill_between(steps, low, high, color=style["color"], alpha=0.2, linewidth=0)
                banded = True
        if key == "val_token_accuracy" and chance is not None:
            ax.axhline(chance, color="black", linestyle="--", linewidth=1, label=f"chance ({chance:.3g})")
            ax.set_ylim(0, 1.02)
        ax.set_title(name + (f" (moving mean of {smooth} logged steps)" if source == "train" and smooth > 1 else ""),
                     fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("fraction of answer tokens right" if key == "val_token_accuracy" else "cross-entropy")
        ax.grid(alpha=0.3)
    legend = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    _legend_and_save(fig, list(legend.values()), list(legend), banded, title, path)
    return path


def _smoothed(rows: list[dict], key: str, window: int) -> list[dict]:
    """`rows` with `key` replaced by the mean of it over the last `window` rows (fewer at the start)."""
    values = [r[key] for r in rows]
    return [{"step": r["step"], key: sum(values[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))}
            for i, r in enumerate(rows)]


def _mean_over_seeds(per_seed: list[list[dict]], key: str) -> tuple[list, list, list, list]:
    """(steps, mean, lowest, highest) of `key` over the seeds' rows, at the steps every seed has."""
    by_seed = [{r["step"]: r[key] for r in rows} for rows in per_seed]
    steps = sorted(set.intersection(*(set(values) for values in by_seed))) if by_seed else []
    columns = [[values[step] for values in by_seed] for step in steps]
    return steps, [sum(c) / len(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns]


def _legend_and_save(fig, handles: list, labels: list[str], banded: bool, title: str, path: str) -> None:
    """The legend below the panels (plus what a band means, when one is drawn), the title, the PNG."""
    if banded:
        handles.append(matplotlib.patches.Patch(color="black", alpha=0.2, linewidth=0))
        labels.append(BAND)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 2), frameon=False)
    if title:
        fig.suptitle(title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with rundir.atomic_file(path, "wb") as f:  # a full disk leaves the old figure, not half of a new one
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def plot_sweep(points: dict[str, dict[str, dict[int, list[str]]]], path: str, title: str = "",
               metrics: tuple[str, ...] = suites.TASK_METRICS) -> str | None:
    """Writes a figure of the last estimate of each of `metrics` (one row each) against the model width, one
    panel per difficulty and one line per model: points = {panel: {line: {width: [workdirs, one per
    seed]}}}. Several seeds: their mean, in a band from the lowest to the highest. Returns `path`, or
    None if no run has an estimate."""
    last = {w: est[-1] for lines in points.values() for widths in lines.values() for dirs in widths.values()
            for w in dirs for _, est in [rundir.read_metrics(w)] if est}
    if not last:
        return None
    fig, axes = plt.subplots(len(metrics), len(points), figsize=(max(4.6 * len(points), 7), 3.6 * len(metrics)),
                             layout="constrained", squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    banded = False
    for row, key in enumerate(metrics):
        for col, (panel, lines) in enumerate(points.items()):
            ax = axes[row][col]
            for i, (line, widths) in enumerate(lines.items()):
                seeds = {width: [last[w][key] for w in widths[width] if key in last.get(w, {})] for width in widths}
                xs = sorted(width for width, got in seeds.items() if got)
                if not xs:
                    continue
                n = max(len(seeds[x]) for x in xs)
                ax.plot(xs, [sum(seeds[x]) / len(seeds[x]) for x in xs], color=colors[i % len(colors)], marker="o",
                        markersize=4, linewidth=1.5, label=line + (f" (mean of {n} seeds)" if n > 1 else ""))
                if n > 1:
                    ax.fill_between(xs, [min(seeds[x]) for x in xs], [max(seeds[x]) for x in xs],
                                    color=colors[i % len(colors)], alpha=0.2, linewidth=0)
                    banded = True
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(
                sorted({w for widths in lines.values() for w in widths})))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(panel if row == 0 else "")
            ax.set_xlabel("model width (the AED's n_embed)")
            ax.set_ylabel(suites.METRIC_NAMES[key])
            ax.grid(alpha=0.3)
    legend = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    _legend_and_save(fig, list(legend.values()), list(legend), banded, title, path)
    return path


def _zoom(ax, points: list[tuple[float, float]]) -> None:
    """Clips the steep first quarter of long loss curves, so that the runs' differences at the end show."""
    last_step = max(x for x, _ in points)
    low, high = min(y for _, y in points), max(y for x, y in points if x >= last_step / 4)
    margin = 0.05 * (high - low) or 0.01
    ax.set_ylim(low - margin, high + margin)


def plot_comparisons(out: str, suite: suites.Suite, workdirs: dict[str, list[str]], scale_note: str = "",
                     seed_points: dict[str, dict] | None = None) -> list[str]:
    """One `<out>/<comparison>.png` per comparison of `suite` with at least one run that has metrics; the
    written paths. A comparison of task runs (each with a Point) is drawn against width (plot_sweep),
    any other as curves against the step (plot_runs).

    workdirs: run name -> its workdirs, one per seed; seed_points: run name -> the seed's final values (see
    plot_runs).
    """
    runs, written = {run.name: run for run in suite.runs}, []
    for comparison in suite.comparisons:
        title = comparison.title + (f" ({scale_note})" if scale_note else "")
        path = os.path.join(out, f"{comparison.name}.png")
        members = [runs[name] for name in comparison.runs]
        if all(run.point for run in members):
            points = {}
            for run in members:
                points.setdefault(run.point.panel, {}).setdefault(run.point.line, {})[run.point.width] = \
                    workdirs[run.name]
            path = plot_sweep(points, path, title, suite.metrics)
        else:
            labels = {run.name: run.label for run in members}
            path = plot_runs({labels[name]: workdirs[name] for name in comparison.runs}, path, title,
                             {labels[name]: seed_points[name] for name in comparison.runs
                              if seed_points and name in seed_points} or None)
        if path:
            written.append(path)
    return written


def seed_workdirs(out: str, run: str) -> list[str]:
    """A run's workdirs as `experiments.reproduce` left them: `<out>/<run>/seed<k>` for each seed it was
    trained with (--seeds), else `<out>/<run>` itself."""
    found = {}
    for path in glob.glob(os.path.join(glob.escape(out), glob.escape(run), "seed*")):
        seed = os.path.basename(path)[len("seed"):]
        if seed.isdigit():
            found[int(seed)] = path
    return [found[seed] for seed in sorted(found)] or [os.path.join(out, run)]
