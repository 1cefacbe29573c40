"""The models against docs/model.md: parameter counts, causality, the embedding loss, pos sub, tying, init."""
import dataclasses
import glob
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aed_jax import config as config_lib
from aed_jax import model as model_lib
from aed_jax import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(alphabet_size=97, context_size=12, n_embed=16, n_head=2, n_layer=2)
LOSS = dict(embedding_loss_type="MSE", embedding_loss_coeff=2.0, detach_type="ENCODER_OUT",
            embedding_ln_type="INIT", use_ln_on_encoder_out=True)


def small(**kw):
    return model_lib.ModelConfig(**{**SMALL, **kw})


def build(cfg, seed=0):
    model = model_lib.make_model(cfg)
    return model, model_lib.init_params(model, jax.random.key(seed))


def tokens(cfg, seed=1, batch=3):
    return jax.random.randint(jax.random.key(seed), (batch, cfg.context_size), 0, cfg.alphabet_size)


@pytest.mark.parametrize("name,count", [
    ("mse_pos_sub", 15_763_500), ("mse", 15_763_500), ("cosine", 15_763_500),
    ("no_loss_no_pos", 15_763_200), ("pos_sub", 15_763_200),
    ("baseline", 16_036_800), ("dropout_baseline", 16_036_800), ("smaller_baseline", 15_441_192),
])
def test_seed_parameter_counts_exact(name, count):
    text = summary.summarize(config_lib.load(os.path.join(ROOT, "configs", f"{name}.py")))
    assert text.splitlines()[-1] == f"params: {count:,}"


@pytest.mark.fast
def test_every_config_loads_and_builds():
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
    assert len(paths) >= 9
    for path in paths:
        cfg = model_lib.ModelConfig.from_config(config_lib.load(path))
        assert model_lib.make_model(cfg) is not None


AED_VARIANTS = [
    dict(LOSS, sub_pos_embed_to_decoder="YES_NO_LN"),
    dict(LOSS, embedding_loss_type="COSINE", embedding_ln_type="AVG_CUM_SUM", order_type="ALT",
         sub_pos_embed_to_decoder="YES_LN", add_pos_embed_to_decoder=True, add_ln_before_decoder_ff=True,
         use_bias=True, cross_n_head=4, cross_use_bias=True),
    dict(LOSS, embedding_loss_type="LOG_COSINE", detach_type="EMBEDDING", use_ln_on_encoder_out=False),
]


@pytest.mark.parametrize("kw", AED_VARIANTS)
@pytest.mark.fast
def test_aed_is_causal_through_every_path(kw):
    """Changing token t changes no logit, CE term or embedding-loss term at positions < t."""
    cfg = small(**kw)
    model, params = build(cfg)
    x = tokens(cfg)
    t = 7
    x2 = x.at[:, t].set((x[:, t] + 1) % cfg.alphabet_size)

    def run(inp):
        (logits, _), state = model.apply({"params": params}, inp, inp, train=True, mutable=["intermediates"])
        return logits, state["intermediates"]["embedding_loss_BxT"][0]

    logits1, emb1 = run(x)
    logits2, emb2 = run(x2)
    np.testing.assert_array_equal(logits1[:, :t], logits2[:, :t])
    np.testing.assert_array_equal(emb1[:, :t], emb2[:, :t])
    assert not np.allclose(logits1[:, t:], logits2[:, t:])
    assert not np.allclose(emb1[:, t:], emb2[:, t:])


@pytest.mark.fast
def test_baseline_is_causal():
    cfg = small(model_type="baseline")
    model, params = build(cfg)
    x = tokens(cfg)
    x2 = x.at[:, 5].set((x[:, 5] + 1) % cfg.alphabet_size)
    logits1, _ = model.apply({"params": params}, x)
    logits2, _ = model.apply({"params": params}, x2)
    np.testing.assert_array_equal(logits1[:, :5], logits2[:, :5])
    assert not np.allclose(logits1[:, 5:], logits2[:, 5:])


