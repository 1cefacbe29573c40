"""The analysis report: every number against a direct numpy computation on a tiny model, the whole
report for two freshly trained tiny runs, one-line errors."""
import json
import math
import os
import re
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import matplotlib.pyplot
import numpy as np
import pytest
from absl import flags

from aed_jax import ablations
from aed_jax import analysis
from aed_jax import analyze
from aed_jax import api
from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import data as data_lib
from aed_jax import errors
from aed_jax import model as model_lib
from aed_jax import stats
from aed_jax import tasks
from aed_jax import train

T, V = 8, 97
WINDOWS = 10
LOSS = dict(embedding_loss_type="MSE", embedding_loss_coeff=2.0, detach_type="ENCODER_OUT",
            embedding_ln_type="INIT", use_ln_on_encoder_out=True, sub_pos_embed_to_decoder="YES_NO_LN")


def tiny_config(model_type, **model):
    config = config_lib.base_config(model_type)
    config.model_config.update(dict(n_embed=16, n_head=2, n_layer=2, context_size=T, alphabet_size=V, **model))
    config.batch_size = 4
    return config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    rng.integers(0, V, T * 6 + 3).astype(np.uint16).tofile(folder / "val.bin")
    rng.integers(0, 20, 300).astype(np.uint16).tofile(folder / "train.bin")  # frequencies: only ids < 20
    return str(folder)


MODELS = {"aed": ("aed", LOSS), "baseline": ("baseline", {}),
          "aed_rope": ("aed", dict(LOSS, position_embedding_type="ROPE"))}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """{name: (workdir, params, config)}: a saved tiny model of each kind, its matrices scaled up so that
    attention is far from uniform, and its embedding-loss LayerNorms shrunk and shifted (scales 0.02-0.3,
    biases about 0.1) as training leaves them."""
    out = {}
    for name, (model_type, options) in MODELS.items():
        config = tiny_config(model_type, **options)
        model = model_lib.make_model(model_lib.ModelConfig.from_config(config))
        params = model_lib.init_params(model, jax.random.key(0))
        sharp = ("batch_attn_weights", "q_weights", "k_v_weights")
        params = jax.tree_util.tree_map_with_path(
            lambda path, p: p * (20.0 if path[-2].key in sharp else 4.0) if p.ndim == 2 else p, params)
        rng = np.random.default_rng(5)
        for ln in ("encoder_out_ln", "embeddings_ln"):
            if ln in params:
                params[ln] = {"scale": jnp.asarray(rng.uniform(0.02, 0.3, 16), jnp.float32),
                              "bias": jnp.asarray(rng.normal(0.1, 0.05, 16), jnp.float32)}
        workdir = str(tmp_path_factory.mktemp(name))
        api.save_params(workdir, params, config)
        out[name] = (workdir, params, config)
    return out


@pytest.fixture(scope="module", params=list(MODELS))
def analysed(request, saved_models, data):
    """One saved model's analysis on WINDOWS random windows, and the windows."""
    workdir, params, config = saved_models[request.param]
    got = analysis.analyze_run(workdir, data=data, windows=WINDOWS, seed=3)  # 2 batches of 4 and a short one
    val = np.fromfile(os.path.join(data, "val.bin"), np.uint16).astype(np.int64)
    offsets = data_lib.sample_offsets(val, T, WINDOWS, 3)
    np.testing.assert_array_equal(got["_offsets"], offsets)
    assert len(set(offsets.tolist())) > WINDOWS // 2  # drawn at random, not the first windows
    window = offsets[:, None] + np.arange(T + 1)[None]
    x, y = val[window[:, :-1]], val[window[:, 1:]]
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    model = model_lib.make_model(model_lib.ModelConfig.from_config(config))
    return dict(got=got, model=model, params=params, p=p, x=x, y=y, config=config, data=data)


# A direct numpy forward pass (float64), written from docs/model.md.

def layer_norm(p, x):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * p["scale"] + p.get("bias", 0.0)


def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def causal_probs(q, k):
    """q [B, T, N, H], k [B, S, N, H] -> softmax probabilities [B, N, T, S], causal."""
    scores = np.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones(scores.shape[-2:], bool)), scores, -np.inf)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def heads(a, n):
    return a.reshape(a.shape[:2] + (n, -1))


def numpy_rope(a):
    """Rotary embedding as complex numbers: features (i, i + H/2) of a head are z = x_i + j x_{i+H/2},
    turned by e^(j t 10000^(-2i/H)) at position t."""
    half = a.shape[-1] // 2
    z = a[..., :half] + 1j * a[..., half:2 * half]
    theta = np.arange(a.shape[1])[:, None] * 10000.0 ** (-2 * np.arange(half) / (2 * half))
    z = z * np.exp(1j * theta)[None, :, None, :]
    return np.concatenate([z.real, z.imag, a[..., 2 * half:]], axis=-1)


def positions(q, k, cfg):
    return (numpy_rope(q), numpy_rope(k)) if cfg.position_embedding_type == "ROPE" else (q, k)


def attend(probs, v, proj):
    b, t = v.shape[:2]
    return np.einsum("bnts,bsnh->btnh", probs, v).reshape(b, t, -1) @ proj["kernel"]


def self_attention(p, x, n, cfg):
    q, k, v = (heads(a, n) for a in np.split(x @ p["batch_attn_weights"]["kernel"], 3, axis=-1))
    probs = causal_probs(*positions(q, k, cfg))
    return attend(probs, v, p["residual_proj"]), probs


def feed_forward(p, x):
    return gelu(x @ p["linear"]["kernel"]) @ p["residual_proj"]["kernel"]


def block(p, x, n, cfg):
    a, probs = self_attention(p["multi_attn_head"], layer_norm(p["ln1"], x), n, cfg)
    x = x + a
    return x + feed_forward(p["feed_forward"], layer_norm(p["ln2"], x)), probs


