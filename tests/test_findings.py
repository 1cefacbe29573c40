"""Every number the README's Findings, its quick start and worked example, experiments/README.md and the
results READMEs quote from a committed file, recomputed from that file and looked for in the text at the
precision quoted: a stale or hand-copied number fails here.

Each check is a fragment of prose with its numbers formatted from the data; the fragment must appear in
the document (whitespace and line breaks aside). The data: results/tiny-2026-12-04 (full_val.csv,
seeds.csv, holm.csv, analysis/metrics.json), results/tasks_cpu-2026-12-04 (results.csv, seeds.csv,
differences.csv, holm.csv) and results/analysis_tiny-2026-12-04/metrics.json."""
import csv
import functools
import json
import math
import os
import re

import pytest

from aed_jax import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "results", "tiny-2026-12-04")
TASKS = os.path.join(ROOT, "results", "tasks_cpu-2026-12-04")
EXAMPLE = os.path.join(ROOT, "results", "analysis_tiny-2026-12-04")
SEEDS = (1337, 1338, 1339)
README, FINDINGS, EXPERIMENTS = "README.md", "README.md#Findings", "experiments/README.md"
TINY_README, ANALYSIS_README = "results/tiny-2026-12-04/README.md", "results/tiny-2026-12-04/analysis/README.md"
TASKS_README = "results/tasks_cpu-2026-12-04/README.md"


def read_csv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def text(name: str) -> str:
    """The document with every run of whitespace one space."""
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return " ".join(f.read().split())


def findings() -> str:
    """The README's "Findings" section alone."""
    doc = text(README)
    return doc[doc.index("## Findings"):doc.index("## Analysing a run")]


def span(values, fmt: str) -> str:
    """"low-high" of values at the format given, one value when both read the same."""
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}-{high}"


def sci(x: float) -> str:
    return f"{x:.1e}".replace("e-0", "e-")


# The tiny suite on the whole val split --------------------------------------------------------------

@functools.lru_cache(None)
def tiny() -> dict:
    ce = {}
    for r in read_csv(os.path.join(TINY, "full_val.csv")):
        ce.setdefault(r["run"], {})[int(r["seed"])] = float(r["full_val_ce"])
    pairs = (("mse_pos_sub", "baseline"), ("mse_pos_sub", "matched_baseline"), ("no_loss_no_pos", "baseline"),
             ("mse_pos_sub", "no_loss_no_pos"))  # full_val.md's four: the Holm family
    intervals = {pair: stats.t_interval(stats.paired(ce[pair[0]], ce[pair[1]])) for pair in pairs}
    holm = dict(zip(pairs, stats.holm([intervals[pair].p for pair in pairs])))
    return {"ce": ce, "summary": {run: stats.summary(list(v.values())) for run, v in ce.items()},
            "d": intervals, "holm": holm}


def ms(run: str) -> str:
    s = tiny()["summary"][run]
    return f"{s.mean:.3f} ± {s.sd:.3f}"


@pytest.mark.fast
def test_tiny_holm_csv_is_what_full_val_csv_gives():
    rows = read_csv(os.path.join(TINY, "holm.csv"))
    assert len(rows) == 4
    for r in rows:
        i, adjusted = tiny()["d"][r["a"], r["b"]], tiny()["holm"][r["a"], r["b"]]
        assert (float(r["mean"]), float(r["ci_low"]), float(r["ci_high"]), float(r["p"]), float(r["p_holm"])) == (
            pytest.approx((i.mean, i.low, i.high, i.p, adjusted), rel=1e-5))


