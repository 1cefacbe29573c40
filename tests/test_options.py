"""The seed's "next steps" as options: each off by default, each checked against a direct computation,
each exercised by a config in configs/.

1. unequal encoder/decoder depth (n_layer_encoder, n_layer_decoder)   -> configs/unequal_depth.py
2. positional-embedding subtraction for the baseline                 -> configs/baseline_pos_sub.py
3. dropout for AED                                                   -> configs/aed_dropout.py
4. Huber embedding loss                                              -> configs/huber.py
5. learned causal-convolution aggregation (CAUSAL_CONV)              -> configs/causal_conv.py
"""
import dataclasses
import math
import os

import jax
import numpy as np
import optax
import pytest

from aed_jax import config as config_lib
from aed_jax import model as model_lib
from aed_jax import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V, T, D = 97, 12, 16
SMALL = dict(alphabet_size=V, context_size=T, n_embed=D, n_head=2, n_layer=2)
LOSS = dict(embedding_loss_type="MSE", embedding_loss_coeff=2.0, detach_type="ENCODER_OUT",
            embedding_ln_type="INIT", use_ln_on_encoder_out=True)
# Hand-computed block sizes for D = 16, no bias (cross-attention: 2*n_head = 4 heads, no bias):
#   encoder block: ln1 D + qkv 3D^2 + proj D^2 + ln2 D + ff 4D^2 + 4D^2            = 12*256 + 2*16 = 3,104
#   decoder block: 4 LNs 4D + self-attn 4D^2 + cross (kv 2D^2, q D^2, proj D^2) 4D^2
#                  + ff 8D^2                                                       = 16*256 + 4*16 = 4,160
#   rest (AED with the loss LNs): tokens V*D 1,552 + bridge D^2 256 + ln D 16
#                  + encoder_out_ln 2D 32 + embeddings_ln 2D 32                    = 1,888
ENCODER_BLOCK, DECODER_BLOCK, AED_REST = 3_104, 4_160, 1_888


def small(**kw):
    return model_lib.ModelConfig(**{**SMALL, **kw})


def build(cfg, seed=0):
    model = model_lib.make_model(cfg)
    return model, model_lib.init_params(model, jax.random.key(seed))


def tokens(cfg, seed=1, batch=3):
    return jax.random.randint(jax.random.key(seed), (batch, cfg.context_size), 0, cfg.alphabet_size)


def change_token(x, t):
    return x.at[:, t].set((x[:, t] + 1) % V)


def perturb(params, where, scale=0.3):
    """Adds noise to every parameter whose path contains one of `where` (so that, e.g., an
    identity-initialised LayerNorm or a constant conv kernel cannot hide a wrong placement)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p + scale * jax.random.normal(jax.random.key(len(jax.tree_util.keystr(path))), p.shape)
        if any(w in jax.tree_util.keystr(path) for w in where) else p, params)


def np_layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out = (x - mean) / np.sqrt(var + 1e-5) * np.asarray(p["scale"])
    return out + np.asarray(p["bias"]) if "bias" in p else out


def np_embeddings(params, x):
    return (np.asarray(params["token_embedding"]["embedding"])[np.asarray(x)]
            + np.asarray(params["positional_embedding"]["embedding"])[: x.shape[1]][None])


def last_encoder_output(state, cfg):
    return np.asarray(state["intermediates"][f"encoder_transformer_blocks_{cfg.encoder_layers - 1}"]["__call__"][0])


def load(name):
    return config_lib.load(os.path.join(ROOT, "configs", f"{name}.py"))


def count(params):
    return model_lib.count_params(params)


# --- Defaults: every option is off ------------------------------------------------------------------

@pytest.mark.fast
def test_next_step_options_are_off_by_default():
    aed, baseline = config_lib.base_config("aed").model_config, config_lib.base_config("baseline").model_config
    assert aed.n_layer_encoder is None and aed.n_layer_decoder is None
    assert aed.embedding_aggregation == "CUM_MEAN"
    assert aed.embedding_loss_type == "NONE"
    assert aed.sub_pos_embed_to_decoder == "NO" and baseline.sub_pos_embed_to_decoder == "NO"
    assert aed.dropout_rate == 0.0 and baseline.dropout_rate == 0.0
    assert not any(k in baseline for k in config_lib.AED_KEYS)
    cfg = model_lib.ModelConfig.from_config(config_lib.base_config("aed"))
    assert (cfg.encoder_layers, cfg.decoder_layers) == (13, 13)
    assert cfg.pos_rows == 200
    assert model_lib.ModelConfig.from_config(config_lib.base_config("baseline")).pos_rows == 200
    defaults = model_lib.ModelConfig()
    assert (defaults.n_layer_encoder, defaults.n_layer_decoder, defaults.embedding_aggregation,
            defaults.sub_pos_embed_to_decoder) == (None, None, "CUM_MEAN", "NO")


@pytest.mark.fast
def test_default_models_have_no_option_parameters():
    _, aed = build(small(**LOSS))
    _, baseline = build(small(model_type="baseline"))
    assert "embedding_aggregation" not in aed and "post_sub_pos_ln" not in aed
    assert "post_sub_pos_ln" not in baseline
    assert aed["positional_embedding"]["embedding"].shape == (T, D)
    assert baseline["positional_embedding"]["embedding"].shape == (T, D)


@pytest.mark.parametrize("key,value", [
    ("n_layer_encoder", 0), ("n_layer_decoder", -1), ("embedding_aggregation_kernel_size", 0),
    ("embedding_aggregation", "CUM_SUM"),
])
@pytest.mark.fast
def test_bad_option_values_are_one_line_config_errors(key, value):
    c = load("mse_pos_sub")
    c.model_config[key] = value
    with pytest.raises(config_lib.ConfigError, match=f"model_config.{key}") as e:
        config_lib.validate(c)
    assert "\n" not in str(e.value)


def test_baseline_rejects_aed_only_options():
    c = load("baseline_pos_sub")
    c.model_config.unlock()
    c.model_config.n_layer_encoder = 4
    with pytest.raises(config_lib.ConfigError, match="n_layer_encoder"):
        config_lib.validate(c)


# --- The configs ----------------------------------------------------------------------------------

# Each new config against the seed run it starts from: exactly these model_config keys differ,
# everything else (the rest of the model and the whole training recipe) is the seed's.
NEW_CONFIGS = {
    "unequal_depth": ("mse_pos_sub", {"n_layer_encoder": 16, "n_layer_decoder": 10}, 15_492_600),
    "baseline_pos_sub": ("baseline", {"sub_pos_embed_to_decoder": "YES_NO_LN"}, 16_036_800),
    "aed_dropout": ("mse_pos_sub", {"dropout_rate": 0.2}, 15_763_500),
    "huber": ("mse_pos_sub", {"embedding_loss_type": "HUBER"}, 15_763_500),
    "causal_conv": ("mse_pos_sub", {"embedding_aggregation": "CAUSAL_CONV"}, 15_766_050),
}


@pytest.mark.parametrize("name", sorted(NEW_CONFIGS))
def test_new_config_is_its_seed_run_plus_one_option(name):
    seed_name, changed, _ = NEW_CONFIGS[name]
    new, seed = load(name).to_dict(), load(seed_name).to_dict()
    new_model, seed_model = new.pop("model_config"), seed.pop("model_config")
    assert new == seed  # the training recipe
    assert {k: v for k, v in new_model.items() if seed_model.get(k) != v} == changed
    if name == "causal_conv":
        assert new_model["embedding_aggregation_kernel_size"] == 16
    cfg = model_lib.ModelConfig.from_config(load(name))
    assert all(getattr(cfg, k) == v for k, v in changed.items())


@pytest.mark.parametrize("name", sorted(NEW_CONFIGS))
def test_new_config_docstring_names_its_next_step(name):
    with open(os.path.join(ROOT, "configs", f"{name}.py")) as f:
        source = f.read()
    first_line = source.split('"""')[1].splitlines()[0]
    assert first_line.startswith('Next step "')
    assert f"{NEW_CONFIGS[name][2]:,} params" in first_line


