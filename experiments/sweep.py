"""Each configuration at its best value of a swept key (the learning rate): `compare --best lr`'s choice.

The rule is Zoology's: every point (model x width x task difficulty) is reported at the learning rate that
does best on validation, so a model is not judged at a rate that suits the other one; a best rate at the
edge of the grid is flagged, since a better one may lie beyond it; seeds at the chosen rate give the
intervals. Here a point is a set of runs whose configs differ in nothing but the key and random_seed.

The score of a rate is its seeds' mean over their last estimates (not each seed's best estimate: the row a
table shows at the chosen rate is then the number that chose it, and a rate whose accuracy peaks and then
falls is not rewarded for its peak). A task run: the highest val token accuracy, ties broken by the lower
val loss, then by the smaller value; a corpus run: the lowest val loss, then the smaller value. A rate with
a seed that diverged (a non-finite number in its metrics.jsonl, or its run.json's error: the trainer stops
at a NaN loss), or with no estimate, is left out, and the table says why.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics

IGNORED = ("random_seed", "workdir")  # keys in which the runs of one configuration differ anyway


@dataclasses.dataclass(frozen=True)
class Rate:
    """One value of the swept key at a point: a group of seeds (its compare label) and its score."""
    label: str
    value: float
    task: bool
    accuracy: float | None  # mean last val token accuracy over the seeds (task runs)
    val_loss: float | None  # mean last val loss over the seeds
    excluded: str | None = None  # why the rate cannot be chosen: "diverged: ...", "no estimate"

    def rank(self) -> tuple:
        """Lowest first: the best rate of a point."""
        if self.task:
            return -self.accuracy, self.val_loss, self.value
        return self.val_loss, self.value

    def score(self) -> str:
        if self.excluded:
            return self.excluded
        return f"{self.accuracy:.3f} ({self.val_loss:.4f})" if self.task else f"{self.val_loss:.4f}"


@dataclasses.dataclass(frozen=True)
class Point:
    """A configuration's rates, in increasing value, and the one chosen (None: every rate was excluded)."""
    members: tuple[str, ...]  # the compare labels of its rates, in the order given
    rates: tuple[Rate, ...]
    best: Rate | None
    edge: str | None  # "lowest" or "highest" of the values tried, "only value tried", or None (inside the grid)

    def scores(self) -> str:
        """"0.001: 0.620 (1.2345); 0.003: 0.910 (0.4321) chosen; 0.01: diverged: ..."."""
        return "; ".join(f"{r.value:g}: {r.score()}" + (" chosen" if r is self.best else "") for r in self.rates)


def value(config: dict, key: str):
    """`config`'s dotted `key` ("lr", "model_config.n_embed"); KeyError when it has none."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _without(config: dict, key: str) -> dict:
    """`config` less the dotted `key` and the IGNORED keys, as a new nested dict."""
    head, _, rest = key.partition(".")
    out = {k: v for k, v in config.items() if k not in IGNORED and not (k == head and not rest)}
    if rest and isinstance(out.get(head), dict):
        out[head] = _without(out[head], rest)
    return out


def points_of(configs: dict[str, dict], key: str) -> list[list[str]]:
    """The compare labels of each configuration: groups whose configs differ only in `key` (and seeds), in the
    order their first group was given."""
    points: dict[str, list[str]] = {}
    for label, config in configs.items():
        points.setdefault(json.dumps(_without(config, key), sort_keys=True), []).append(label)
    return list(points.values())


def problem(workdir: str) -> str | None:
    """Why a seed's run cannot score its rate: its run.json's error (reproduce records the trainer's line, e.g.
    a NaN loss), a non-finite number in its metrics.jsonl, or no estimate; None when it can."""
    try:
        with open(os.path.join(workdir, "run.json"), encoding="utf-8") as f:
            error = json.load(f).get("error")
    except (OSError, ValueError, AttributeError):
        error = None
    if error:
        return f"failed: {error}"
    estimated = False
    try:
        with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill, as rundir.read_metrics skips it
                bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
                if bad:
                    return f"diverged: {bad[0]} {row[bad[0]]} at step {row.get('step')}"
                estimated = estimated or "val_loss" in row
    except OSError:
        pass
    return None if estimated else "no estimate"


def rate(label: str, config: dict, key: str, workdirs: list[str], last: list[dict], task: bool) -> Rate:
    """The rate of a group of seeds: `last`, each seed's last estimate; excluded when a seed has a `problem`."""
    swept = value(config, key)
    problems = [p for p in map(problem, workdirs) if p]
    if not problems and task and any("val_token_accuracy" not in e for e in last):
        problems = ["no val token accuracy in its last estimate"]
    if problems:
        return Rate(label, swept, task, None, None, problems[0] + (f" ({len(problems)} of {len(workdirs)} seeds)"
                                                                     if len(workdirs) > 1 else ""))
    accuracy = statistics.fmean(e["val_token_accuracy"] for e in last) if task else None
    return Rate(label, swept, task, accuracy, statistics.fmean(e["val_loss"] for e in last))


def choose(members: list[str], rates: list[Rate]) -> Point:
    """The point's best rate by `Rate.rank` among those not excluded, and whether it is at the edge of the
    values tried (excluded ones too: a rate above the best that diverged still bounds it from above)."""
    rates = sorted(rates, key=lambda r: r.value)
    usable = [r for r in rates if not r.excluded]
    best = min(usable, key=Rate.rank) if usable else None
    values = sorted({r.value for r in rates})
    edge = None
    if best is not None:
        edge = "only value tried" if len(values) == 1 else "lowest" if best.value == values[0] else \
            "highest" if best.value == values[-1] else None
    return Point(tuple(members), tuple(rates), best, edge)