def tiny_checks():
    t = tiny()
    base, plain, matched = (t["d"]["mse_pos_sub", b] for b in ("baseline", "no_loss_no_pos", "matched_baseline"))
    other = t["d"]["no_loss_no_pos", "baseline"]
    h_base, h_plain = t["holm"]["mse_pos_sub", "baseline"], t["holm"]["mse_pos_sub", "no_loss_no_pos"]
    assert h_base >= stats.ALPHA and h_plain >= stats.ALPHA  # the prose below calls both suggestive
    assert base.excludes_zero() and plain.excludes_zero() and not matched.excludes_zero()
    seed_1337 = t["ce"]["mse_pos_sub"][1337]
    mse = t["ce"]["mse_pos_sub"].values()
    suite = {r["run"]: r for r in read_csv(os.path.join(TINY, "results.csv"))}
    last = [float(r["val_loss"]) for r in read_csv(os.path.join(TINY, "seeds.csv")) if r["run"] == "mse_pos_sub"]
    first_last = {int(r["seed"]): float(r["val_loss"]) for r in read_csv(os.path.join(TINY, "seeds.csv"))
                  if r["run"] == "mse_pos_sub"}[1337]
    yield FINDINGS, (f"ends at val CE {ms('mse_pos_sub')}, against {ms('baseline')} for a 4 x 64 baseline (paired "
                   f"difference {base.mean:+.3f}, 95% CI {base.low:.3f} to {base.high:.3f}, p = {base.p:.3f}) and "
                   f"{ms('no_loss_no_pos')} for the same AED without its two additions ({plain.mean:+.3f}, CI "
                   f"{plain.low:.3f} to {plain.high:.3f}, p = {plain.p:.3f})")
    yield FINDINGS, (f"neither does after Holm correction for the four comparisons of `full_val.md` (adjusted p = "
                   f"{h_base:.3f} and {h_plain:.3f}, `holm.csv`)")
    yield FINDINGS, (f"behind by {matched.mean:.3f}, CI {matched.low:.2f} to {matched.high:.2f} "
                   f"(p = {matched.p:.3f})")
    # The quick start, the config and experiments/README.md: seed 1337's final line, the seeds, the val split.
    spread = f"{span(last, '.4f')} over seeds 1337-1339"
    yield README, f"val loss {first_last:.4f}` (seed 1337, the default; {spread}"
    yield README, f"the whole val split gives {span(mse, '.4f')}, `full_val.csv`"
    yield "configs/tiny.py", f"to {first_last:.4f} at seed 1337 ({spread}"
    yield "configs/tiny.py", f"the whole val split {span(mse, '.4f')}: results/tiny-2026-12-04"
    yield EXPERIMENTS, (f"| {first_last:.4f} at seed 1337 (whole val split {seed_1337:.4f}); {span(last, '.4f')} over "
                        f"3 seeds (whole val split {span(mse, '.4f')}) |")
    means = tiny()["summary"]
    yield EXPERIMENTS, (f"whole val split: AED MSE + pos sub {means['mse_pos_sub'].mean:.3f}, no loss no pos "
                        f"{means['no_loss_no_pos'].mean:.3f}, baseline {means['baseline'].mean:.3f}, matched baseline "
                        f"{means['matched_baseline'].mean:.3f} (means)")
    # The folder's own README.
    for label, run in (("AED, MSE + pos sub", "mse_pos_sub"), ("AED, no loss, no pos sub", "no_loss_no_pos"),
                       ("baseline, 4 x 64", "baseline"), ("baseline, 5 x 64 (matched)", "matched_baseline")):
        yield TINY_README, f"| {label} | {ms(run)} |"
    yield TINY_README, (f"behind the 4-block baseline by {base.mean:.3f} (95% CI {base.low:.3f} to {base.high:.3f}, "
                        f"p = {base.p:.3f}) and behind the same AED without its two additions by {plain.mean:.3f} "
                        f"(CI {plain.low:.3f} to {plain.high:.3f}, p = {plain.p:.3f})")
    yield TINY_README, f"neither does (adjusted p = {h_base:.3f} and {h_plain:.3f})"
    yield TINY_README, (f"behind by {matched.mean:.3f}, but that baseline's spread (one seed at "
                        f"{max(t['ce']['matched_baseline'].values()):.2f}) makes the interval {matched.low:.2f} to "
                        f"{matched.high:.2f} (p = {matched.p:.3f})")
    yield TINY_README, (f"{other.mean:+.3f}, CI {other.low:.2f} to {other.high:.2f} (p = {other.p:.3f}), no "
                        "difference shown")
    yield TINY_README, f"**The embedding loss's value** ({float(suite['mse_pos_sub']['embedding_loss']):.0e}".replace(
        "e-0", "e-")


# The tiny suite's analysis: three seeds of each run -------------------------------------------------

@functools.lru_cache(None)
def analysis() -> dict:
    with open(os.path.join(TINY, "analysis", "metrics.json"), encoding="utf-8") as f:
        return json.load(f)["runs"]


def by_seed(run: str, get) -> list[float]:
    return [get(analysis()[f"{run}/seed{seed}"]) for seed in SEEDS]


def ablation(name: str):
    return lambda m: m["ablations"][name]["ce"]["mean"]