@pytest.mark.parametrize("name", sorted(NEW_CONFIGS))
def test_new_config_parameter_count_exact(name):
    """Hand counts (D = 150, cross 10 heads, V = 50,257, no bias; positional table excluded):
    AED encoder block 12*150^2 + 2*150 = 270,300; decoder block 16*150^2 + 4*150 = 360,600;
    rest 50,257*150 + 150^2 + 150 + 2*150 + 2*150 = 7,561,800.
    unequal_depth: 16*270,300 + 10*360,600 + 7,561,800 = 15,492,600.
    baseline_pos_sub: D = 160, 26 blocks of 12*160^2 + 2*160 = 307,520, + 50,257*160 + 160
    = 16,036,800 (YES_NO_LN has no parameter; the extra positional row is excluded).
    causal_conv: the seed's 15,763,500 + kernel 16*1*150 + bias 150 = 15,766,050."""
    text = summary.summarize(load(name))
    assert text.splitlines()[-1] == f"params: {NEW_CONFIGS[name][2]:,}"


def test_unequal_depth_summary_lists_both_stacks():
    rows = {line.split()[0]: int(line.split()[1].replace(",", ""))
            for line in summary.summarize(load("unequal_depth")).splitlines()[2:-1]}
    encoder = sorted(k for k in rows if k.startswith("encoder_transformer_blocks_"))
    decoder = sorted(k for k in rows if k.startswith("decoder_transformer_blocks_"))
    assert encoder == sorted(f"encoder_transformer_blocks_{i}" for i in range(16))
    assert decoder == sorted(f"decoder_transformer_blocks_{i}" for i in range(10))
    assert {rows[k] for k in encoder} == {270_300} and {rows[k] for k in decoder} == {360_600}
    assert rows["positional_embedding"] == 201 * 150


# --- 1. Unequal encoder and decoder depth -----------------------------------------------------------

@pytest.mark.parametrize("enc,dec", [(3, 1), (1, 3)])
def test_unequal_depth_builds_each_stack_and_counts(enc, dec):
    cfg = small(**LOSS, n_layer_encoder=enc, n_layer_decoder=dec)
    assert (cfg.encoder_layers, cfg.decoder_layers) == (enc, dec)
    _, params = build(cfg)
    assert sorted(k for k in params if k.startswith("encoder_transformer_blocks_")) == \
        [f"encoder_transformer_blocks_{i}" for i in range(enc)]
    assert sorted(k for k in params if k.startswith("decoder_transformer_blocks_")) == \
        [f"decoder_transformer_blocks_{i}" for i in range(dec)]
    assert count(params["encoder_transformer_blocks_0"]) == ENCODER_BLOCK
    assert count(params["decoder_transformer_blocks_0"]) == DECODER_BLOCK
    expected = {(3, 1): 3 * 3_104 + 4_160 + 1_888, (1, 3): 3_104 + 3 * 4_160 + 1_888}[(enc, dec)]
    assert expected == enc * ENCODER_BLOCK + dec * DECODER_BLOCK + AED_REST
    assert count(params) == expected  # 15,360 and 17,472
    _, equal = build(small(**LOSS))
    assert count(equal) == 2 * ENCODER_BLOCK + 2 * DECODER_BLOCK + AED_REST == 16_416


def test_unequal_depth_one_side_only_defaults_the_other_to_n_layer():
    cfg = small(**LOSS, n_layer_decoder=1)
    assert (cfg.encoder_layers, cfg.decoder_layers) == (2, 1)
    _, params = build(cfg)
    assert count(params) == 2 * ENCODER_BLOCK + DECODER_BLOCK + AED_REST