def numpy_forward(p, cfg, x, ablation=None):
    """(input embeddings, outputs of each (encoder) block, {attention kind: [probs per layer]}, logits, emb terms),
    of the intact model or with one part taken out as aed_jax.ablations describes it."""
    if ablation == "unit_ln_scales":
        p = dict(p, **{n: dict(p[n], scale=np.ones_like(p[n]["scale"])) for n in ("encoder_out_ln", "embeddings_ln")})
    emb = p["token_embedding"]["embedding"][x]
    if cfg.position_embedding_type == "LEARNED" and ablation != "no_input_positions":
        emb = emb + p["positional_embedding"]["embedding"][:x.shape[1]]
    h, outputs, probs = emb, [], {}
    stack = "encoder_transformer_blocks" if cfg.model_type == "aed" else "transformer_blocks"
    kind = "encoder self" if cfg.model_type == "aed" else "self"
    for i in range(cfg.n_layer):
        h, pr = block(p[f"{stack}_{i}"], h, cfg.n_head, cfg)
        outputs.append(h)
        probs.setdefault(kind, []).append(pr)
    terms = None
    if cfg.model_type == "aed":
        if ablation == "encoder_out_running_mean":
            h = np.cumsum(emb, 1) / np.arange(1, x.shape[1] + 1)[None, :, None]
        enc, d = h, h @ p["decoder_feed_forward"]["kernel"]
        for i in range(cfg.n_layer):
            q = p[f"decoder_transformer_blocks_{i}"]
            a, pr = self_attention(q["decoder_multi_attn_head"], layer_norm(q["decoder_ln1"], d), cfg.n_head, cfg)
            probs.setdefault("decoder self", []).append(pr)
            d = d + a
            c, n = q["cross_multi_attn_head"], cfg.cross_heads
            kk, vv = (heads(a, n) for a in np.split(layer_norm(q["encoder_cross_ln"], enc) @ c["k_v_weights"]["kernel"],
                                                     2, axis=-1))
            pr = causal_probs(*positions(heads(layer_norm(q["decoder_cross_ln"], d) @ c["q_weights"]["kernel"], n), kk,
                                         cfg))
            probs.setdefault("decoder cross", []).append(pr)
            d = d + (0.0 if ablation == "no_cross_attention" else attend(pr, vv, c["residual_proj"]))
            d = d + feed_forward(q["decoder_feed_forward"], layer_norm(q["decoder_ln2"], d))
        h = d
        mean = np.cumsum(layer_norm(p["embeddings_ln"], emb), 1) / np.arange(1, x.shape[1] + 1)[None, :, None]
        terms = np.mean((mean - layer_norm(p["encoder_out_ln"], enc)) ** 2, -1)
    out = layer_norm(p["ln"], h)
    if cfg.sub_pos_embed_to_decoder != "NO" and ablation != "no_pos_sub":
        out = out - (p["positional_embedding"]["embedding"][1:x.shape[1] + 1] if cfg.position_embedding_type == "LEARNED"
                     else p["next_positional_embedding"]["embedding"][:x.shape[1]])
    return emb, outputs, probs, out @ p["token_embedding"]["embedding"].T, terms


def test_every_activation_number_is_the_numpy_one(analysed):
    got, cfg = analysed["got"], analysed["model"].cfg
    emb, outputs, probs, logits, terms = numpy_forward(analysed["p"], cfg, analysed["x"])
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, analysed["y"][..., None], -1)[..., 0]
    np.testing.assert_allclose(got["ce_by_position"], ce.mean(0), rtol=1e-4)
    np.testing.assert_allclose(got["ce_loss"], ce.mean(), rtol=1e-4)
    if cfg.model_type == "aed":
        np.testing.assert_allclose(got["embedding_loss_by_position"], terms.mean(0), rtol=1e-4, atol=1e-7)
    else:
        assert "embedding_loss_by_position" not in got
    # The cosine of each layer's output with the running mean of the input embeddings, by position.
    mean = np.cumsum(emb, 1) / np.arange(1, T + 1)[None, :, None]
    cos = lambda a: np.sum(a * mean, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(mean, axis=-1))
    expected = np.stack([cos(a).mean(0) for a in [emb] + outputs])
    assert expected.shape == (cfg.n_layer + 1, T)
    np.testing.assert_allclose(got["alignment_by_layer_position"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["alignment_by_layer"], expected.mean(1), rtol=1e-4, atol=1e-5)
    assert got["alignment_by_layer_position"][0][0] == pytest.approx(1.0)  # position 0 is its own mean
    # Attention entropy and attended distance of every layer and head, written out by position.
    assert set(got["attention"]) == set(probs)
    for kind, layers in probs.items():
        entropy = [[np.mean([-np.sum(pr[b, n, t, :t + 1] * np.log(pr[b, n, t, :t + 1]))
                             for b in range(pr.shape[0]) for t in range(T)]) for n in range(pr.shape[1])]
                   for pr in layers]
        distance = [[np.mean([sum(pr[b, n, t, s] * (t - s) for s in range(t + 1))
                              for b in range(pr.shape[0]) for t in range(T)]) for n in range(pr.shape[1])]
                    for pr in layers]
        np.testing.assert_allclose(got["attention"][kind]["entropy"], entropy, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["attention"][kind]["distance"], distance, rtol=1e-4, atol=1e-6)
        assert np.ptp(entropy) > 0.1  # heads differ: a real test, not uniform attention everywhere
    assert got["uniform_attention"]["entropy"] == pytest.approx(np.mean(np.log(np.arange(1, T + 1))))


def numpy_ce(logits, y):
    """[B, T] cross-entropy of float64 logits."""
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, y[..., None], -1)[..., 0]


T_975_9 = 2.2621571627409915  # Student t quantile 0.975 at 9 degrees of freedom (WINDOWS - 1), from a table


@pytest.mark.fast
def test_ablations_are_the_numpy_model_with_the_part_taken_out(analysed):
    """Each ablation's change in CE (and embedding loss) is the numpy model's with that part taken out,
    window by window, with the t-interval computed by hand."""
    got, p, x, y = (analysed[k] for k in ("got", "p", "x", "y"))
    cfg = analysed["model"].cfg
    expected = {"aed": set(ablations.ABLATIONS), "baseline": {"no_input_positions"},
                "aed_rope": set(ablations.ABLATIONS) - {"no_input_positions"}}
    kind = "baseline" if cfg.model_type == "baseline" else "aed_rope" if cfg.position_embedding_type == "ROPE" else "aed"
    assert set(got["ablations"]) == expected[kind]
    _, _, _, logits, terms = numpy_forward(p, cfg, x)
    ce_W = numpy_ce(logits, y).mean(1)
    for name, effect in got["ablations"].items():
        _, _, _, ablated_logits, ablated_terms = numpy_forward(p, cfg, x, name)
        change_W = numpy_ce(ablated_logits, y).mean(1) - ce_W
        if name == "unit_ln_scales":
            np.testing.assert_allclose(change_W, 0.0, atol=1e-12)  # the CE does not pass through them
        else:
            assert np.abs(change_W).max() > 1e-3, name  # the part was doing something: a real test
        half = T_975_9 * change_W.std(ddof=1) / math.sqrt(WINDOWS)
        assert effect["ce"]["mean"] == pytest.approx(change_W.mean(), rel=1e-3, abs=1e-5), name
        assert effect["ce"]["low"] == pytest.approx(change_W.mean() - half, rel=1e-3, abs=1e-5), name
        assert effect["ce"]["high"] == pytest.approx(change_W.mean() + half, rel=1e-3, abs=1e-5), name
        if terms is not None and name not in ablations.DECODER_SIDE:
            change = (ablated_terms.mean(1) - terms.mean(1)).mean()
            assert effect["embedding_loss"]["mean"] == pytest.approx(change, rel=1e-3, abs=1e-7), name
        else:
            assert "embedding_loss" not in effect