def analysis_checks():
    loss = by_seed("mse_pos_sub", lambda m: m["embedding_loss"])
    enc = by_seed("mse_pos_sub", lambda m: m["layer_norms"]["encoder_out_ln"]["scale_abs_mean"])
    emb = by_seed("mse_pos_sub", lambda m: m["layer_norms"]["embeddings_ln"]["scale_abs_mean"])
    reset = by_seed("mse_pos_sub", lambda m: m["ablations"]["unit_ln_scales"]["embedding_loss"]["mean"])
    factor = by_seed("mse_pos_sub", lambda m: m["shrinking_factor"])
    last = {run: by_seed(run, lambda m: m["alignment_by_layer"][-1]) for run in ("mse_pos_sub", "no_loss_no_pos")}
    inputs = by_seed("mse_pos_sub", lambda m: m["alignment_by_layer"][0])
    pos_sub = by_seed("mse_pos_sub", ablation("no_pos_sub"))
    norms = {run: by_seed(run, lambda m: sum(m["positional_norms"]) / len(m["positional_norms"]))
             for run in ("mse_pos_sub", "no_loss_no_pos", "baseline")}
    positions = {run: by_seed(run, ablation("no_input_positions")) for run in ("mse_pos_sub", "no_loss_no_pos", "baseline")}
    ratios = [[positions["mse_pos_sub"][k] / positions[other][k] for other in ("no_loss_no_pos", "baseline")]
              for k in range(3)]
    cross = {run: by_seed(run, ablation("no_cross_attention")) for run in ("mse_pos_sub", "no_loss_no_pos")}
    running = by_seed("mse_pos_sub", ablation("encoder_out_running_mean"))
    assert all(f >= 10 for f in factor)  # the analysis's own rule for "met by shrinking the scales"

    yield FINDINGS, (f"Its final {sci(min(loss))} to {sci(max(loss))} comes with `encoder_out_ln`'s mean |scale| shrunk "
                   f"to {span(enc, '.4f')} and `embeddings_ln`'s to {span(emb, '.3f')} (from 1); reset them to 1 and "
                   f"the loss is {span(reset, '.2f')}, {min(factor):,.0f} to {max(factor):,.0f} times larger")
    yield FINDINGS, (f"cosine with the running mean is {span(last['mse_pos_sub'], '.2f')} "
                   f"({span(last['no_loss_no_pos'], '.2f')} in the AED trained without the loss)")
    yield FINDINGS, f"cross-entropy by {min(pos_sub):+.3f} to {max(pos_sub):+.3f} nats"
    yield FINDINGS, (f"(mean norm {span(norms['mse_pos_sub'], '.2f')} against {span(norms['no_loss_no_pos'], '.2f')} "
                   "without the additions)")
    yield FINDINGS, (f"costs them {span(ratios[0] + ratios[1], '.1f')} times what it costs the other models in seeds 1337 "
                   f"and 1338, but only {span(ratios[2], '.1f')} times in seed 1339")
    yield FINDINGS, f"(removing it costs {span(cross['mse_pos_sub'], '.2f')} nats)"
    yield FINDINGS, f"with the running mean costs {span(running, '.1f')} nats"

    yield ANALYSIS_README, (f"the loss is {sci(min(loss))} to {sci(max(loss))}, with `encoder_out_ln`'s mean |scale| at "
                            f"{span(enc, '.4f')} and `embeddings_ln`'s at {span(emb, '.3f')}")
    yield ANALYSIS_README, (f"the loss is {span(reset, '.2f')}, {min(factor):,.0f} to {max(factor):,.0f} times larger")
    yield ANALYSIS_README, (f"embeddings is {span(last['mse_pos_sub'], '.2f')} ({span(last['no_loss_no_pos'], '.2f')} "
                            f"for the AED trained without the loss, {span(inputs, '.2f')} for the input embeddings")
    yield ANALYSIS_README, f"cross-entropy by {min(pos_sub):+.3f} to {max(pos_sub):+.3f} nats"
    yield ANALYSIS_README, (f"(mean norm {span(norms['mse_pos_sub'], '.2f')} against "
                            f"{span(norms['no_loss_no_pos'], '.2f')} without it, {span(norms['baseline'], '.2f')} in the "
                            "baseline)")
    yield ANALYSIS_README, (f"costs that AED {span(positions['mse_pos_sub'], '.2f')} nats, against "
                            f"{span(positions['no_loss_no_pos'], '.2f')} for the AED without the additions and "
                            f"{span(positions['baseline'], '.2f')} for the baseline: seed by seed "
                            f"{span(ratios[0] + ratios[1], '.1f')} times the others' cost in seeds 1337 and 1338, but "
                            f"only {span(ratios[2], '.1f')} times in seed 1339")
    yield ANALYSIS_README, (f"removing it costs {span(cross['mse_pos_sub'], '.2f')} nats "
                            f"({span(cross['no_loss_no_pos'], '.2f')} without the additions)")
    yield ANALYSIS_README, f"with the running mean costs {span(running, '.1f')} nats"


# The worked example: seed 1337's AED and baseline, 1,000 windows -----------------------------------

def example_checks():
    with open(os.path.join(EXAMPLE, "metrics.json"), encoding="utf-8") as f:
        example = json.load(f)
    aed, base = example["runs"]["tiny"], example["runs"]["tiny_baseline"]
    lns = aed["layer_norms"]
    reset = aed["ablations"]["unit_ln_scales"]["embedding_loss"]["mean"]
    diff = example["differences"]["tiny_baseline"]["mean"]
    att = aed["attention"]
    flat = lambda rows: [v for row in rows for v in row]  # noqa: E731
    uniform_heads = flat(att["encoder self"]["entropy"]) + flat(base["attention"]["self"]["entropy"])
    distances = flat(att["encoder self"]["distance"] + att["decoder self"]["distance"] + att["decoder cross"]["distance"]
                     + base["attention"]["self"]["distance"])
    assert lns["encoder_out_ln"]["bias_abs_mean"] == pytest.approx(lns["embeddings_ln"]["bias_abs_mean"], rel=1e-4)
    yield README, f"The report gives the AED an embedding loss of {sci(aed['embedding_loss'])}"
    yield README, (f"shrunk to a mean |scale| of {lns['encoder_out_ln']['scale_abs_mean']:.4f} and `embeddings_ln`'s "
                   f"to {lns['embeddings_ln']['scale_abs_mean']:.3f}, from 1, with both biases at the same mean |bias| "
                   f"({lns['encoder_out_ln']['bias_abs_mean']:.4f})")
    yield README, f"the loss is {reset:.2f}, {aed['shrinking_factor']:,.0f} times larger"
    yield README, (f"cosine with the running mean is {aed['alignment_by_layer'][-1]:.2f}, lower than the input "
                   f"embeddings' own {aed['alignment_by_layer'][0]:.2f}")
    yield README, (f"After the LayerNorms the cosine reads {aed['alignment_after_ln_by_layer'][-1]:.2f}, but only because "
                   f"both sides share a bias; with the biases taken out it is {aed['alignment_unbiased_by_layer'][-1]:.2f}")
    yield README, (f"costs the AED {aed['ablations']['no_input_positions']['ce']['mean']:.2f} nats and the baseline "
                   f"{base['ablations']['no_input_positions']['ce']['mean']:.2f}")
    mean_norm = lambda m: sum(m["positional_norms"]) / len(m["positional_norms"])  # noqa: E731
    yield README, f"({mean_norm(aed):.2f} against {mean_norm(base):.2f}, `norms.png`)"
    yield README, f"off costs {aed['ablations']['no_pos_sub']['ce']['mean']:.3f} nats"
    yield README, f"cross-attention costs {aed['ablations']['no_cross_attention']['ce']['mean']:.2f} nats"
    yield README, f"track costs {aed['ablations']['encoder_out_running_mean']['ce']['mean']:.1f} nats"
    yield README, (f"the baseline is {-diff['mean']:.3f} nats lower (95% interval over windows {-diff['high']:.3f} to "
                   f"{-diff['low']:.3f})")
    yield README, (f"(entropy {span(uniform_heads, '.1f')} nats against {aed['uniform_attention']['entropy']:.1f} for "
                   f"uniform), the decoder's less so (self-attention {span(flat(att['decoder self']['entropy']), '.1f')} "
                   f"nats, cross-attention {span(flat(att['decoder cross']['entropy']), '.1f')}); every head's mean "
                   f"attended distance is {span(distances, '.1f')} against {aed['uniform_attention']['distance']:.2f}")