def test_unequal_depth_residual_init_uses_n_layer():
    """residual_proj ~ N(0, 0.02/sqrt(2*n_layer)) with n_layer the config value, whatever the depths.
    Parameters are drawn per module name, so models that differ only in n_layer differ only in the
    scale of their residual_proj weights, and a model that differs only in depth has the same blocks."""
    depths = dict(n_layer_encoder=3, n_layer_decoder=1)
    _, params = build(small(**LOSS, **depths))  # n_layer 2
    _, params_4 = build(small(**LOSS, **depths, n_layer=4))
    flat, flat_4 = (dict(jax.tree_util.tree_leaves_with_path(p)) for p in (params, params_4))
    residual = [k for k in flat if "residual_proj" in jax.tree_util.keystr(k)]
    assert len(residual) == 3 * 2 + 1 * 3
    for path, leaf in flat.items():
        if path in residual:  # 0.02/sqrt(2*4) = 0.02/sqrt(2*2) / sqrt(2)
            np.testing.assert_allclose(flat_4[path], leaf / math.sqrt(2), rtol=1e-6)
        else:
            np.testing.assert_array_equal(flat_4[path], leaf)
    _, equal = build(small(**LOSS))  # 2 + 2 blocks: the shared ones are bit-identical
    for name in ("encoder_transformer_blocks_0", "encoder_transformer_blocks_1", "decoder_transformer_blocks_0"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, params[name], equal[name])
    # The spread itself, with n_layer 1 under 3 + 1 blocks: 0.02/sqrt(2) = 0.0141, not the
    # 0.02/sqrt(2*3) = 0.0082 or 0.02/sqrt(2*4) = 0.0071 a depth-based init would give.
    _, params_1 = build(small(**LOSS, **depths, n_layer=1))
    values = np.concatenate([np.ravel(p) for path, p in jax.tree_util.tree_leaves_with_path(params_1)
                             if "residual_proj" in jax.tree_util.keystr(path)])
    assert values.size == 3 * (256 + 1024) + (256 + 256 + 1024)
    assert np.std(values) == pytest.approx(0.02 / math.sqrt(2), rel=0.05)


@pytest.mark.fast
def test_unequal_depth_is_causal():
    cfg = small(**LOSS, n_layer_encoder=3, n_layer_decoder=1, sub_pos_embed_to_decoder="YES_NO_LN")
    model, params = build(cfg)
    run = lambda x: model.apply({"params": params}, x, x, train=True, mutable=["intermediates"])
    x = tokens(cfg)
    (logits1, _), state1 = run(x)
    for t in (0, 6, T - 1):
        (logits2, _), state2 = run(change_token(x, t))
        emb1, emb2 = state1["intermediates"]["embedding_loss_BxT"][0], state2["intermediates"]["embedding_loss_BxT"][0]
        np.testing.assert_array_equal(logits1[:, :t], logits2[:, :t])
        np.testing.assert_array_equal(emb1[:, :t], emb2[:, :t])
        assert not np.allclose(logits1[:, t:], logits2[:, t:])
        assert not np.allclose(emb1[:, t:], emb2[:, t:])


def test_unequal_depth_scan_layers_stacks_each_depth():
    """With scan_layers the two stacks are scanned over their own depths; stack_layers/unstack_layers
    map the per-layer parameters to exactly that layout and back."""
    cfg = small(**LOSS, n_layer_encoder=3, n_layer_decoder=1)
    _, params = build(cfg)
    scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
    scanned_model = model_lib.make_model(scanned_cfg)
    shapes = jax.eval_shape(lambda: model_lib.init_params(scanned_model, jax.random.key(0)))
    assert jax.tree_util.tree_leaves(shapes["encoder_transformer_blocks"])[0].shape[0] == 3
    assert jax.tree_util.tree_leaves(shapes["decoder_transformer_blocks"])[0].shape[0] == 1
    assert count(shapes) == count(params)
    stacked = model_lib.stack_layers(params, scanned_cfg)
    assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure(shapes)
    assert jax.tree_util.tree_map(lambda a: a.shape, stacked) == jax.tree_util.tree_map(lambda a: a.shape, shapes)
    jax.tree_util.tree_map(np.testing.assert_array_equal, model_lib.unstack_layers(stacked), params)


# --- 2. Positional-embedding subtraction for the baseline -------------------------------------------

@pytest.mark.parametrize("sub,use_bias", [("YES_NO_LN", False), ("YES_LN", False), ("YES_LN", True)])
def test_baseline_pos_sub_subtracts_next_position_rows(sub, use_bias):
    cfg = small(model_type="baseline", sub_pos_embed_to_decoder=sub, use_bias=use_bias)
    assert cfg.pos_rows == T + 1
    model, params = build(cfg)
    pos = np.asarray(params["positional_embedding"]["embedding"])
    assert pos.shape == (T + 1, D)
    assert ("post_sub_pos_ln" in params) == (sub == "YES_LN")
    params = perturb(params, ["post_sub_pos_ln"])  # not the identity, so it has to be applied
    x = tokens(cfg)
    (logits, losses), state = model.apply({"params": params}, x, x, capture_intermediates=True)
    out = np.asarray(state["intermediates"]["ln"]["__call__"][0]) - pos[1:T + 1][None]
    if sub == "YES_LN":
        out = np_layer_norm(out, params["post_sub_pos_ln"])
    expected = out @ np.asarray(params["token_embedding"]["embedding"]).T
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(losses["ce"], optax.softmax_cross_entropy_with_integer_labels(expected, x).mean(),
                               rtol=1e-5)
    # The ln output itself is unchanged by the option (same params, NO): only the head differs.
    _, state_no = model_lib.make_model(dataclasses.replace(cfg, sub_pos_embed_to_decoder="NO")).apply(
        {"params": {k: v if k != "positional_embedding" else {"embedding": v["embedding"][:T]}
                    for k, v in params.items() if k != "post_sub_pos_ln"}}, x, capture_intermediates=True)
    np.testing.assert_allclose(state_no["intermediates"]["ln"]["__call__"][0],
                               state["intermediates"]["ln"]["__call__"][0], rtol=1e-6, atol=1e-6)


