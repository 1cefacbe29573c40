"""The analysis report: every number against a direct numpy computation on a tiny model, the whole
report for two freshly trained tiny runs, one-line errors."""
import json
import math
import os

import jax
import matplotlib.image
import numpy as np
import pytest
from absl import flags

from aed_jax import analyze
from aed_jax import cli
from aed_jax import api
from aed_jax import config as config_lib
from aed_jax import model as model_lib
from aed_jax import train

T, V = 8, 97
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
    rng.integers(0, V, T * 6 + 3).astype(np.uint16).tofile(folder / "val.bin")  # 6 windows: a batch and a short one
    rng.integers(0, 20, 300).astype(np.uint16).tofile(folder / "train.bin")  # frequencies: only ids < 20
    return str(folder)


MODELS = {"aed": ("aed", LOSS), "baseline": ("baseline", {}),
          "aed_rope": ("aed", dict(LOSS, position_embedding_type="ROPE"))}


@pytest.fixture(scope="module", params=list(MODELS))
def analysed(request, tmp_path_factory, data):
    """A saved tiny model (its matrices scaled up, so attention is far from uniform) and its analysis."""
    model_type, options = MODELS[request.param]
    config = tiny_config(model_type, **options)
    model = model_lib.make_model(model_lib.ModelConfig.from_config(config))
    params = model_lib.init_params(model, jax.random.key(0))
    sharp = ("batch_attn_weights", "q_weights", "k_v_weights")
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: p * (20.0 if path[-2].key in sharp else 4.0) if p.ndim == 2 else p, params)
    workdir = str(tmp_path_factory.mktemp(request.param))
    api.save_params(workdir, params, config)
    got = analyze.analyze_run(workdir, data=data)
    val = np.fromfile(os.path.join(data, "val.bin"), np.uint16).astype(np.int64)
    window = np.arange(6)[:, None] * T + np.arange(T + 1)[None]
    x, y = val[window[:, :-1]], val[window[:, 1:]]
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
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


def numpy_forward(p, cfg, x):
    """(input embeddings, outputs of each (encoder) block, {attention kind: [probs per layer]}, logits, emb terms)."""
    emb = p["token_embedding"]["embedding"][x]
    if cfg.position_embedding_type == "LEARNED":
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
            d = d + attend(pr, vv, c["residual_proj"])
            d = d + feed_forward(q["decoder_feed_forward"], layer_norm(q["decoder_ln2"], d))
        h = d
        mean = np.cumsum(layer_norm(p["embeddings_ln"], emb), 1) / np.arange(1, x.shape[1] + 1)[None, :, None]
        terms = np.mean((mean - layer_norm(p["encoder_out_ln"], enc)) ** 2, -1)
    out = layer_norm(p["ln"], h)
    if cfg.sub_pos_embed_to_decoder != "NO":
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
    inside = analyze.overlap(token, rng.normal(size=(9, 6)) * [2, 1, 0.5, 0, 0, 0], 3)
    np.testing.assert_allclose(inside["principal_angles_deg"], 0.0, atol=2.0)
    assert inside["positional_variance_in_token_subspace"] > 0.99
    outside = analyze.overlap(token, rng.normal(size=(9, 6)) * [0, 0, 0, 2, 1, 0.5], 3)
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
    figures = ["ce_by_position.png", "positional_cosine.png", "norms.png", "overlap.png",
               "embedding_loss_by_position.png", "alignment.png", "attention_entropy.png", "attention_distance.png"]
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


@pytest.mark.slow
def test_checkpoint_and_data_file(trained, tmp_path, capsys, data):
    out = tmp_path / "one"
    run_cli(["--workdir", trained["aed_run"], "--checkpoint", "best", "--data", os.path.join(data, "val.bin"),
             "--out", str(out)])
    run = json.loads((out / "metrics.json").read_text())["runs"]["aed_run"]
    assert run["checkpoint"] == "best" and run["tokens"] == 6 * T and run["data"].endswith("val.bin")
    assert (out / "attention_entropy.png").stat().st_size > 10000


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
    (["--workdir", "{run}", "--data", "{data}", "--out", "{tmp}/odd.bin/o"], "cannot write the report"),
])
def test_bad_input_is_one_line_and_exit_1(saved, data, tmp_path, capsys, argv, message):
    (tmp_path / "odd.bin").write_bytes(b"abc")
    argv = [a.format(tmp=tmp_path, run=saved, data=data) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