# The task suite -----------------------------------------------------------------------------------

@functools.lru_cache(None)
def tasks() -> dict:
    means = {r["run"]: r for r in read_csv(os.path.join(TASKS, "results.csv"))}
    per_seed = read_csv(os.path.join(TASKS, "seeds.csv"))
    diffs = [r for r in read_csv(os.path.join(TASKS, "differences.csv")) if int(r["n"]) >= 2]
    p = [stats.t_test_p(float(r["mean"]), float(r["sd"]), int(r["n"])) for r in diffs]
    for r, p_value, adjusted in zip(diffs, p, stats.holm(p)):
        r["p"], r["p_holm"] = p_value, adjusted
    return {"means": means, "seeds": per_seed, "diffs": diffs}


def task_diff(a: str, b: str, metric: str = "val_token_accuracy") -> dict:
    row, = [r for r in tasks()["diffs"] if (r["a"], r["b"], r["metric"]) == (a, b, metric)]
    return row


@pytest.mark.fast
def test_tasks_holm_csv_is_what_differences_csv_gives():
    rows = read_csv(os.path.join(TASKS, "holm.csv"))
    assert len(rows) == len(tasks()["diffs"]) == 72
    for r, d in zip(rows, tasks()["diffs"]):
        assert (r["a"], r["b"], r["metric"]) == (d["a"], d["b"], d["metric"])
        assert (float(r["p"]), float(r["p_holm"])) == pytest.approx((d["p"], d["p_holm"]), rel=1e-5, abs=1e-9)