def _np_layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _np_embedding_loss(cfg, params, x, enc):
    emb = np.asarray(params["token_embedding"]["embedding"])[x] + np.asarray(
        params["positional_embedding"]["embedding"])[: x.shape[1]][None]
    if cfg.use_ln_on_encoder_out:
        enc = _np_layer_norm(enc, params["encoder_out_ln"])
    if cfg.embedding_ln_type == "INIT":
        emb = _np_layer_norm(emb, params["embeddings_ln"])
    avg = np.cumsum(emb, axis=1) / np.arange(1, x.shape[1] + 1)[None, :, None]
    if cfg.embedding_ln_type == "AVG_CUM_SUM":
        avg = _np_layer_norm(avg, params["embeddings_ln"])
    if cfg.embedding_loss_type == "MSE":
        return ((avg - enc) ** 2).mean()
    cos = (avg * enc).sum(-1) / (np.linalg.norm(avg, axis=-1) * np.linalg.norm(enc, axis=-1))
    if cfg.embedding_loss_type == "COSINE":
        return (1 - (cos + 1) / 2).mean()
    return (-np.log((cos + 1) / 2)).mean()


@pytest.mark.parametrize("loss_type", ["MSE", "COSINE", "LOG_COSINE"])
@pytest.mark.parametrize("ln_type", ["INIT", "AVG_CUM_SUM"])
@pytest.mark.parametrize("enc_ln", [True, False])
@pytest.mark.fast
def test_embedding_loss_matches_numpy(loss_type, ln_type, enc_ln):
    cfg = small(**dict(LOSS, embedding_loss_type=loss_type, embedding_ln_type=ln_type, use_ln_on_encoder_out=enc_ln,
                       embedding_loss_coeff=3.0))
    model, params = build(cfg)
    # Perturb the LayerNorm parameters so that a wrong LN placement cannot go unnoticed.
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: p + 0.3 * jax.random.normal(jax.random.key(len(path)), p.shape)
        if "ln" in jax.tree_util.keystr(path) else p, params)
    x = tokens(cfg)
    (_, losses), state = model.apply({"params": params}, x, x, train=True, capture_intermediates=True)
    enc = np.asarray(state["intermediates"][f"encoder_transformer_blocks_{cfg.n_layer - 1}"]["__call__"][0])
    expected = _np_embedding_loss(cfg, params, np.asarray(x), enc)
    np.testing.assert_allclose(losses["embedding_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(losses["scaled_embedding_loss"], 3.0 * expected, rtol=1e-5)
    np.testing.assert_allclose(losses["total"], losses["ce"] + 3.0 * expected, rtol=1e-5)


def _embedding_loss_grads(detach_type):
    cfg = small(**dict(LOSS, detach_type=detach_type, use_ln_on_encoder_out=False))
    model, params = build(cfg)
    x = tokens(cfg)
    grads = jax.grad(lambda p: model.apply({"params": p}, x, x, train=True)[1]["embedding_loss"])(params)
    norm = lambda tree: float(sum(jnp.abs(g).sum() for g in jax.tree_util.tree_leaves(tree)))
    encoder = norm({k: v for k, v in grads.items() if k.startswith("encoder_transformer_blocks")})
    return encoder, norm(grads["token_embedding"]), norm(grads["embeddings_ln"])


def test_detach_encoder_out_sends_embedding_loss_only_to_embeddings():
    encoder, token_embedding, _ = _embedding_loss_grads("ENCODER_OUT")
    assert encoder == 0.0
    assert token_embedding > 0.0


def test_detach_embedding_sends_embedding_loss_through_the_encoder():
    encoder, _, _ = _embedding_loss_grads("EMBEDDING")
    assert encoder > 0.0
    # With EMBEDDING detached, the embeddings get gradient only through the encoder: with the
    # encoder's output cut off too (NONE -> both paths), the two must differ.
    _, token_embedding_detached, _ = _embedding_loss_grads("EMBEDDING")
    _, token_embedding_none, _ = _embedding_loss_grads("NONE")
    assert token_embedding_detached != pytest.approx(token_embedding_none)


@pytest.mark.parametrize("sub", ["YES_NO_LN", "YES_LN"])
@pytest.mark.fast
def test_pos_sub_subtracts_next_position_rows(sub):
    cfg = small(sub_pos_embed_to_decoder=sub)
    model, params = build(cfg)
    x = tokens(cfg)
    (logits, _), state = model.apply({"params": params}, x, capture_intermediates=True)
    out = np.asarray(state["intermediates"]["ln"]["__call__"][0])
    pos = np.asarray(params["positional_embedding"]["embedding"])
    assert pos.shape[0] == cfg.context_size + 1
    out = out - pos[1: cfg.context_size + 1][None]
    if sub == "YES_LN":
        p = params["post_sub_pos_ln"]
        out = _np_layer_norm(out, {"scale": p["scale"], "bias": np.zeros_like(p["scale"])})
    expected = out @ np.asarray(params["token_embedding"]["embedding"]).T
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["aed", "baseline"])
@pytest.mark.fast
def test_output_layer_is_the_token_embedding(model_type):
    cfg = small(model_type=model_type)
    model, params = build(cfg)
    matrices = [p for p in jax.tree_util.tree_leaves(params) if p.shape == (cfg.alphabet_size, cfg.n_embed)]
    assert len(matrices) == 1
    x = tokens(cfg)
    (logits, _), state = model.apply({"params": params}, x, capture_intermediates=True)
    out = np.asarray(state["intermediates"]["ln"]["__call__"][0])
    np.testing.assert_allclose(logits, out @ np.asarray(matrices[0]).T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["aed", "baseline"])
def test_initial_loss_is_near_uniform(model_type):
    cfg = small(model_type=model_type, alphabet_size=50257, n_embed=32)
    model, params = build(cfg)
    x, y = tokens(cfg, seed=1, batch=4), tokens(cfg, seed=2, batch=4)
    _, losses = jax.jit(model.apply)({"params": params}, x, y)
    assert abs(float(losses["ce"]) - math.log(50257)) < 0.1


def test_init_scales():
    cfg = small(n_embed=64, n_layer=4, alphabet_size=2000)
    _, params = build(cfg)
    block = params["decoder_transformer_blocks_0"]
    assert np.std(block["decoder_feed_forward"]["residual_proj"]["kernel"]) == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert np.std(block["cross_multi_attn_head"]["residual_proj"]["kernel"]) == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert np.std(block["decoder_feed_forward"]["linear"]["kernel"]) == pytest.approx(0.02, rel=0.1)
    assert np.std(params["token_embedding"]["embedding"]) == pytest.approx(0.02, rel=0.05)
    assert "bias" not in block["decoder_ln1"]


@pytest.mark.parametrize("model_type", ["aed", "baseline"])
def test_dropout_only_in_training(model_type):
    cfg = small(model_type=model_type, dropout_rate=0.3)
    model, params = build(cfg)
    x = tokens(cfg)
    run = lambda train, seed: model.apply({"params": params}, x, x, train=train, rngs={"dropout": jax.random.key(seed)})[0]
    np.testing.assert_array_equal(run(False, 0), run(False, 1))
    np.testing.assert_array_equal(run(False, 0), model.apply({"params": params}, x)[0])
    assert not np.allclose(run(True, 0), run(True, 1))


@pytest.mark.fast
def test_no_embedding_loss_in_eval_mode():
    cfg = small(**LOSS)
    model, params = build(cfg)
    x = tokens(cfg)
    _, losses = model.apply({"params": params}, x, x)
    assert float(losses["embedding_loss"]) == 0.0
    assert float(losses["total"]) == float(losses["ce"])


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = small(**LOSS, dtype=jnp.bfloat16)
    model, params = build(cfg)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    x = tokens(cfg)
    logits, losses = model.apply({"params": params}, x, x, train=True)
    assert logits.dtype == jnp.float32 and losses["total"].dtype == jnp.float32
    ref_logits, _ = model_lib.make_model(dataclasses.replace(cfg, dtype=jnp.float32)).apply({"params": params}, x, x)
    np.testing.assert_allclose(logits, ref_logits, atol=0.05)


def test_remat_gives_the_same_gradients():
    cfg = small(**LOSS)
    model, params = build(cfg)
    x = tokens(cfg)
    loss = lambda m: jax.grad(lambda p: m.apply({"params": p}, x, x, train=True)[1]["total"])(params)
    grads = loss(model)
    grads_remat = loss(model_lib.make_model(dataclasses.replace(cfg, remat=True)))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, grads_remat)