def cosine(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_the_embedding_loss_layer_norms_and_the_alignment_the_loss_sees(analysed):
    got, p, x = (analysed[k] for k in ("got", "p", "x"))
    cfg = analysed["model"].cfg
    if cfg.model_type == "baseline":
        assert got["layer_norms"] == {} and got["shrinking_factor"] is None
        assert "alignment_after_ln_by_layer" not in got
        return
    for name in ("encoder_out_ln", "embeddings_ln"):
        scale, bias = p[name]["scale"], p[name]["bias"]
        assert got["layer_norms"][name] == pytest.approx({
            "scale_mean": scale.mean(), "scale_abs_mean": np.abs(scale).mean(), "scale_abs_max": np.abs(scale).max(),
            "bias_abs_mean": np.abs(bias).mean()}, rel=1e-6)
    emb, outputs, _, _, terms = numpy_forward(p, cfg, x)
    target = np.cumsum(layer_norm(p["embeddings_ln"], emb), 1) / np.arange(1, T + 1)[None, :, None]
    after = [layer_norm(p["encoder_out_ln"], a) for a in [emb] + outputs]
    np.testing.assert_allclose(got["alignment_after_ln_by_layer_position"],
                               [cosine(a, target).mean(0) for a in after], rtol=1e-4, atol=1e-5)
    biases = p["encoder_out_ln"]["bias"], p["embeddings_ln"]["bias"]
    np.testing.assert_allclose(got["alignment_unbiased_by_layer_position"],
                               [cosine(a - biases[0], target - biases[1]).mean(0) for a in after], rtol=1e-4, atol=1e-5)
    # Each feature's standard deviation over every window and position, on both sides, raw and as compared.
    raw_mean = np.cumsum(emb, 1) / np.arange(1, T + 1)[None, :, None]
    for side, v in zip(analysis.FEATURE_SIDES, (outputs[-1], after[-1], raw_mean, target)):
        std = v.reshape(-1, v.shape[-1]).std(0)
        assert got["feature_std"][side] == pytest.approx(
            {"min": std.min(), "median": np.median(std), "max": std.max()}, rel=1e-3), side
    assert got["feature_std"]["encoder_out_compared"]["max"] < got["feature_std"]["encoder_out"]["max"]  # scales < 1
    # The shrinking factor: the loss with unit scales over the loss as it is, from the numpy model.
    unit_terms = numpy_forward(p, cfg, x, "unit_ln_scales")[4]
    assert got["shrinking_factor"] == pytest.approx(unit_terms.mean() / terms.mean(), rel=1e-3)
    assert got["shrinking_factor"] > analysis.SHRINKING  # scales of 0.02-0.3: the report must say so
    assert "met mostly by shrinking the LayerNorm scales" in analysis.shrinking_sentence("run", got)


@pytest.mark.fast
def test_a_parameter_free_loss_is_measured_on_the_sides_standardised():
    """For NORM_MSE and CENTERED_COSINE a layer is compared as the loss compares it: standardised over its
    features, whatever encoder_out_ln holds (it is not in their path)."""
    config = tiny_config("aed", **dict(LOSS, embedding_loss_type="NORM_MSE"))
    cfg = model_lib.ModelConfig.from_config(config)
    params = {"encoder_out_ln": {"scale": jnp.full((16,), 1e-3), "bias": jnp.ones(16)}}
    layer = np.random.default_rng(0).normal(0.3, 2.0, (2, T, 16))
    centred = layer - layer.mean(-1, keepdims=True)
    expected = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True))
    np.testing.assert_allclose(analysis.after_embedding_lns(cfg, params, jnp.asarray(layer)), expected, rtol=1e-4,
                               atol=1e-5)


def test_the_shrinking_sentence_follows_its_rule():
    run = {"embedding_loss": 0.01, "alignment_by_layer": [0.5, 0.3], "alignment_after_ln_by_layer": [0.9, 0.8],
           "layer_norms": {"encoder_out_ln": {"scale_abs_mean": 0.01}}}
    assert analysis.shrinking_sentence("r", dict(run, shrinking_factor=None)) is None
    strong = analysis.shrinking_sentence("r", dict(run, shrinking_factor=analysis.SHRINKING))
    assert strong.startswith("**r: the embedding loss (0.01) is met mostly by shrinking") and "0.1, 10 times" in strong
    weak = analysis.shrinking_sentence("r", dict(run, shrinking_factor=analysis.SHRINKING * 0.99))
    assert "not explained by small scales alone" in weak and "0.30 before the LayerNorms, 0.80 after" in weak


def test_differences_are_window_by_window_with_a_bootstrap_band():
    rng = np.random.default_rng(0)
    offsets, base = np.arange(6), rng.normal(3.0, 0.3, (6, 4))
    other = base - 0.1 + rng.normal(0, 0.05, (6, 4))
    run = lambda ce, o=offsets: {"data": "v.bin", "context_size": 4, "_offsets": o, "_ce_WxT": ce}
    got = analysis.differences({"a": run(base), "b": run(other), "elsewhere": run(other, offsets + 1)}, seed=7)
    assert set(got) == {"b"}  # not measured on a's windows: no paired difference
    d = other - base
    np.testing.assert_allclose(got["b"]["by_position"], d.mean(0))
    low, high = stats.bootstrap_band(d, 7, analysis.RESAMPLES)
    np.testing.assert_allclose(got["b"]["low"], low)
    np.testing.assert_allclose(got["b"]["high"], high)
    assert np.all(np.asarray(got["b"]["low"]) <= d.mean(0)) and np.all(d.mean(0) <= np.asarray(got["b"]["high"]))
    assert got["b"]["mean"]["mean"] == pytest.approx(d.mean(1).mean()) and got["b"]["against"] == "a"