def task_checks():
    means, diffs = tasks()["means"], tasks()["diffs"]
    acc = lambda run: float(means[run]["val_token_accuracy"])  # noqa: E731
    sort_runs = [run for run in means if run.startswith("sort_")]
    aeds = [acc(run) for run in sort_runs if not run.endswith("_baseline")]
    baselines = [acc(run) for run in sort_runs if run.endswith("_baseline")]
    aed_vs_base = [d for d in diffs if d["comparison"] == "sort" and d["b"].endswith("_baseline")
                   and d["metric"] == "val_token_accuracy"]
    assert len(aed_vs_base) == 8 and all(d["excludes_zero"] == "True" for d in aed_vs_base)
    shown = [d for d in aed_vs_base if d["p_holm"] < stats.ALPHA]
    assert [d["a"] for d in shown] == ["sort_T64_len8_w32_no_loss_no_pos"]  # "only one does"
    example = task_diff("sort_T64_len8_w32_mse_pos_sub", "sort_T64_len8_w32_baseline")
    w32 = [task_diff(f"sort_T64_len{n}_w32_mse_pos_sub", f"sort_T64_len{n}_w32_no_loss_no_pos") for n in (8, 16)]
    assert all(d["excludes_zero"] == "True" and d["p_holm"] >= stats.ALPHA for d in w32)  # suggestive
    assert not any(d["excludes_zero"] == "True" for d in diffs if d["comparison"] == "mqar")
    assert not any(d["p_holm"] < stats.ALPHA for d in diffs if d["comparison"] == "copy")
    mqar = [acc(run) for run in means if run.startswith("mqar_")]
    pairs = sorted({int(re.search(r"_kv(\d+)_", run).group(1)) for run in means if run.startswith("mqar_")})
    assert max(mqar) < 1 / max(pairs)  # below guessing among the values in context, at both difficulties
    copy_runs = [run for run in means if run.startswith("copy_")]
    ln127 = math.log(127)
    copy_mean = max(abs(float(means[run]["val_loss"]) - ln127) for run in copy_runs)
    copy_seed = max(abs(float(r["val_loss"]) - ln127) for r in tasks()["seeds"] if r["run"].startswith("copy_"))
    copy_acc = span([acc(run) for run in copy_runs], ".3f")
    w32_text = (f"({acc('sort_T64_len8_w32_no_loss_no_pos'):.2f} vs {acc('sort_T64_len8_w32_mse_pos_sub'):.2f}, "
                f"p = {w32[0]['p']:.3f}; {acc('sort_T64_len16_w32_no_loss_no_pos'):.2f} vs "
                f"{acc('sort_T64_len16_w32_mse_pos_sub'):.2f}, p = {w32[1]['p']:.3f})")
    chance = f"(0.25 with {pairs[0]} pairs, 0.125 with {pairs[1]})"
    assert (1 / pairs[0], 1 / pairs[1]) == (0.25, 0.125)

    yield FINDINGS, f"Holm correction over the suite's {len(diffs)} paired differences, `holm.csv`"
    yield FINDINGS, (f"Token accuracy {span(aeds, '.2f')} for both AEDs against {span(baselines, '.2f')} for the baseline")
    spread = [float(d["mean"]) for d in aed_vs_base]
    yield FINDINGS, f"all eight AED-minus-baseline differences are {min(spread):+.2f} to {max(spread):+.2f}"
    yield FINDINGS, (f"(e.g. {float(example['mean']):+.2f}, CI {float(example['ci_low']):.2f} to "
                   f"{float(example['ci_high']):.2f}, at width 32 with 8 numbers)")
    yield FINDINGS, f"8 numbers: {float(shown[0]['mean']):+.2f}, adjusted p = {shown[0]['p_holm']:.3f})"
    yield FINDINGS, w32_text
    yield FINDINGS, f"(adjusted p = {w32[0]['p_holm']:.3f} and {w32[1]['p_holm']:.3f})"
    yield FINDINGS, f"token accuracy {span(mqar, '.2f')}, above the 1/64"
    yield FINDINGS, chance
    yield FINDINGS, (f"within {copy_mean:.3f} of ln 127 = {ln127:.2f}, uniform guessing, one seed's within "
                   f"{copy_seed:.3f}; token accuracy {copy_acc})")
    yield EXPERIMENTS, (f"sort {span(aeds, '.2f')} (AEDs) vs {span(baselines, '.2f')} (baseline); MQAR not learnt "
                        f"({span(mqar, '.2f')}, below")

    yield TASKS_README, f"over the {len(diffs)} paired differences of results.md"
    yield TASKS_README, (f"(token accuracy {span(aeds, '.2f')}) and the decoder-only baseline of the same size much less "
                         f"({span(baselines, '.2f')})")
    yield TASKS_README, (f"excludes zero ({min(spread):+.2f} to {max(spread):+.2f}), but after Holm correction only one "
                         f"does (the AED without the additions, width 32, 8 numbers: adjusted p = "
                         f"{shown[0]['p_holm']:.3f})")
    yield TASKS_README, (f"({acc('sort_T64_len8_w32_no_loss_no_pos'):.2f} vs {acc('sort_T64_len8_w32_mse_pos_sub'):.2f} "
                         f"with 8 numbers, p = {w32[0]['p']:.3f}; {acc('sort_T64_len16_w32_no_loss_no_pos'):.2f} vs "
                         f"{acc('sort_T64_len16_w32_mse_pos_sub'):.2f} with 16, p = {w32[1]['p']:.3f})")
    yield TASKS_README, f"(adjusted p = {w32[0]['p_holm']:.3f} and {w32[1]['p_holm']:.3f})"
    yield TASKS_README, f"Token accuracy {span(mqar, '.2f')} is above the 1/64 = {1 / 64:.3f}"
    yield TASKS_README, chance
    yield TASKS_README, (f"within {copy_mean:.3f} of ln 127 = {ln127:.2f} (one seed's within {copy_seed:.3f})")
    yield TASKS_README, f"every token accuracy is {copy_acc} (chance: 1/127 = {1 / 127:.3f})"
    copy16 = task_diff("copy_T64_len16_w32_mse_pos_sub", "copy_T64_len16_w32_baseline")
    yield TASKS_README, (f"width 32: {float(copy16['mean']):.3f}, CI {float(copy16['ci_low']):.3f} to "
                         f"{float(copy16['ci_high']):.3f}), none after Holm")


# Sort re-tested at each model's best rate (results/tasks_calibrated-2026-12-07) ---------------------------

CALIBRATED = os.path.join(ROOT, "results", "tasks_calibrated-2026-12-07")
CALIBRATED_README = "results/tasks_calibrated-2026-12-07/README.md"
SORT = "sort_T64_len8_w32_"