def test_baseline_pos_sub_counts():
    _, no = build(small(model_type="baseline"))
    _, no_ln = build(small(model_type="baseline", sub_pos_embed_to_decoder="YES_NO_LN"))
    _, ln = build(small(model_type="baseline", sub_pos_embed_to_decoder="YES_LN"))
    # 2 blocks of 3,104 + tokens 1,552 + ln 16; the positional table is not counted
    assert count(no) == count(no_ln) == 2 * 3_104 + 1_552 + 16 == 7_776
    assert count(ln) == 7_776 + D  # post_sub_pos_ln: a scale, no bias


def test_baseline_pos_sub_trains_the_last_positional_row():
    """Row T is used only by the subtraction: it gets gradient, and rows 1..T get the subtraction's
    share on top of the input path's."""
    cfg = small(model_type="baseline", sub_pos_embed_to_decoder="YES_NO_LN", n_layer=1)
    model, params = build(cfg)
    x = tokens(cfg)
    grad = jax.jit(jax.grad(lambda p: model.apply({"params": p}, x, x, train=True)[1]["total"]))(params)
    g = np.asarray(grad["positional_embedding"]["embedding"])
    assert np.all(np.abs(g).sum(-1) > 0)


@pytest.mark.fast
def test_baseline_pos_sub_is_causal():
    cfg = small(model_type="baseline", sub_pos_embed_to_decoder="YES_LN")
    model, params = build(cfg)
    run = lambda x: model.apply({"params": params}, x)[0]
    x = tokens(cfg)
    logits1 = run(x)
    for t in (0, 5, T - 1):
        logits2 = run(change_token(x, t))
        np.testing.assert_array_equal(logits1[:, :t], logits2[:, :t])
        assert not np.allclose(logits1[:, t:], logits2[:, t:])


def test_baseline_pos_sub_cached_decoding_matches_the_full_forward():
    """Prefill 5 tokens, then one a call: the same logits as the full window (the subtracted rows
    follow the cache index)."""
    cfg = small(model_type="baseline", sub_pos_embed_to_decoder="YES_LN")
    model, params = build(cfg)
    params = jax.tree_util.tree_map(lambda p: p * 8.0 if p.ndim == 2 else p, params)
    x = tokens(cfg)
    full = model.apply({"params": params}, x)[0]
    (logits, _), variables = model.apply({"params": params}, x[:, :5], mutable=["cache"])
    rows = [logits]
    step = jax.jit(lambda c, tok: model.apply({"params": params, "cache": c}, tok, mutable=["cache"]))
    for i in range(5, T):
        (logits, _), variables = step(variables["cache"], x[:, i:i + 1])
        rows.append(logits)
    np.testing.assert_allclose(np.concatenate(rows, axis=1), full, rtol=1e-4, atol=1e-4)


# --- 3. Dropout for AED ------------------------------------------------------------------------------

AED_DROPOUT = dict(LOSS, sub_pos_embed_to_decoder="YES_NO_LN", dropout_rate=0.5)


def dropout_key(seed):
    """An "rbg" key: the same dropout, but XLA compiles its bits in ~1 s on CPU instead of ~5 s
    (threefry, once per dropout site). Which generator draws the mask is not under test."""
    return jax.random.key(seed, impl="rbg")


def _assert_dropout(out, inp, rate, where=None):
    """`out` is inverted dropout of `inp`: kept entries scaled by 1/(1-rate), about `rate` zeroed."""
    out, inp = np.asarray(out), np.asarray(inp)
    where = np.ones(out.shape, bool) if where is None else where
    kept = (out != 0) & where
    np.testing.assert_allclose(out[kept], inp[kept] / (1 - rate), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[~where], 0.0)  # e.g. the masked (future) attention probabilities
    assert abs(kept.sum() / where.sum() - (1 - rate)) < 0.1