def test_runs_of_different_context_sizes_are_reported_as_measured(saved_models, data, tmp_path):
    """A run of context 16 beside runs of context 8: the report gives each run's window length (it used
    to say every run was measured on windows of the first run's length), and says why the longer run
    has no difference from the first, where a run of the same context has one."""
    config = tiny_config("baseline")
    config.model_config.context_size = 2 * T
    long_run = str(tmp_path / "long")
    api.save_params(long_run, model_lib.init_params(model_lib.make_model(model_lib.ModelConfig.from_config(config)),
                                                    jax.random.key(1)), config)
    runs = {label: analysis.analyze_run(workdir, data=data, windows=WINDOWS, seed=3, with_ablations=False)
            for label, workdir in (("learned", saved_models["aed"][0]), ("long", long_run),
                                   ("baseline", saved_models["baseline"][0]))}
    assert (runs["learned"]["context_size"], runs["long"]["context_size"]) == (T, 2 * T)
    analysis.write_report(runs, str(tmp_path / "out"), "analyze ...", seed=3)
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"Every run measured on {WINDOWS} windows of its own context size (learned: {T} tokens, long: {2 * T} " \
           f"tokens, baseline: {T} tokens), drawn at random" in report
    assert "measured on the same" not in report
    assert f"`, windows of {2 * T} tokens;" in report and f"`, windows of {T} tokens" in report
    assert "- baseline - learned: " in report and "nats" in report.split("- baseline - learned: ")[1].split("\n")[0]
    assert (f"- long - learned: no difference: its windows are {2 * T} tokens long, the first run's {T}, so no "
            "window was measured by both.") in report
    assert "The difference figure (`ce_difference.png`) has no line for these runs." in report
    metrics_json = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics_json["differences"]) == {"baseline"}
    # Without a run of the first one's context, nothing to draw, and the report says so.
    two = {label: runs[label] for label in ("learned", "long")}
    analysis.write_report(two, str(tmp_path / "two"), "analyze ...", seed=3)
    report = (tmp_path / "two" / "report.md").read_text()
    assert "has no line for these runs, so it is not drawn." in report and "![ce_difference.png]" not in report
    assert not (tmp_path / "two" / "ce_difference.png").exists()


# Panels each comparison figure has: one per quantity, every run that has it on the same axes.
PANELS = {"ce_by_position.png": 1, "ce_difference.png": 1, "ablations.png": 2, "layer_norms.png": 2,
          "alignment.png": 4, "embedding_loss_by_position.png": 1, "attention.png": 2, "norms.png": 1, "overlap.png": 2}


def test_each_comparison_figure_has_one_panel_per_quantity(saved_models, data):
    labels = {"aed": "learned", "baseline": "baseline", "aed_rope": "rope"}  # no label inside another
    runs = {labels[name]: analysis.analyze_run(workdir, data=data, windows=WINDOWS, seed=3)
            for name, (workdir, _, _) in saved_models.items()}
    diffs = analysis.differences(runs)
    assert set(diffs) == {"baseline", "rope"}
    comparisons = [(name, plot) for name, plot, comparison, _ in analysis.FIGURES if comparison]
    assert {name for name, _ in comparisons} == set(PANELS)
    for name, plot in comparisons:
        fig = plot(runs, diffs)
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert len(panels) == PANELS[name], name
        assert len({ax.get_title() for ax in panels}) == len(panels), name  # no quantity split over panels
        for ax in panels:
            legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
            shown = {run for run in runs if run in legend}
            # Every run with this panel's quantity is in it: all three where all three have it.
            everyone = name in ("ce_by_position.png", "attention.png", "norms.png") or (
                name == "alignment.png" and ax in (panels[0], panels[-1]))
            assert shown == set(runs) if everyone else shown, (name, ax.get_title(), legend)
        matplotlib.pyplot.close(fig)


def test_every_table_number_is_the_numpy_one(analysed):
    got, p = analysed["got"], analysed["p"]
    name = "next_positional_embedding" if "next_positional_embedding" in p else "positional_embedding"
    pos, tok = p[name]["embedding"], p["token_embedding"]["embedding"]
    assert got["positional_table"] == name and len(got["positional_norms"]) == len(pos)
    np.testing.assert_allclose(got["positional_norms"], np.sqrt((pos ** 2).sum(1)), rtol=1e-6)
    for i, j in ((0, 1), (2, 5), (3, 3)):
        cosine = pos[i] @ pos[j] / math.sqrt((pos[i] @ pos[i]) * (pos[j] @ pos[j]))
        assert got["positional_cosine"][i][j] == pytest.approx(cosine, rel=1e-6)
    train_tokens = np.fromfile(os.path.join(analysed["data"], "train.bin"), np.uint16)
    assert got["frequencies_from"] == os.path.join(analysed["data"], "train.bin")
    assert got["token_norm_weighted"] == pytest.approx(np.mean([np.linalg.norm(tok[i]) for i in train_tokens]))
    # Overlap, by eigenvectors of the covariance matrices (the code takes an SVD of the centred rows).
    ks = [k for k in (1, 2, 4, 8) if k < len(pos)]  # below D = 16 and the table's rows (T, or T + 1 with pos sub)
    assert sorted(map(int, got["overlap"])) == ks
    top = lambda a, k: np.linalg.eigh(np.cov(a, rowvar=False))[1][:, ::-1][:, :k]
    centred = pos - pos.mean(0)
    for k in ks:
        o = got["overlap"][str(k)]
        token_k, positional_k = top(tok, k), top(pos, k)
        angles = np.degrees(np.arccos(np.clip(np.linalg.svd(token_k.T @ positional_k, compute_uv=False), 0, 1)))
        np.testing.assert_allclose(o["principal_angles_deg"], angles, atol=1e-4)
        projector = token_k @ token_k.T
        inside = np.trace(projector @ centred.T @ centred) / np.trace(centred.T @ centred)
        assert o["positional_variance_in_token_subspace"] == pytest.approx(inside, rel=1e-6)
        assert o["random_subspace_expectation"] == k / 16
    k1 = got["overlap"]["1"]["principal_angles_deg"][0]
    assert k1 == pytest.approx(np.degrees(np.arccos(abs(top(tok, 1)[:, 0] @ top(pos, 1)[:, 0]))), abs=1e-4)