def calibrated_checks():
    rows = {r["label"].removeprefix(SORT): r for r in read_csv(os.path.join(CALIBRATED, "evaluation", "compare.csv"))}
    diffs = {(r["a"].removeprefix(SORT), r["metric"]): r
             for r in read_csv(os.path.join(CALIBRATED, "evaluation", "compare_differences.csv"))}
    chosen = {r["label"].removeprefix(SORT): float(r["best_value"])
              for r in read_csv(os.path.join(CALIBRATED, "selection", "compare.csv"))}
    edges = [r["edge"] for r in read_csv(os.path.join(CALIBRATED, "selection", "compare.csv"))]
    assert not any(edges)  # "none at the edge of the grid"
    acc = {run: float(r["val_token_accuracy"]) for run, r in rows.items()}
    mse, plain = diffs["mse_pos_sub", "val_token_accuracy"], diffs["no_loss_no_pos", "val_token_accuracy"]
    assert float(mse["p_holm"]) < stats.ALPHA <= float(plain["p_holm"])  # "shown" and "suggestive" below
    steps = {(run, key): rows[run][f"{key}_seeds"].replace(" ", ", ") for run in rows for key in ("steps_to_50",
                                                                                                    "steps_to_99")}
    d99 = diffs["no_loss_no_pos", "steps_to_99"]
    step_rows = [r for (run, metric), r in diffs.items() if metric.startswith("steps_to")]
    assert all(float(r["ci_low"]) <= 0 <= float(r["ci_high"]) or float(r["p_holm"]) >= stats.ALPHA
               for r in step_rows)  # "includes zero, or excludes it before Holm correction only"
    params = {run: int(rows[run]["params"]) for run in rows}
    flops = {run: float(rows[run]["flops_per_token"]) for run in rows}
    assert flops["mse_pos_sub"] == flops["no_loss_no_pos"]

    rate = {run: f"{value:.0e}".replace("e-0", "e-") for run, value in chosen.items()}  # 3e-3, as the text writes it
    yield CALIBRATED_README, (f"Chosen: the baseline {rate['baseline']}, both AEDs {rate['mse_pos_sub']}"
                              if chosen["mse_pos_sub"] == chosen["no_loss_no_pos"] else "both AEDs differ")
    yield CALIBRATED_README, (f"baseline {acc['baseline']:.3f}, AED with MSE loss and pos sub {acc['mse_pos_sub']:.3f}, "
                              f"AED without them {acc['no_loss_no_pos']:.3f}")
    yield CALIBRATED_README, (f"ends {float(mse['mean']):+.3f} ahead of the baseline (95% CI {float(mse['ci_low']):.3f} "
                              f"to {float(mse['ci_high']):.3f}, Holm-adjusted p = {float(mse['p_holm']):.3f}: shown)")
    yield CALIBRATED_README, (f"the AED without the additions {float(plain['mean']):+.3f} (CI "
                              f"{float(plain['ci_low']):.3f} to {float(plain['ci_high']):.3f}, adjusted p = "
                              f"{float(plain['p_holm']):.3f}: suggestive)")
    yield CALIBRATED_README, (f"Steps to 50% accuracy: baseline {steps['baseline', 'steps_to_50']} (seeds 1338-1340), "
                              f"AED with MSE + pos sub {steps['mse_pos_sub', 'steps_to_50']}, AED without "
                              f"{steps['no_loss_no_pos', 'steps_to_50']}; to 99%: baseline "
                              f"{steps['baseline', 'steps_to_99']}, the AEDs {steps['mse_pos_sub', 'steps_to_99']} and "
                              f"{steps['no_loss_no_pos', 'steps_to_99']}")
    yield CALIBRATED_README, (f"{float(d99['mean']):+.0f} steps, CI {float(d99['ci_low']):.0f} to "
                              f"{float(d99['ci_high']):.0f}, adjusted p = {float(d99['p_holm']):.3f}: suggestive")
    yield FINDINGS, (f"Chosen: the baseline {rate['baseline']}, both AEDs {rate['mse_pos_sub']}")
    yield FINDINGS, (f"(final val token accuracy: baseline {acc['baseline']:.3f}, AED with MSE loss and pos sub "
                     f"{acc['mse_pos_sub']:.3f}, AED without them {acc['no_loss_no_pos']:.3f}); the AED with the "
                     f"additions ends {float(mse['mean']):+.3f} ahead of the baseline (95% CI {float(mse['ci_low']):.3f} "
                     f"to {float(mse['ci_high']):.3f}, Holm-adjusted p = {float(mse['p_holm']):.3f}: shown), the one "
                     f"without them {float(plain['mean']):+.3f} (CI {float(plain['ci_low']):.3f} to "
                     f"{float(plain['ci_high']):.3f}, adjusted p = {float(plain['p_holm']):.3f}: suggestive)")
    yield FINDINGS, (f"nearly in training FLOPs per token ({flops['baseline']:,.0f} against "
                     f"{flops['mse_pos_sub']:,.0f})")
    yield CALIBRATED_README, (f"(baseline {params['baseline']:,}, AEDs {params['mse_pos_sub']:,} and "
                              f"{params['no_loss_no_pos']:,}) and nearly in training FLOPs per token "
                              f"({flops['baseline']:,.0f} against {flops['mse_pos_sub']:,.0f})")


# Embedding losses that shrinking cannot meet (results/emb_loss-2026-12-07) ---------------------------------

EMB = os.path.join(ROOT, "results", "emb_loss-2026-12-07")
EMB_README = "results/emb_loss-2026-12-07/README.md"