def _np_probs(q, k, heads):
    b, t, d = q.shape
    q, k = q.reshape(b, t, heads, d // heads), k.reshape(b, k.shape[1], heads, d // heads)
    s = np.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(d // heads)
    s = np.where(np.tril(np.ones((t, k.shape[1]), bool))[None, None], s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_aed_dropout_sites():
    """Dropout on the embeddings, on the attention probabilities (self and cross) and on every
    residual output, each an inverted dropout of what the model computed before it."""
    cfg = small(**AED_DROPOUT)
    model, params = build(cfg)
    x = tokens(cfg)
    _, state = model.apply({"params": params}, x, x, train=True, rngs={"dropout": dropout_key(7)},
                           capture_intermediates=True)
    it = jax.tree_util.tree_map(np.asarray, state["intermediates"])
    r = cfg.dropout_rate
    _assert_dropout(it["Dropout_0"]["__call__"][0], np_embeddings(params, x), r)
    causal = np.broadcast_to(np.tril(np.ones((T, T), bool)), (3, 1, T, T))
    enc = it["encoder_transformer_blocks_1"]
    q, k, _ = np.split(enc["multi_attn_head"]["batch_attn_weights"]["__call__"][0], 3, axis=-1)
    _assert_dropout(enc["multi_attn_head"]["Dropout_0"]["__call__"][0], _np_probs(q, k, cfg.n_head),
                    r, np.broadcast_to(causal, (3, cfg.n_head, T, T)))
    _assert_dropout(enc["multi_attn_head"]["Dropout_1"]["__call__"][0],
                    enc["multi_attn_head"]["residual_proj"]["__call__"][0], r)
    _assert_dropout(enc["feed_forward"]["Dropout_0"]["__call__"][0], enc["feed_forward"]["residual_proj"]["__call__"][0], r)
    dec = it["decoder_transformer_blocks_0"]
    cross = dec["cross_multi_attn_head"]
    k, _ = np.split(cross["k_v_weights"]["__call__"][0], 2, axis=-1)
    _assert_dropout(cross["Dropout_0"]["__call__"][0], _np_probs(cross["q_weights"]["__call__"][0], k, cfg.cross_heads),
                    r, np.broadcast_to(causal, (3, cfg.cross_heads, T, T)))
    _assert_dropout(cross["Dropout_1"]["__call__"][0], cross["residual_proj"]["__call__"][0], r)
    _assert_dropout(dec["decoder_multi_attn_head"]["Dropout_1"]["__call__"][0],
                    dec["decoder_multi_attn_head"]["residual_proj"]["__call__"][0], r)
    _assert_dropout(dec["decoder_feed_forward"]["Dropout_0"]["__call__"][0],
                    dec["decoder_feed_forward"]["residual_proj"]["__call__"][0], r)


def test_aed_dropout_train_differs_by_key_eval_does_not():
    cfg = small(**AED_DROPOUT)
    model, params = build(cfg)
    x = tokens(cfg)
    run = lambda train, key: model.apply({"params": params}, x, x, train=train, rngs={"dropout": key})
    (l0, s0), (l1, s1) = run(True, dropout_key(0)), run(True, dropout_key(1))
    assert not np.allclose(l0, l1)
    assert float(s0["embedding_loss"]) != pytest.approx(float(s1["embedding_loss"]))  # E is post-dropout
    np.testing.assert_array_equal(run(True, dropout_key(0))[0], l0)  # same key, same draw
    (e0, m0), (e1, m1) = run(False, dropout_key(0)), run(False, dropout_key(1))
    np.testing.assert_array_equal(e0, e1)
    np.testing.assert_array_equal(e0, model.apply({"params": params}, x, x)[0])
    assert float(m0["total"]) == float(m0["ce"]) == float(m1["ce"])
    # The rate-0 model with the same parameters: train mode equals eval mode (only dropout differs).
    plain = model_lib.make_model(dataclasses.replace(cfg, dropout_rate=0.0))
    plain_train = plain.apply({"params": params}, x, x, train=True, rngs={"dropout": dropout_key(0)})
    np.testing.assert_allclose(plain_train[0], e0, rtol=1e-6, atol=1e-6)


def test_aed_dropout_training_loss_is_finite_and_falls():
    cfg = small(**dict(AED_DROPOUT, dropout_rate=0.2, n_layer=1))
    model, params = build(cfg)
    x, y = tokens(cfg, seed=1, batch=4), tokens(cfg, seed=2, batch=4)
    opt = optax.adamw(1e-2, b1=0.9, b2=0.95, weight_decay=0.1)

    @jax.jit
    def step(params, state, key):
        (loss, losses), grads = jax.value_and_grad(
            lambda p: (lambda out: (out[1]["total"], out[1]))(
                model.apply({"params": p}, x, y, train=True, rngs={"dropout": key})), has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, losses, grads

    state, history = opt.init(params), []
    for i in range(30):
        params, state, losses, grads = step(params, state, dropout_key(i))
        assert all(np.isfinite(float(v)) for v in losses.values())
        assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
        history.append(float(losses["total"]))
    assert float(losses["embedding_loss"]) > 0
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.5


# --- 4. Huber embedding loss -------------------------------------------------------------------------

def np_huber(a, b, delta=1.0):
    d = np.abs(a - b)
    return np.where(d <= delta, 0.5 * d ** 2, delta * (d - 0.5 * delta))


@pytest.mark.parametrize("ln_type", ["INIT", "AVG_CUM_SUM"])
@pytest.mark.parametrize("enc_ln", [True, False])
@pytest.mark.fast
def test_huber_loss_matches_numpy(ln_type, enc_ln):
    cfg = small(**dict(LOSS, embedding_loss_type="HUBER", embedding_ln_type=ln_type, use_ln_on_encoder_out=enc_ln,
                       embedding_loss_coeff=3.0))
    model, params = build(cfg)
    # Perturbed LNs (as test_model does) with a larger encoder_out_ln scale: both Huber branches occur.
    params = perturb(params, ["ln"])
    if enc_ln:
        params["encoder_out_ln"]["scale"] = params["encoder_out_ln"]["scale"] * 2.0
    x = tokens(cfg)
    (_, losses), state = model.apply({"params": params}, x, x, train=True, capture_intermediates=True)
    enc = last_encoder_output(state, cfg)
    emb = np_embeddings(params, x)
    if enc_ln:
        enc = np_layer_norm(enc, params["encoder_out_ln"])
    if ln_type == "INIT":
        emb = np_layer_norm(emb, params["embeddings_ln"])
    avg = np.cumsum(emb, axis=1) / np.arange(1, T + 1)[None, :, None]
    if ln_type == "AVG_CUM_SUM":
        avg = np_layer_norm(avg, params["embeddings_ln"])
    diff = np.abs(avg - enc)
    assert 0.05 < (diff > 1.0).mean() < 0.95, "both the quadratic and the linear branch must be tested"
    expected = np_huber(avg, enc).mean()
    np.testing.assert_allclose(losses["embedding_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(losses["scaled_embedding_loss"], 3.0 * expected, rtol=1e-5)
    np.testing.assert_allclose(losses["total"], losses["ce"] + 3.0 * expected, rtol=1e-5)
    assert float(losses["embedding_loss"]) < 0.5 * ((avg - enc) ** 2).mean()  # below MSE/2 once |diff| > 1


def test_huber_is_half_mse_for_small_differences():
    """With every |difference| within delta, Huber is exactly half the squared error."""
    cfg_h = small(**dict(LOSS, embedding_loss_type="HUBER", use_ln_on_encoder_out=False))
    model_h, params = build(cfg_h)
    model_m = model_lib.make_model(dataclasses.replace(cfg_h, embedding_loss_type="MSE"))
    # Shrink the LN scales so the averaged embeddings are small; the encoder output is ~0.02-sized too.
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: p * 0.1 if "embeddings_ln" in jax.tree_util.keystr(path) else p, params)
    x = tokens(cfg_h)
    (_, h), state = model_h.apply({"params": params}, x, x, train=True, mutable=["intermediates"])
    _, m = model_m.apply({"params": params}, x, x, train=True)
    np.testing.assert_allclose(h["embedding_loss"], 0.5 * m["embedding_loss"], rtol=1e-5)
    assert state["intermediates"]["embedding_loss_BxT"][0].shape == (3, T)


def test_a_loss_type_config_allows_but_losses_lacks_is_an_error_not_another_loss(monkeypatch):
    """A new embedding_loss_type added to config.py alone (docs/package.md, "Add a model option") stops
    the model's first call, naming it, where it once trained as LOG_COSINE."""
    monkeypatch.setattr(config_lib, "EMBEDDING_LOSS_TYPES", config_lib.EMBEDDING_LOSS_TYPES + ("L1",))
    with pytest.raises(ValueError, match="embedding_loss_type 'L1' has no terms in losses.embedding_loss_terms"):
        build(small(**dict(LOSS, embedding_loss_type="L1")))


# --- 5. Learned causal-convolution aggregation --------------------------------------------------------

def conv_cfg(k=4, **kw):
    return small(**{**LOSS, "embedding_aggregation": "CAUSAL_CONV", "embedding_aggregation_kernel_size": k, **kw})


def np_causal_depthwise_conv(e, kernel_KxD, bias_D):
    """out[t] = sum_j kernel[j] * e[t - K + 1 + j] + bias, zeros before position 0."""
    k = kernel_KxD.shape[0]
    out = np.zeros_like(e) + bias_D
    for t in range(e.shape[1]):
        for j in range(k):
            s = t - k + 1 + j
            if s >= 0:
                out[:, t] += kernel_KxD[j] * e[:, s]
    return out


@pytest.mark.parametrize("k", [4, 16])
def test_causal_conv_parameters_and_init(k):
    _, params = build(conv_cfg(k))
    conv = params["embedding_aggregation"]
    assert conv["kernel"].shape == (k, 1, D) and conv["bias"].shape == (D,)
    np.testing.assert_array_equal(conv["kernel"], np.full((k, 1, D), 1.0 / k, np.float32))
    np.testing.assert_array_equal(conv["bias"], np.zeros(D, np.float32))
    _, cum_mean = build(small(**LOSS))
    assert count(params) == count(cum_mean) + k * D + D


@pytest.mark.parametrize("k,ln_type,loss_type", [
    (1, "INIT", "MSE"), (4, "INIT", "MSE"), (16, "INIT", "MSE"), (4, "AVG_CUM_SUM", "MSE"), (4, "INIT", "COSINE"),
    (4, "INIT", "HUBER"),
])
def test_causal_conv_loss_matches_numpy(k, ln_type, loss_type):
    cfg = conv_cfg(k, embedding_ln_type=ln_type, embedding_loss_type=loss_type)
    model, params = build(cfg)
    params = perturb(params, ["ln", "embedding_aggregation"])  # a non-constant kernel, a non-zero bias
    x = tokens(cfg)
    (_, losses), state = model.apply({"params": params}, x, x, train=True, capture_intermediates=True)
    enc = np_layer_norm(last_encoder_output(state, cfg), params["encoder_out_ln"])
    emb = np_embeddings(params, x)
    if ln_type == "INIT":
        emb = np_layer_norm(emb, params["embeddings_ln"])
    conv = params["embedding_aggregation"]
    avg = np_causal_depthwise_conv(emb, np.asarray(conv["kernel"])[:, 0], np.asarray(conv["bias"]))
    np.testing.assert_allclose(state["intermediates"]["embedding_aggregation"]["__call__"][0], avg,
                               rtol=1e-5, atol=1e-5)
    if ln_type == "AVG_CUM_SUM":
        avg = np_layer_norm(avg, params["embeddings_ln"])
    if loss_type == "MSE":
        terms = ((avg - enc) ** 2).mean(-1)
    elif loss_type == "HUBER":
        terms = np_huber(avg, enc).mean(-1)
    else:
        cos = (avg * enc).sum(-1) / (np.linalg.norm(avg, axis=-1) * np.linalg.norm(enc, axis=-1))
        terms = 1 - (cos + 1) / 2
    np.testing.assert_allclose(state["intermediates"]["embedding_loss_BxT"][0], terms, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(losses["embedding_loss"], terms.mean(), rtol=1e-5)
    np.testing.assert_allclose(losses["total"], losses["ce"] + 2.0 * terms.mean(), rtol=1e-5)


def test_causal_conv_at_init_is_a_window_mean():
    """With the 1/K, 0 init, position t >= K-1 gets the mean of the last K (LN'd) embeddings; earlier
    positions see the zero padding (their sum over K), unlike the cumulative mean."""
    k = 4
    cfg = conv_cfg(k)
    model, params = build(cfg)
    x = tokens(cfg)
    _, state = model.apply({"params": params}, x, x, train=True, capture_intermediates=True)
    avg = np.asarray(state["intermediates"]["embedding_aggregation"]["__call__"][0])
    emb = np_layer_norm(np_embeddings(params, x), params["embeddings_ln"])
    for t in range(T):
        np.testing.assert_allclose(avg[:, t], emb[:, max(0, t - k + 1):t + 1].sum(1) / k, rtol=1e-5, atol=1e-6)


@pytest.mark.fast
def test_causal_conv_is_causal_and_local():
    """Changing token t changes the aggregation only at t..t+K-1 and no loss term before t."""
    k = 4
    cfg = conv_cfg(k, sub_pos_embed_to_decoder="YES_NO_LN")
    model, params = build(cfg)
    params = perturb(params, ["embedding_aggregation"])
    run = lambda x: model.apply({"params": params}, x, x, train=True, capture_intermediates=True)
    x = tokens(cfg)
    (logits1, _), s1 = run(x)
    for t in (0, 5, T - 2):
        (logits2, _), s2 = run(change_token(x, t))
        agg1, agg2 = (s["intermediates"]["embedding_aggregation"]["__call__"][0] for s in (s1, s2))
        terms1, terms2 = (s["intermediates"]["embedding_loss_BxT"][0] for s in (s1, s2))
        window = slice(t, min(t + k, T))
        np.testing.assert_array_equal(agg1[:, :t], agg2[:, :t])
        np.testing.assert_array_equal(agg1[:, t + k:], agg2[:, t + k:])
        assert np.all(np.abs(agg1[:, window] - agg2[:, window]).max(-1) > 0)
        np.testing.assert_array_equal(terms1[:, :t], terms2[:, :t])
        assert not np.allclose(terms1[:, t:], terms2[:, t:])
        np.testing.assert_array_equal(logits1[:, :t], logits2[:, :t])


def test_causal_conv_gets_gradient_from_the_embedding_loss_only():
    cfg = conv_cfg(4, n_layer=1)
    model, params = build(cfg)
    x = tokens(cfg)
    grads = jax.jit(jax.jacrev(lambda p: model.apply({"params": p}, x, x, train=True)[1]))(params)
    total, ce, emb_only = grads["total"], grads["ce"], grads["scaled_embedding_loss"]
    assert np.all(np.abs(np.asarray(total["embedding_aggregation"]["kernel"])).sum(0) > 0)
    assert np.all(np.abs(np.asarray(total["embedding_aggregation"]["bias"])) > 0)
    assert float(np.abs(np.asarray(ce["embedding_aggregation"]["kernel"])).sum()) == 0.0
    # Through the conv the embedding loss also reaches the token embeddings (ENCODER_OUT detached).
    assert float(np.abs(np.asarray(emb_only["token_embedding"]["embedding"])).sum()) > 0
    for name, sub in emb_only.items():
        if name.startswith("encoder_transformer_blocks") or name.startswith("decoder_"):
            assert all(float(np.abs(g).sum()) == 0.0 for g in jax.tree_util.tree_leaves(sub))


def test_causal_conv_off_in_eval_mode():
    cfg = conv_cfg(4)
    model, params = build(cfg)
    x = tokens(cfg)
    logits, losses = model.apply({"params": params}, x, x)
    assert float(losses["embedding_loss"]) == 0.0 and float(losses["total"]) == float(losses["ce"])
    # The aggregation changes no logit: the CUM_MEAN model with the same parameters gives the same ones.
    cum = model_lib.make_model(dataclasses.replace(cfg, embedding_aggregation="CUM_MEAN"))
    same = {k: v for k, v in params.items() if k != "embedding_aggregation"}
    np.testing.assert_array_equal(cum.apply({"params": same}, x, x)[0], logits)


# --- 6. Embedding losses that shrinking cannot meet (ours, issue 34) ------------------------------------

def np_standardise(v):
    centred = v - v.mean(-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-12)


def np_variance_floor(enc):
    """[B]: mean over features of max(0, 1 - sqrt(Var over the sequence's positions + 1e-4))."""
    return np.maximum(0.0, 1.0 - np.sqrt(enc.var(axis=1) + 1e-4)).mean(-1)


def np_sides(params, state, cfg, x):
    """The encoder output and the running mean of the input embeddings, both raw (before any LayerNorm)."""
    emb = np_embeddings(params, x)
    return last_encoder_output(state, cfg), np.cumsum(emb, axis=1) / np.arange(1, T + 1)[None, :, None]


def np_parameter_free_terms(loss_type, enc, avg):
    if loss_type == "NORM_MSE":
        return ((np_standardise(avg) - np_standardise(enc)) ** 2).mean(-1)
    a, e = avg - avg.mean(-1, keepdims=True), enc - enc.mean(-1, keepdims=True)
    cos = (a * e).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(e, axis=-1))
    return 1.0 - (cos + 1.0) / 2.0


@pytest.mark.parametrize("loss_type", config_lib.PARAMETER_FREE_LOSSES)
@pytest.mark.parametrize("ln_type", ["INIT", "AVG_CUM_SUM"])
@pytest.mark.fast
def test_parameter_free_losses_match_numpy(loss_type, ln_type):
    """NORM_MSE and CENTERED_COSINE compare the sides before the LayerNorms (perturbed here, so that using
    them anywhere would show), each standardised or centred over its features."""
    cfg = small(**dict(LOSS, embedding_loss_type=loss_type, embedding_ln_type=ln_type, embedding_loss_coeff=3.0))
    model, params = build(cfg)
    params = perturb(params, ["ln"])
    x = tokens(cfg)
    (_, losses), state = model.apply({"params": params}, x, x, train=True, capture_intermediates=True)
    enc, avg = np_sides(params, state, cfg, x)
    terms = np_parameter_free_terms(loss_type, enc, avg)
    np.testing.assert_allclose(state["intermediates"]["embedding_loss_BxT"][0], terms, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses["embedding_loss"], terms.mean(), rtol=1e-5)
    np.testing.assert_allclose(losses["total"], losses["ce"] + 3.0 * terms.mean(), rtol=1e-5)
    # The two are one function up to a factor: NORM_MSE = 2 - 2r, CENTERED_COSINE = (1 - r) / 2.
    other = [t for t in config_lib.PARAMETER_FREE_LOSSES if t != loss_type][0]
    ratio = 4.0 if loss_type == "NORM_MSE" else 0.25
    np.testing.assert_allclose(terms, ratio * np_parameter_free_terms(other, enc, avg), rtol=1e-4)
    # The LayerNorms stay declared: the parameters (and their count) of the same config with a seed loss.
    _, seed_params = build(dataclasses.replace(cfg, embedding_loss_type="MSE"))
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(seed_params)


@pytest.mark.parametrize("loss_type", config_lib.PARAMETER_FREE_LOSSES)
@pytest.mark.fast
def test_parameter_free_losses_ignore_the_layer_norm_scales_and_biases(loss_type):
    """Scaling both embedding-loss LayerNorms' scales by 1e-3 and giving them one shared bias, the collapse
    that meets the seed's MSE, leaves these losses exactly as they were; the seed's MSE falls a hundredfold."""
    cfg = small(**LOSS)
    model, params = build(cfg)
    params = perturb(params, ["ln"])
    shared = jax.random.normal(jax.random.key(7), (D,))
    collapsed = dict(params, **{n: {"scale": params[n]["scale"] * 1e-3, "bias": shared}
                                for n in model_lib.EMBEDDING_LNS})
    x = tokens(cfg)

    def loss(p, c):
        return float(model_lib.make_model(c).apply({"params": p}, x, x, train=True)[1]["embedding_loss"])

    free = dataclasses.replace(cfg, embedding_loss_type=loss_type)
    assert loss(collapsed, free) == loss(params, free)
    assert loss(collapsed, cfg) < 0.01 * loss(params, cfg)  # the hole these losses close: a real test


@pytest.mark.parametrize("loss_type,detach", [("MSE", "ENCODER_OUT"), ("NORM_MSE", "NONE"),
                                              ("CENTERED_COSINE", "EMBEDDING")])
@pytest.mark.fast
def test_variance_floor_matches_numpy(loss_type, detach):
    """embedding_var_coeff times each sequence's variance hinge on the encoder side as the loss compares it
    (after encoder_out_ln for MSE, standardised for the parameter-free losses), added to every position's term."""
    cfg = small(**dict(LOSS, embedding_loss_type=loss_type, detach_type=detach, embedding_var_coeff=0.5))
    model, params = build(cfg)
    params = perturb(params, ["ln"])
    x = tokens(cfg)
    (_, losses), state = model.apply({"params": params}, x, x, train=True, capture_intermediates=True)
    enc, avg = np_sides(params, state, cfg, x)
    if loss_type == "MSE":
        enc = np_layer_norm(enc, params["encoder_out_ln"])
        avg = np.cumsum(np_layer_norm(np_embeddings(params, x), params["embeddings_ln"]), axis=1)
        avg = avg / np.arange(1, T + 1)[None, :, None]
        align = ((avg - enc) ** 2).mean(-1)
        floor = np_variance_floor(enc)
    else:
        align = np_parameter_free_terms(loss_type, enc, avg)
        floor = np_variance_floor(np_standardise(enc))
    assert floor.min() > 0.01  # the floor is active: a real test
    terms = align + 0.5 * floor[:, None]
    np.testing.assert_allclose(state["intermediates"]["embedding_loss_BxT"][0], terms, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses["embedding_loss"], terms.mean(), rtol=1e-5)


@pytest.mark.fast
def test_variance_floor_makes_shrinking_the_encoder_ln_cost():
    """With the floor, the seed's MSE can no longer be met by shrinking encoder_out_ln's scale: shrunk 1000-fold,
    the MSE part falls but the loss rises, the floor then near its maximum of 1 a feature."""
    cfg = small(**LOSS)
    model, params = build(cfg)
    x = tokens(cfg)
    shrunk = dict(params, encoder_out_ln={**params["encoder_out_ln"], "scale": params["encoder_out_ln"]["scale"] * 1e-3})
    floored = model_lib.make_model(dataclasses.replace(cfg, embedding_var_coeff=1.0))

    def loss(m, p):
        return float(m.apply({"params": p}, x, x, train=True)[1]["embedding_loss"])

    assert loss(model, shrunk) < loss(model, params)
    assert loss(floored, shrunk) > loss(floored, params) + 0.3
    assert loss(floored, shrunk) - loss(model, shrunk) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("loss_type", config_lib.PARAMETER_FREE_LOSSES)
def test_parameter_free_losses_train_the_side_detach_type_leaves(loss_type):
    """ENCODER_OUT (the seed's): the loss trains the input embeddings alone, no encoder block and no LayerNorm
    (none is in its path); EMBEDDING: it trains the encoder blocks."""
    for detach, encoder_trained in (("ENCODER_OUT", False), ("EMBEDDING", True)):
        cfg = small(**dict(LOSS, embedding_loss_type=loss_type, detach_type=detach, n_layer=1))
        model, params = build(cfg)
        x = tokens(cfg)
        grads = jax.grad(lambda p: model.apply({"params": p}, x, x, train=True)[1]["scaled_embedding_loss"])(params)
        size = {name: sum(float(np.abs(g).sum()) for g in jax.tree_util.tree_leaves(sub)) for name, sub in grads.items()}
        assert (size["encoder_transformer_blocks_0"] > 0) == encoder_trained
        assert size["token_embedding"] > 0  # ENCODER_OUT: through the running mean; EMBEDDING: through the encoder
        assert size["encoder_out_ln"] == size["embeddings_ln"] == 0.0
        assert size["decoder_transformer_blocks_0"] == 0.0


@pytest.mark.parametrize("model,message", [
    (dict(embedding_var_coeff=-1.0), "model_config.embedding_var_coeff: must be a finite number >= 0"),
    (dict(embedding_var_coeff=float("nan")), "model_config.embedding_var_coeff: must be a finite number >= 0"),
    (dict(embedding_loss_type="NONE", embedding_loss_coeff=None, use_ln_on_encoder_out=None, detach_type=None,
          embedding_ln_type=None, embedding_var_coeff=1.0), "model_config.embedding_var_coeff: must be unset"),
    (dict(embedding_loss_type="NORM_MSE", embedding_aggregation="CAUSAL_CONV"),
     "model_config.embedding_aggregation: NORM_MSE has no learnable scale or bias in its path"),
    (dict(embedding_loss_type="CENTERED_COSINE", embedding_var_coeff=1.0),
     "model_config.embedding_var_coeff: with detach_type ENCODER_OUT no parameter reaches the encoder side "
     "(CENTERED_COSINE reads"),
    (dict(use_ln_on_encoder_out=False, embedding_var_coeff=1.0),
     "model_config.embedding_var_coeff: with detach_type ENCODER_OUT no parameter reaches the encoder side "
     "(use_ln_on_encoder_out is False)"),
])
@pytest.mark.fast
def test_parameter_free_and_variance_floor_settings_that_cannot_work_are_one_line(model, message):
    c = load("mse_pos_sub")
    c.model_config.update(model)
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(c)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_parameter_free_losses_and_the_floor_validate_on_the_seed_config():
    for model in (dict(embedding_loss_type="NORM_MSE"), dict(embedding_loss_type="CENTERED_COSINE"),
                  dict(embedding_var_coeff=1), dict(embedding_var_coeff=0.0),
                  dict(embedding_loss_type="NORM_MSE", detach_type="EMBEDDING", embedding_var_coeff=0.5)):
        c = load("mse_pos_sub")
        c.model_config.update(model)
        config_lib.validate(c)
        assert count(model_lib.ModelConfig.from_config(c).abstract_params()) == 15_763_500