def test_overlap_of_shared_and_orthogonal_subspaces():
    rng = np.random.default_rng(0)
    token = rng.normal(size=(50, 6)) * [5, 4, 3, 0.1, 0.1, 0.1]  # top-3 subspace: the first 3 axes
    inside = analysis.overlap(token, rng.normal(size=(9, 6)) * [2, 1, 0.5, 0, 0, 0], 3)
    np.testing.assert_allclose(inside["principal_angles_deg"], 0.0, atol=2.0)
    assert inside["positional_variance_in_token_subspace"] > 0.99
    outside = analysis.overlap(token, rng.normal(size=(9, 6)) * [0, 0, 0, 2, 1, 0.5], 3)
    np.testing.assert_allclose(outside["principal_angles_deg"], 90.0, atol=2.0)
    assert outside["positional_variance_in_token_subspace"] < 0.01


# The command line, on two tiny runs trained here (an AED with an embedding loss, and a baseline).

def run_cli(argv):
    fv = flags.FlagValues()
    analyze.define_flags(fv)
    cli.reporting(analyze.main)(fv(["analyze"] + argv), fv)


def train_config(model_type, data_dir):
    c = tiny_config(model_type, **(LOSS if model_type == "aed" else {}))
    c.update(dict(dataset="synth", data_dir=data_dir, gradient_accumulation_steps=1, train_steps=3, lr=3e-3,
                  warmup_iters=1, lr_decay_iters=10, est_interval=3, est_steps=1, log_interval=1))
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(1)
    for split, n in (("train", 2000), ("val", 400)):
        rng.integers(0, V, n).astype(np.uint16).tofile(root / f"synth_{split}.bin")
    runs = {}
    for name, model_type in (("aed_run", "aed"), ("baseline_run", "baseline")):
        runs[name] = str(root / name)
        train.train_and_evaluate(train_config(model_type, str(root)), runs[name])
    return runs


@pytest.mark.slow
def test_cli_writes_the_whole_report_for_two_runs(trained, tmp_path, capsys):
    out = tmp_path / "report"
    run_cli(["--workdir", trained["aed_run"], "--workdir", trained["baseline_run"], "--out", str(out),
             "--windows", "20"])
    figures = list(PANELS) + ["positional_cosine.png"]
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    for name in figures:
        assert f"![{name}]({name})" in report
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 300 and image.shape[1] > 500
        colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
        assert len(colours) > 50 and image[..., :3].std() > 0.05  # drawn on, not a blank canvas
    assert "| aed_run | aed | 3 | 160 |" in report and "| baseline_run | baseline | 3 | 160 |" in report
    runs = json.loads((out / "metrics.json").read_text())["runs"]
    assert set(runs) == {"aed_run", "baseline_run"}
    assert len(runs["aed_run"]["ce_by_position"]) == T and "embedding_loss_by_position" in runs["aed_run"]
    assert set(runs["aed_run"]["attention"]) == {"encoder self", "decoder self", "decoder cross"}
    assert set(runs["baseline_run"]["attention"]) == {"self"}
    assert np.asarray(runs["baseline_run"]["attention"]["self"]["entropy"]).shape == (2, 2)
    # The ablations of both runs side by side, the difference, and the windows they were measured on.
    assert set(runs["aed_run"]["ablations"]) == set(ablations.ABLATIONS)
    assert set(runs["baseline_run"]["ablations"]) == {"no_input_positions"}
    assert "| ablation | aed_run | baseline_run |" in report and "| `no_cross_attention` | " in report
    assert "- baseline_run - aed_run: " in report
    windows = np.load(out / "windows.npz")
    assert list(windows["labels"]) == ["aed_run", "baseline_run"]
    np.testing.assert_array_equal(windows["run0_offsets"], windows["run1_offsets"])
    assert windows["run0_ce_WxT"].shape == (20, T)
    np.testing.assert_allclose(windows["run0_ce_WxT"].mean(0), runs["aed_run"]["ce_by_position"], rtol=1e-5)


@pytest.mark.slow
def test_checkpoint_and_data_file(trained, tmp_path, capsys, data):
    out = tmp_path / "one"
    run_cli(["--workdir", trained["aed_run"], "--checkpoint", "best", "--data", os.path.join(data, "val.bin"),
             "--windows", "6", "--noablations", "--out", str(out)])
    run = json.loads((out / "metrics.json").read_text())["runs"]["aed_run"]
    assert run["checkpoint"] == "best" and run["tokens"] == 6 * T and run["data"].endswith("val.bin")
    assert run["ablations"] == {} and "--noablations" in (out / "report.md").read_text()
    assert (out / "attention.png").stat().st_size > 10000


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A baseline's checkpoint 0 (random weights): enough for the errors."""
    workdir, config = str(tmp_path_factory.mktemp("saved")), tiny_config("baseline")
    model = model_lib.make_model(model_lib.ModelConfig.from_config(config))
    api.save_params(workdir, model_lib.init_params(model, jax.random.key(0)), config)
    return workdir