def emb_checks():
    acc = {r["label"]: float(r["val_token_accuracy"]) for r in read_csv(os.path.join(EMB, "against_no_loss", "compare.csv"))}
    d = {(folder, r["a"]): r for folder in ("against_no_loss", "against_mse")
         for r in read_csv(os.path.join(EMB, folder, "compare_differences.csv")) if r["metric"] == "val_token_accuracy"}
    f = lambda r, key, digits=3: f"{float(r[key]):.{digits}f}"
    cc, nm = d["against_no_loss", "centered_cosine"], d["against_no_loss", "norm_mse"]
    mse, var = d["against_no_loss", "mse_pos_sub"], d["against_no_loss", "mse_var"]
    floor = d["against_mse", "mse_var"]
    assert float(cc["p_holm"]) < stats.ALPHA <= float(nm["p_holm"]) and float(nm["p"]) < stats.ALPHA
    assert not any(float(r["ci_low"]) > 0 or float(r["ci_high"]) < 0 for r in (mse, var, floor))
    analysis_runs = json.load(open(os.path.join(EMB, "analysis", "metrics.json"), encoding="utf-8"))["runs"]
    last = {run.split("/")[0]: m["alignment_by_layer"][-1] for run, m in analysis_runs.items()}
    factor = {run.split("/")[0]: m.get("shrinking_factor") for run, m in analysis_runs.items()}
    coeff = {r["label"]: float(r["val_token_accuracy"]) for r in read_csv(os.path.join(EMB, "coefficient", "compare.csv"))}

    yield EMB_README, (f"no loss, no pos sub {acc['no_loss_no_pos']:.3f}; the seed's MSE {acc['mse_pos_sub']:.3f}; MSE with "
                       f"the variance floor {acc['mse_var']:.3f}; NORM_MSE {acc['norm_mse']:.3f}; CENTERED_COSINE "
                       f"{acc['centered_cosine']:.3f}")
    yield EMB_README, (f"CENTERED_COSINE is {f(cc, 'mean')} (95% CI {f(cc, 'ci_low')} to {f(cc, 'ci_high')}, "
                       f"Holm-adjusted p = {f(cc, 'p_holm')}: shown) and NORM_MSE {f(nm, 'mean')} (CI {f(nm, 'ci_low')} "
                       f"to {f(nm, 'ci_high')}, adjusted p = {f(nm, 'p_holm')}: suggestive); the seed's MSE "
                       f"({f(mse, 'mean')}, CI {f(mse, 'ci_low')} to {f(mse, 'ci_high')}) and the floor ({f(var, 'mean')})")
    yield EMB_README, f"({f(floor, 'mean')}, CI {f(floor, 'ci_low')} to {f(floor, 'ci_high')})"
    yield EMB_README, (f"no loss {last['no_loss_no_pos']:.3f}, the seed's MSE {last['mse_pos_sub']:.3f}, NORM_MSE "
                       f"{last['norm_mse']:.3f}, CENTERED_COSINE {last['centered_cosine']:.3f}")
    yield EMB_README, (f"{factor['norm_mse']:.2f} for NORM_MSE and CENTERED_COSINE (no scale in their path), "
                       f"{factor['mse_var']:.2f} with the floor, {factor['mse_pos_sub']:.2f} for the seed's MSE")
    assert factor["norm_mse"] == factor["centered_cosine"] == 1.0
    yield FINDINGS, (f"NORM_MSE {last['norm_mse']:.3f}, CENTERED_COSINE {last['centered_cosine']:.3f}, against "
                     f"{last['no_loss_no_pos']:.3f} without a loss and {last['mse_pos_sub']:.3f} with the seed's MSE")
    yield FINDINGS, (f"val token accuracy no loss, no pos sub {acc['no_loss_no_pos']:.3f}; the seed's MSE "
                     f"{acc['mse_pos_sub']:.3f}; MSE with the variance floor {acc['mse_var']:.3f}; NORM_MSE "
                     f"{acc['norm_mse']:.3f}; CENTERED_COSINE {acc['centered_cosine']:.3f} (CENTERED_COSINE against no "
                     f"loss: {f(cc, 'mean')}, CI {f(cc, 'ci_low')} to {f(cc, 'ci_high')}, shown after Holm")
    yield FINDINGS, f"(factor {factor['mse_pos_sub']:.2f})"
    at = {r["label"]: float(r["val_token_accuracy"]) for r in read_csv(os.path.join(EMB, "coefficient_eval", "compare.csv"))}
    plus = lambda r: f"{float(r['mean']):+.3f}"
    small = {r["a"]: r for r in read_csv(os.path.join(EMB, "coefficient_eval", "compare_differences.csv"))
             if r["metric"] == "val_token_accuracy"}
    assert all(float(small[run]["ci_low"]) <= 0 <= float(small[run]["ci_high"]) for run in ("norm_mse", "centered_cosine"))
    pair = (f"({plus(small['norm_mse'])}, CI {f(small['norm_mse'], 'ci_low')} to {f(small['norm_mse'], 'ci_high')}"
            f"; {plus(small['centered_cosine'])}, CI {f(small['centered_cosine'], 'ci_low')} to "
            f"{f(small['centered_cosine'], 'ci_high')})")
    yield FINDINGS, (f"NORM_MSE {at['norm_mse']:.3f} and CENTERED_COSINE {at['centered_cosine']:.3f} against "
                     f"{at['no_loss_no_pos']:.3f} {pair}")
    yield EMB_README, (f"NORM_MSE {at['norm_mse']:.3f}, CENTERED_COSINE {at['centered_cosine']:.3f}, no loss "
                       f"{at['no_loss_no_pos']:.3f}; against no loss {plus(small['norm_mse'])} (CI "
                       f"{f(small['norm_mse'], 'ci_low')} to {f(small['norm_mse'], 'ci_high')}) and "
                       f"{plus(small['centered_cosine'])} (CI {f(small['centered_cosine'], 'ci_low')} to "
                       f"{f(small['centered_cosine'], 'ci_high')})")
    tiny_factor = by_seed("mse_pos_sub", lambda m: m["shrinking_factor"])
    yield EMB_README, (f"(factor {factor['mse_pos_sub']:.2f}, where the tiny language models' reached "
                       f"{min(tiny_factor):,.0f}-{max(tiny_factor):,.0f})")
    yield EMB_README, (f"NORM_MSE scores {coeff['norm_mse/lr=3e-3']:.3f} at coefficient 8, "
                       f"{coeff['norm_mse/embedding_loss_coeff=0.1']:.3f} at 0.1 and "
                       f"{coeff['norm_mse/embedding_loss_coeff=0.01']:.3f} at 0.01; CENTERED_COSINE "
                       f"{coeff['centered_cosine/lr=3e-3']:.3f}, {coeff['centered_cosine/embedding_loss_coeff=0.1']:.3f} "
                       f"and {coeff['centered_cosine/embedding_loss_coeff=0.01']:.3f}; no loss "
                       f"{coeff['no_loss_no_pos/lr=3e-3']:.3f}")


# The MQAR anchor (results/mqar_anchor-2026-12-07) -------------------------------------------------------

ANCHOR_README = "results/mqar_anchor-2026-12-07/README.md"


def anchor_checks():
    folder = os.path.join(ROOT, "results", "mqar_anchor-2026-12-07")
    runs = {r["run"]: r for r in read_csv(os.path.join(folder, "runs.csv"))}
    with open(os.path.join(folder, "evaluations.jsonl"), encoding="utf-8") as f:
        evaluated = {e["step"]: e["token_accuracy"] for e in map(json.loads, f)}
    anchor, aed = runs["t64_baseline_lr4.6e-4_b64"], runs["t64_aed_lr4.6e-4_b64"]
    assert evaluated[10000] >= 0.99 and evaluated[10250] >= 0.99 > evaluated[8500]  # "holds"; 8500's estimate only
    others = [r for name, r in runs.items() if name.startswith("t64_") and r["model_type"] == "baseline" and r is not anchor]
    assert max(float(r["best_accuracy"]) for r in others) < 0.30  # "stayed below 0.30"
    assert {float(r["lr"]) for r in others} >= {1e-3, 1e-2} and min(float(r["lr"]) for r in others) == 1e-3
    t16_1e3 = [runs[name] for name in ("t16_baseline_lr1e-3", "t16_baseline_lr1e-3_seed1")]
    assert all(float(r["last_accuracy"]) == 1.0 for r in t16_1e3)
    done = sorted(int(r["steps_to_99"]) for r in t16_1e3)
    t16_3e3 = [float(runs[name]["best_accuracy"]) for name in ("t16_baseline_lr3e-3", "t16_baseline_lr3e-3_seed1",
                                                                "t16_baseline_1head_lr3e-3")]
    yield ANCHOR_README, (f"its estimates first reach 50% at step {anchor['steps_to_50']}, 90% at step "
                          f"{anchor['steps_to_90']} and 99% at step {anchor['steps_to_99']}")
    yield ANCHOR_README, f"that checkpoint scores {evaluated[int(anchor['steps_to_99'])]:.3f}"
    yield ANCHOR_README, (f"the run ended at step {anchor['last_step']} (estimate {float(anchor['last_accuracy']):.3f}), "
                          f"and its checkpoints at steps 10000 and 10250 score {evaluated[10000]:.3f} and "
                          f"{evaluated[10250]:.3f}")
    yield ANCHOR_README, (f"(100% by step {done[0]}-{done[-1]}, two seeds) and stalls at 2e-3 "
                          f"({float(runs['t16_baseline_lr2e-3']['best_accuracy']):.2f}) and 3e-3 ({span(t16_3e3, '.2f')}")
    yield ANCHOR_README, f"at 4.6e-4 was at {float(aed['last_accuracy']):.2f} after {aed['last_step']} steps"
    yield FINDINGS, (f"its estimates reach 50% at step {anchor['steps_to_50']}, 90% at step {anchor['steps_to_90']} and "
                     f"99% at step {anchor['steps_to_99']}; on 50 fresh batches its checkpoint at step 10000 scores "
                     f"{evaluated[10000]:.3f}")


CHECKS = [*tiny_checks(), *analysis_checks(), *example_checks(), *task_checks(), *calibrated_checks(), *emb_checks(),
          *anchor_checks()]


@pytest.mark.fast
@pytest.mark.parametrize("document,fragment", CHECKS, ids=[f"{d}:{f[:40]}" for d, f in CHECKS])
def test_quoted_number_is_its_file(document, fragment):
    doc = findings() if document == FINDINGS else text(document)
    if fragment not in doc:
        words = re.split(r"[-+(]?\d", fragment, maxsplit=1)[0].strip()[-30:]  # the prose before the first number
        at = doc.find(words) if words else -1
        pytest.fail(f"{document}: expected {fragment!r}; the text there reads {doc[at:at + len(fragment) + 20]!r}"
                    if at >= 0 else f"{document}: expected {fragment!r}, and its words are not there either")