@pytest.mark.parametrize("argv,message", [
    (["--out", "{tmp}/o"], "--workdir is required"),
    (["--workdir", "{run}"], "--out is required"),
    (["--workdir", "/nonexistent/run", "--out", "{tmp}/o"], "does not exist"),
    (["--workdir", "{tmp}", "--out", "{tmp}/o"], "has no checkpoints"),
    (["--workdir", "{run}", "--checkpoint", "7", "--out", "{tmp}/o"], "has no checkpoint '7'"),
    (["--workdir", "{run}", "--data", "{tmp}/odd.bin", "--out", "{tmp}/o"], "not a flat uint16 token file"),
    (["--workdir", "{run}", "--windows", "0", "--out", "{tmp}/o"], "--windows must be at least 1"),
    (["--workdir", "{run}", "--windows", "1", "--out", "{tmp}/o"], "--windows must be at least 2"),
    (["--workdir", "{run}", "--windows", "10000000000", "--out", "{tmp}/o"], "--windows must be at most 1,000,000"),
    (["--workdir", "{run}", "--data", "{data}", "--out", "{tmp}/odd.bin/o"], "odd.bin is not a folder: choose another"),
])
def test_bad_input_is_one_line_and_exit_1(saved, data, tmp_path, capsys, argv, message):
    (tmp_path / "odd.bin").write_bytes(b"abc")
    argv = [a.format(tmp=tmp_path, run=saved, data=data) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("out", ["{tmp}/odd.bin/report", "/sys/aed_jax_report"], ids=["under a file", "read-only"])
def test_an_unwritable_out_is_refused_before_any_work(saved, tmp_path, capsys, monkeypatch, out):
    """--out under a file, or in a folder no one may write (/sys, even for root): one line with the
    remedy before a single window is measured (it used to come after all the computing), and nothing
    created on the way."""
    (tmp_path / "odd.bin").write_bytes(b"abc")
    out = out.format(tmp=tmp_path)
    if out.startswith("/sys") and not os.path.isdir("/sys"):  # sysfs refuses to create a file, even for root
        pytest.skip("no /sys here")
    measured = []
    monkeypatch.setattr(analysis, "analyze_run", lambda *args, **kwargs: measured.append(args))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--workdir", saved, "--out", out])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1 and measured == []
    assert err.startswith(f"error: --out {out}: ")
    assert err.endswith(": choose another folder, then run the same command again\n" if "odd.bin" in out else
                        ": make it writable (or choose another folder), then run the same command again\n")
    assert sorted(os.listdir(tmp_path)) == ["odd.bin"] and not os.path.exists(out)


@pytest.mark.parametrize("batch_size,allocating", [(200_000_000, "5.96 GiB"), (2_000_000, r"\d+(\.\d+)? GiB")],
                         ids=["numpy, host", "XLA, device"])
def test_out_of_memory_is_one_line_with_the_size_and_the_remedy(saved, data, tmp_path, batch_size, allocating):
    """Under a 4 GiB address-space limit (ulimit -v), a batch whose padding numpy cannot allocate, and one
    whose activations XLA cannot: one line naming the size and what to make smaller, exit 1 (they
    used to be 36 lines of traceback)."""
    limited = ["bash", "-c", f'ulimit -v {4 * 2**20} && exec "$0" "$@"', sys.executable]  # in KiB
    result = subprocess.run([*limited, "-m", "aed_jax.analyze", "--workdir", saved, "--data", data, "--windows", "10",
                             "--noablations", "--batch_size", str(batch_size), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stdout == "", result.stderr[-3000:]
    assert re.fullmatch(f"error: analyze ran out of memory allocating {allocating}: pass a smaller --batch_size or "
                        r"fewer --windows \(now 10\)\n", result.stderr), result.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_out_of_memory_is_told_from_other_errors():
    """errors.out_of_memory: numpy's MemoryError and jax's RESOURCE_EXHAUSTED give the line with the size
    they name (none when they name none); any other error, jax's included, gives None."""
    with pytest.raises(MemoryError) as numpy_error:
        np.empty(2**60, np.uint8)
    assert errors.out_of_memory(numpy_error.value, "analyze", "pass less") == (
        "analyze ran out of memory allocating 1.00 EiB: pass less")
    runtime_error = jax.errors.JaxRuntimeError
    assert errors.out_of_memory(runtime_error("RESOURCE_EXHAUSTED: Out of memory allocating 6406400000 bytes."),
                                "train", "a smaller batch") == (
        "train ran out of memory allocating 5.97 GiB: a smaller batch")
    assert errors.out_of_memory(runtime_error("RESOURCE_EXHAUSTED: Failed to allocate request for 1.50GiB "
                                              "(1610612736B) on device ordinal 0"), "p", "r") == (
        "p ran out of memory allocating 1.5 GiB: r")
    assert errors.out_of_memory(MemoryError(), "p", "r") == "p ran out of memory: r"
    assert errors.out_of_memory(runtime_error("INTERNAL: something else"), "p", "r") is None
    assert errors.out_of_memory(ValueError("RESOURCE_EXHAUSTED"), "p", "r") is None
    assert errors.out_of_memory(OSError(12, "Cannot allocate memory"), "p", "r") is None


@pytest.mark.parametrize("moment,sig,line,code", [
    ("loading", signal.SIGTERM, "error: analyze was stopped by SIGTERM; it wrote nothing", 1),
    ("measuring", signal.SIGINT, "error: analyze was stopped by SIGINT; it wrote nothing", 1),
    ("writing", signal.SIGTERM, "error: analyze was stopped by SIGTERM while writing; {out} may hold some of this "
                                "run's figures and data files, but not its report.md (written last)", 1),
    ("written", signal.SIGTERM, "analyze was stopped by SIGTERM once its report was written: {out}/report.md", 0),
])
def test_a_signal_at_any_moment_is_one_line(saved, data, tmp_path, stop_command, moment, sig, line, code):
    """SIGTERM or Ctrl-C while the libraries load, between two batches, while the report is written, or
    once it is: one line that says what was written, exit 1 unless the report is whole (SIGTERM used to
    end it silently, rc -15)."""
    out = tmp_path / "out"
    pause = {"loading": None, "measuring": ("aed_jax.data", "windows_at", "after_first"),
             "writing": ("aed_jax.analysis", "write_report", "before"),
             "written": ("builtins", "print", "before")}[moment]  # analyze's one print: the files it wrote
    rc, stdout, stderr = stop_command(["aed_jax.analyze", "--workdir", saved, "--data", data, "--windows", "10",
                                       "--batch_size", "4", "--noablations", "--out", str(out)], sig, pause)
    assert (rc, stdout, stderr) == (code, "", line.format(out=out) + "\n")
    assert (out / "report.md").exists() == (moment == "written")


def test_figures_load_without_a_word_where_home_cannot_be_written(tmp_path):
    """A HOME matplotlib cannot write its folders in (here a file): plain matplotlib prints two warning
    lines, the analysis and the reproduction's figures none; their folder, in the temporary directory,
    is this user's and keeps the font cache for the next run."""
    (tmp_path / "home").write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path))
    plain = subprocess.run([sys.executable, "-c", "import matplotlib.pyplot"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert "Matplotlib created a temporary cache directory" in plain.stderr  # the fault, as a user would see it
    ours = tmp_path / f"aed_jax-matplotlib-{os.getuid()}"
    result = subprocess.run([sys.executable, "-c", "import aed_jax.analysis, experiments.figures, matplotlib; "
                             "print(matplotlib.get_configdir(), matplotlib.get_cachedir())"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", f"{ours} {ours}\n")
    assert (ours.stat().st_mode & 0o777) == 0o700 and any(ours.glob("fontlist-*.json"))  # the font cache, kept


def test_labels_are_the_shortest_path_ends_that_tell_runs_apart():
    assert analysis.labels(["runs/a", "other/b/"]) == ["a", "b"]
    assert analysis.labels(["runs/tiny/mse/seed1", "runs/tiny/base/seed1", "runs/tiny/mse/seed2"]) == [
        "mse/seed1", "base/seed1", "mse/seed2"]
    assert analysis.labels(["x/run", "x/run"]) == ["x/run", "x/run"]


# Task runs: sequences drawn from the task, scored on their answers.

def task_run_config(model_type, task="mqar", **settings):
    config = tiny_config(model_type, **(LOSS if model_type == "aed" else {}))
    config.dataset = f"task:{task}"
    config.task.update({"num_kv_pairs": 2, "copy_length": 3, **settings})
    return config


@pytest.fixture(scope="module")
def task_runs(saved_models, tmp_path_factory):
    """{label: (workdir, params, config, analysis)}: the saved tiny AED and baseline as runs of task:mqar
    (the same sequences: paired), the AED as a run of task:copy, and of mqar with one pair fewer (other
    sequences: no difference), each analysed on WINDOWS sequences drawn with seed 3."""
    runs = {}
    for label, model, task, settings in (("mqar", "aed", "mqar", {}), ("mqar_baseline", "baseline", "mqar", {}),
                                         ("copy", "aed", "copy", {}), ("fewer_pairs", "aed", "mqar",
                                                                       dict(num_kv_pairs=1))):
        config, params = task_run_config(model, task, **settings), saved_models[model][1]
        workdir = str(tmp_path_factory.mktemp(label))
        api.save_params(workdir, params, config)
        got = analysis.analyze_run(workdir, windows=WINDOWS, seed=3, with_ablations=label != "mqar_baseline",
                                   label=label)
        runs[label] = (workdir, params, config, got)
    return runs


def test_a_task_run_draws_the_same_sequences_whatever_the_batch_size():
    """The first N of the stream make_batch draws from default_rng(seed), TASK_DRAW at a time: the same for
    any batch size and any N (a run's batch size never changes which sequences it is measured on)."""
    config, count = task_run_config("aed"), analysis.TASK_DRAW + 5
    rng = np.random.default_rng(3)
    stream = [tasks.make_batch(config, rng, analysis.TASK_DRAW) for _ in range(2)]
    expected = {k: np.concatenate([b[k] for b in stream])[:count] for k in ("x", "y", "weight")}
    for batch_size in (7, 4096):
        batches = list(analysis.task_sequences(config, count, 3, batch_size))
        assert [len(b["x"]) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
        for k, v in expected.items():
            np.testing.assert_array_equal(np.concatenate([b[k] for b in batches]), v)
    fewer = next(analysis.task_sequences(config, 6, 3, 100))
    np.testing.assert_array_equal(fewer["x"], expected["x"][:6])


def masked(values_WxT, answers_WxT):
    return np.where(answers_WxT, values_WxT, np.nan)


def test_a_task_run_is_scored_on_its_answers_as_numpy_scores_them(task_runs):
    """CE, CE by position, token accuracy, embedding loss by position and each ablation's paired change:
    over the answers of the drawn sequences alone, as a numpy forward pass gives them (and not what the
    same numbers over every position give)."""
    workdir, params, config, got = task_runs["mqar"]
    b = tasks.make_batch(config, np.random.default_rng(3), analysis.TASK_DRAW)
    x, y, answers = b["x"][:WINDOWS], b["y"][:WINDOWS], b["weight"][:WINDOWS] > 0
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    cfg = model_lib.ModelConfig.from_config(config)
    _, _, _, logits, terms = numpy_forward(p, cfg, x)
    ce = numpy_ce(logits, y)
    assert got["task"]["name"] == "mqar" and got["data"] == "task:mqar" and got["tokens"] == answers.sum()
    assert got["ce_loss"] == pytest.approx(ce[answers].mean(), rel=1e-4)
    assert abs(ce.mean() - ce[answers].mean()) > 1e-3  # every position would give another number: a real test
    np.testing.assert_array_equal(np.isnan(got["_ce_WxT"]), ~answers)
    np.testing.assert_allclose(got["_ce_WxT"][answers], ce[answers], rtol=1e-4)
    never = ~answers.any(0)
    assert never[:4].all() and not never.all()  # the key-value pairs come first: never an answer
    assert [v is None for v in got["ce_by_position"]] == never.tolist()
    assert [v is None for v in got["embedding_loss_by_position"]] == never.tolist()
    by_position = lambda values: [values[answers[:, t], t].mean() for t in range(T) if answers[:, t].any()]
    np.testing.assert_allclose([v for v in got["ce_by_position"] if v is not None], by_position(ce), rtol=1e-4)
    np.testing.assert_allclose([v for v in got["embedding_loss_by_position"] if v is not None], by_position(terms),
                               rtol=1e-4)
    right = logits.argmax(-1) == y
    assert 0.0 <= got["token_accuracy"] <= 1.0
    assert got["token_accuracy"] == pytest.approx(right[answers].mean())
    assert got["task"]["chance_token_accuracy"] == 1 / 2
    # Each ablation: the paired change of each sequence's mean over its answers.
    for name in ("no_cross_attention", "encoder_out_running_mean"):
        _, _, _, ablated_logits, _ = numpy_forward(p, cfg, x, name)
        change_W = np.nanmean(masked(numpy_ce(ablated_logits, y) - ce, answers), 1)
        everywhere_W = (numpy_ce(ablated_logits, y) - ce).mean(1)
        assert abs(change_W.mean() - everywhere_W.mean()) > 1e-3, name
        half = T_975_9 * change_W.std(ddof=1) / math.sqrt(WINDOWS)
        effect = got["ablations"][name]
        assert effect["ce"]["mean"] == pytest.approx(change_W.mean(), rel=1e-3, abs=1e-5), name
        assert effect["ce"]["low"] == pytest.approx(change_W.mean() - half, rel=1e-3, abs=1e-5), name
        accuracy_W = np.nanmean(masked((ablated_logits.argmax(-1) == y).astype(float) - right, answers), 1)
        assert effect["accuracy"]["mean"] == pytest.approx(accuracy_W.mean(), abs=1e-6), name
        assert -1.0 <= effect["accuracy"]["mean"] <= 1.0


def test_task_runs_are_paired_on_the_same_sequences_only_and_the_report_says_so(task_runs, tmp_path):
    runs = {label: got for label, (_, _, _, got) in task_runs.items()}
    diffs = analysis.differences(runs, seed=3)
    assert set(diffs) == {"mqar_baseline"}
    difference = runs["mqar_baseline"]["_ce_WxT"] - runs["mqar"]["_ce_WxT"]  # NaN off the answers in both
    answers = ~np.isnan(difference)
    d = diffs["mqar_baseline"]
    assert [v is None for v in d["by_position"]] == (~answers.any(0)).tolist()
    np.testing.assert_allclose([v for v in d["by_position"] if v is not None],
                               [difference[answers[:, t], t].mean() for t in range(T) if answers[:, t].any()])
    assert d["mean"]["mean"] == pytest.approx(np.mean([row[~np.isnan(row)].mean() for row in difference]))
    accuracy = runs["mqar_baseline"]["_accuracy_W"] - runs["mqar"]["_accuracy_W"]
    assert d["accuracy"]["mean"] == pytest.approx(accuracy.mean())
    assert all(lo is None or lo <= m <= hi for lo, m, hi in zip(d["low"], d["by_position"], d["high"]))

    analysis.write_report(runs, str(tmp_path / "all"), "analyze ...", seed=3)
    report = (tmp_path / "all" / "report.md").read_text()
    assert f"What each run was measured on: mqar, {WINDOWS} sequences of `task:mqar` ({T} tokens) drawn from the " \
           "task with seed 3; " in report
    assert "scored on their answer positions alone (the task's `weight` mask)" in report
    assert "- mqar_baseline - mqar: " in report and "; token accuracy " in report
    assert ("- copy - mqar: no difference: its windows come from the task `task:copy`, the first run's from the task "
            "`task:mqar`, so no sequence was measured by both.") in report
    assert ("- fewer_pairs - mqar: no difference: its task settings differ (task.num_kv_pairs 1, the first run's 2), "
            "so no sequence was measured by both.") in report
    assert f"| mqar | aed | 0 | {runs['mqar']['tokens']} | " in report and "(0.500) |" in report
    assert "Change in token accuracy (task runs):" in report
    written = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert written["runs"]["copy"]["task"]["settings"]["copy_length"] == 3
    assert set(written["differences"]) == {"mqar_baseline"}

    paired = {label: runs[label] for label in ("mqar", "mqar_baseline")}
    analysis.write_report(paired, str(tmp_path / "paired"), "analyze ...", seed=3)
    report = (tmp_path / "paired" / "report.md").read_text()
    assert f"Every run measured on the same {WINDOWS} sequences of `task:mqar` ({T} tokens), drawn from the task " \
           "with seed 3" in report
    assert (tmp_path / "paired" / "ce_difference.png").exists()


def test_data_with_a_task_run_is_one_line(task_runs, data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--workdir", task_runs["mqar"][0], "--data", data, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: --data {data}: {task_runs['mqar'][0]} is a run of task:mqar: ")
    assert err.endswith("a task run draws its sequences from its task; --data is for corpus runs\n")
    assert not (tmp_path / "o").exists()


def test_cli_analyzes_a_task_run(task_runs, tmp_path, capsys):
    out = tmp_path / "report"
    run_cli(["--workdir", task_runs["mqar"][0], "--workdir", task_runs["copy"][0], "--windows", str(WINDOWS),
             "--seed", "3", "--out", str(out)])
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    written = json.loads((out / "metrics.json").read_text())["runs"]
    mqar = written[os.path.basename(task_runs["mqar"][0])]
    assert mqar["ce_loss"] == pytest.approx(task_runs["mqar"][3]["ce_loss"], rel=1e-6)
    windows = np.load(out / "windows.npz")
    np.testing.assert_array_equal(np.isnan(windows["run0_ce_WxT"]), np.isnan(task_runs["mqar"][3]["_ce_WxT"]))
    for name in ("ce_by_position.png", "ablations.png", "embedding_loss_by_position.png"):
        assert matplotlib.image.imread(out / name)[..., :3].std() > 0.05, name


# The embedding losses that shrinking cannot meet (issue 34), trained: the seed's MSE collapses, they do not.

EMBEDDING_LOSSES = {"mse": {}, "norm_mse": dict(embedding_loss_type="NORM_MSE"),
                    "centered_cosine": dict(embedding_loss_type="CENTERED_COSINE"),
                    "mse_var": dict(embedding_var_coeff=1.0)}


def sort_config(**model):
    """The seed's MSE + pos sub (configs/mse_pos_sub.py's loss keys, coefficient 8) at width 32 on task:sort
    (8 numbers in 32 tokens), `model` changed. At lr 1e-2 its LayerNorms collapse within 300 steps (at 3e-3
    the shrinking factor is ~3 there, and ~8 after 150 steps at 1e-2)."""
    c = config_lib.base_config("aed")
    c.model_config.update(dict(dict(n_embed=32, n_head=2, n_layer=1, context_size=32, alphabet_size=64,
                                    sub_pos_embed_to_decoder="YES_NO_LN", use_ln_on_encoder_out=True,
                                    embedding_loss_type="MSE", detach_type="ENCODER_OUT", embedding_loss_coeff=8.0,
                                    embedding_ln_type="INIT"), **model))
    c.model_config.cross_attn_config.n_head = 4
    c.update(dict(dataset="task:sort", batch_size=16, gradient_accumulation_steps=1, train_steps=300, lr=1e-2,
                  min_lr=1e-3, warmup_iters=15, lr_decay_iters=300, est_interval=300, est_steps=1, log_interval=300))
    c.task.sort_length = 8
    config_lib.validate(c)
    return c


@pytest.mark.slow
def test_the_seed_mse_is_met_by_shrinking_and_the_other_losses_are_not(tmp_path):
    """Four runs trained alike: the seed's MSE ends with a shrinking factor above SHRINKING, its encoder side
    collapsed as compared (each feature's spread near 0 after encoder_out_ln) and the report says so; NORM_MSE
    and CENTERED_COSINE have a factor of 1 (no LayerNorm in their path) and MSE with the variance floor one
    below SHRINKING, their compared sides spread, and the report says the loss is not explained by small scales."""
    runs = {}
    for name, model in EMBEDDING_LOSSES.items():
        workdir = str(tmp_path / name)
        train.train_and_evaluate(sort_config(**model), workdir)
        runs[name] = analysis.analyze_run(workdir, windows=64, seed=0, batch_size=32, label=name)
    factors = {name: run["shrinking_factor"] for name, run in runs.items()}
    assert factors["mse"] > analysis.SHRINKING, factors
    assert factors["norm_mse"] == pytest.approx(1.0, abs=1e-5) and factors["centered_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert factors["mse_var"] < analysis.SHRINKING, factors
    spread = {name: run["feature_std"]["encoder_out_compared"]["median"] for name, run in runs.items()}
    assert spread["mse"] < 0.05 and all(spread[name] > 0.2 for name in ("norm_mse", "centered_cosine", "mse_var")), spread
    analysis.write_report(runs, str(tmp_path / "report"), "analyze")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "**mse: the embedding loss" in report and "met mostly by shrinking the LayerNorm scales" in report
    for name in ("norm_mse", "centered_cosine", "mse_var"):
        assert f"{name}: the embedding loss" in report and f"**{name}:" not in report
    assert "| mse | " in report.split("Each feature's standard deviation")[1]  # the spread table has every run
