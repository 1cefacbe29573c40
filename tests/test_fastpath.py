"""The fast path computes the same function: chunked cross-entropy, nn.scan stacks, padded heads, bf16."""
import dataclasses
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aed_jax import config as config_lib
from aed_jax import decoding
from aed_jax import losses
from aed_jax import mesh as mesh_lib
from aed_jax import model as model_lib
from aed_jax import reference
from aed_jax import train

SMALL = dict(alphabet_size=97, context_size=12, n_embed=16, n_head=2, n_layer=3, sub_pos_embed_to_decoder="YES_NO_LN",
             embedding_loss_type="MSE", embedding_loss_coeff=2.0, detach_type="ENCODER_OUT", embedding_ln_type="INIT",
             use_ln_on_encoder_out=True)


def tokens(cfg, seed=1, batch=3):
    return jax.random.randint(jax.random.key(seed), (batch, cfg.context_size), 0, cfg.alphabet_size)


@pytest.mark.parametrize("chunk", [5, 36, 1000])
def test_chunked_cross_entropy_matches_the_whole(chunk):
    out = jax.random.normal(jax.random.key(0), (3, 12, 16))
    emb = jax.random.normal(jax.random.key(1), (97, 16))
    y = jax.random.randint(jax.random.key(2), (3, 12), 0, 97)
    whole = lambda o, e: losses.cross_entropy(jnp.einsum("btd,vd->btv", o, e), y)
    chunked = lambda o, e: losses.chunked_cross_entropy(o, e, y, chunk)
    np.testing.assert_allclose(chunked(out, emb), whole(out, emb), rtol=1e-6)
    for g1, g2 in zip(jax.grad(chunked, (0, 1))(out, emb), jax.grad(whole, (0, 1))(out, emb)):
        np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("model_type", ["aed", "baseline"])
def test_model_with_chunked_ce_gives_the_same_loss_and_gradients(model_type):
    cfg = model_lib.ModelConfig(model_type=model_type, **{k: v for k, v in SMALL.items() if model_type == "aed"
                                                           or k in ("alphabet_size", "context_size", "n_embed",
                                                                    "n_head", "n_layer")})
    model = model_lib.make_model(dataclasses.replace(cfg, ce_chunk_tokens=0))  # whole (CPU's default is chunked)
    chunked = model_lib.make_model(dataclasses.replace(cfg, ce_chunk_tokens=7))
    params = model_lib.init_params(model, jax.random.key(0))
    x, y = tokens(cfg, 1), tokens(cfg, 2)
    loss = lambda m: jax.jit(jax.value_and_grad(lambda p: m.apply({"params": p}, x, y, train=True)[1]["total"]))(params)
    (l1, g1), (l2, g2) = loss(model), loss(chunked)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2)


def test_chunked_ce_model_in_eval_mode_takes_the_ce_from_its_logits():
    """Evaluation returns the full logits anyway, so its CE comes from them (one head matmul, not
    two); in float32 that is the chunked training loss to rounding."""
    cfg = model_lib.ModelConfig(**SMALL, ce_chunk_tokens=7)
    model = model_lib.make_model(cfg)
    params = model_lib.init_params(model, jax.random.key(0))
    x, y = tokens(cfg, 1), tokens(cfg, 2)
    logits, eval_losses = jax.jit(lambda p: model.apply({"params": p}, x, y))(params)
    assert eval_losses["ce"] == losses.cross_entropy(logits, y)
    train_ce = jax.jit(lambda p: model.apply({"params": p}, x, y, train=True)[1]["ce"])(params)
    np.testing.assert_allclose(eval_losses["ce"], train_ce, rtol=1e-6)


@pytest.mark.parametrize("model_type", ["aed", "baseline"])
@pytest.mark.parametrize("remat", [False, True])
def test_scanned_stacks_are_the_same_function(model_type, remat):
    kw = SMALL if model_type == "aed" else {k: SMALL[k] for k in ("alphabet_size", "context_size", "n_embed", "n_head")}
    cfg = model_lib.ModelConfig(model_type=model_type, **{**kw, "n_layer": 3})
    scanned_cfg = dataclasses.replace(cfg, scan_layers=True, remat=remat)
    model, scanned = model_lib.make_model(cfg), model_lib.make_model(scanned_cfg)
    params = model_lib.init_params(model, jax.random.key(0))
    stacked = model_lib.stack_layers(params, scanned_cfg)
    # The scanned model's own init has the stacked layout, and unstacking is the exact inverse.
    own = jax.eval_shape(lambda: model_lib.init_params(scanned, jax.random.key(0)))
    assert jax.tree_util.tree_structure(own) == jax.tree_util.tree_structure(stacked)
    jax.tree_util.tree_map(np.testing.assert_array_equal, model_lib.unstack_layers(stacked), params)
    x, y = tokens(cfg, 1), tokens(cfg, 2)

    def loss_and_grads(m, p):
        return jax.jit(jax.value_and_grad(lambda p: m.apply({"params": p}, x, y, train=True)[1]["total"]))(p)

    (l1, g1), (l2, g2) = loss_and_grads(model, params), loss_and_grads(scanned, stacked)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                           g1, model_lib.unstack_layers(g2))


def test_scanned_model_decodes_with_the_cache_and_exports_per_layer():
    cfg = model_lib.ModelConfig(**SMALL, scan_layers=True)
    model = model_lib.make_model(cfg)
    params = jax.tree_util.tree_map(lambda p: 8 * p, model_lib.init_params(model, jax.random.key(0)))
    prompt = np.asarray(tokens(cfg, batch=1))[:, :4]
    cached = decoding.generate(model, params, prompt, 14, greedy=True)
    uncached = decoding.generate(model, params, prompt, 14, greedy=True, use_cache=False)
    np.testing.assert_array_equal(cached, uncached)
    arrays = reference.to_reference(params)
    assert "encoder_transformer_blocks.2.ln1.weight" in arrays
    back = reference.from_reference(arrays, cfg)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


@pytest.mark.parametrize("head", [15, 16, 30])
def test_head_padding_for_cudnn_changes_nothing(head):
    """The cuDNN path pads the head size to a multiple of 8; the same padding through XLA is exact."""
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 10, 3, head)) for i in range(3))
    expected = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    padded = model_lib.padded_attention(q, k, v, implementation="xla")
    assert padded.shape == expected.shape
    np.testing.assert_allclose(padded, expected, rtol=1e-5, atol=1e-6)


def test_auto_attention_falls_back_to_xla_where_cudnn_refuses(monkeypatch, caplog):
    """On a "GPU" without cuDNN (this CPU, disguised), auto must not fail: jax's trace-time check
    refuses the cuDNN call and the XLA result comes back, with one warning."""
    q, k, v = (jax.random.normal(key, (2, 16, 3, 30), jnp.bfloat16) for key in jax.random.split(jax.random.key(1), 3))
    expected = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    model_lib._warn_cudnn_fallback.cache_clear()
    with pytest.raises((RuntimeError, NotImplementedError)):
        model_lib.attention(q, k, v, nn.Dropout(0.0), True, "cudnn")
    with caplog.at_level(logging.WARNING):
        out = model_lib.attention(q, k, v, nn.Dropout(0.0), True, "auto")
    np.testing.assert_array_equal(out, expected)
    assert "using XLA attention" in caplog.text


@pytest.mark.parametrize("model_type", [pytest.param("aed", marks=pytest.mark.slow), "baseline"])
def test_auto_attention_on_cpu_is_xlas_function(model_type):
    """On CPU, auto writes the attention out (einsum, mask, softmax, einsum): the same function as
    jax.nn.dot_product_attention (impl xla), its loss and gradients to float32 rounding."""
    cfg = model_lib.ModelConfig(**SMALL, model_type=model_type, attention_impl="auto")
    x = tokens(cfg)
    auto, xla = (model_lib.make_model(dataclasses.replace(cfg, attention_impl=impl)) for impl in ("auto", "xla"))
    params = model_lib.init_params(auto, jax.random.key(0))

    def loss_and_grads(model):
        return jax.value_and_grad(lambda p: model.apply({"params": p}, x, x, train=True)[1]["total"])(params)

    (loss_auto, grads_auto), (loss_xla, grads_xla) = loss_and_grads(auto), loss_and_grads(xla)
    np.testing.assert_allclose(loss_auto, loss_xla, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads_auto, grads_xla)
    np.testing.assert_allclose(auto.apply({"params": params}, x)[0], xla.apply({"params": params}, x)[0],
                               rtol=1e-5, atol=1e-6)


def test_execution_keys_reach_the_model_and_are_validated():
    c = config_lib.base_config("aed")
    c.scan_layers, c.remat, c.attention_impl, c.ce_chunk_tokens = True, True, "cudnn", 4096
    cfg = model_lib.ModelConfig.from_config(c)
    assert (cfg.scan_layers, cfg.remat, cfg.attention_impl, cfg.ce_chunk) == (True, True, "cudnn", 4096)
    assert model_lib.ModelConfig().ce_chunk == (200 if jax.default_backend() == "cpu" else 8192)
    c.attention_impl = "flash"
    with pytest.raises(config_lib.ConfigError, match="attention_impl"):
        config_lib.validate(c)


def _train_losses(dtype: str, steps: int = 50, ce_chunk_tokens: int = 0):
    c = config_lib.base_config("aed")
    c.model_config.update(dict(SMALL, n_layer=1))
    c.dtype, c.ce_chunk_tokens = dtype, ce_chunk_tokens
    # lr 3e-3: at 1e-2 this tiny model's trajectories are chaotic, and any two float paths (bf16 vs
    # fp32, even both unchunked) end up to 1.7% apart after 50 steps, depending on the seed.
    c.batch_size, c.gradient_accumulation_steps, c.lr, c.warmup_iters, c.lr_decay_iters = 8, 2, 3e-3, 3, 100
    model, opt = model_lib.from_config(c), train.optim.make_optimizer(c)
    step = train.compile_train_step(c, model, opt, mesh_lib.make_mesh(c))
    params = model_lib.init_params(model, jax.random.key(0))
    opt_state, rate = opt.init(params), train.optim.step_learning_rate(c)
    rng = np.random.default_rng(0)
    start = rng.integers(0, 97, (steps, 16, 1))
    seqs = (start + 5 * np.arange(13)[None, None]) % 97  # a learnable arithmetic progression
    for i in range(steps):
        batch = {"x": jnp.asarray(seqs[i, :, :-1], jnp.int32), "y": jnp.asarray(seqs[i, :, 1:], jnp.int32)}
        params, opt_state, metrics = step(params, opt_state, batch, jax.random.key(i), rate(i))
    return float(metrics["ce"])


@pytest.fixture(scope="module")
def float32_loss():
    return _train_losses("float32")


@pytest.mark.slow
@pytest.mark.parametrize("ce_chunk_tokens", [0, 40])
def test_bfloat16_loss_within_one_percent_of_float32(float32_loss, ce_chunk_tokens):
    """The numerics check of the bf16 path, as a GPU runs it (chunked CE) and unchunked: after 50
    steps its loss is within 1% of float32's."""
    bf16 = _train_losses("bfloat16", ce_chunk_tokens=ce_chunk_tokens)
    assert float32_loss < 4.0  # it learned something (ln 97 = 4.57)
    assert abs(bf16 - float32_loss) / float32_loss < 0.01, (bf16, float32_loss)


def test_chunked_cross_entropy_keeps_one_chunk_of_logits_in_memory():
    """XLA's own memory analysis of the compiled loss+gradient: the whole path holds the [N, V]
    float32 logits, the chunked one a [chunk, V] slice; a chunk larger than N costs no padding."""
    out = jax.random.normal(jax.random.key(0), (4, 64, 32))
    emb = jax.random.normal(jax.random.key(1), (5000, 32))
    y = jax.random.randint(jax.random.key(2), (4, 64), 0, 5000)

    def temp_bytes(loss):
        return jax.jit(jax.value_and_grad(loss, (0, 1))).lower(out, emb).compile().memory_analysis().temp_size_in_bytes

    whole = temp_bytes(lambda o, e: losses.cross_entropy(jnp.einsum("btd,vd->btv", o, e), y))
    logits_bytes = 4 * 64 * 5000 * 4
    assert whole >= logits_bytes
    assert temp_bytes(lambda o, e: losses.chunked_cross_entropy(o, e, y, 32)) < logits_bytes / 2
    assert temp_bytes(lambda o, e: losses.chunked_cross_entropy(o, e, y, 1 << 20)) <= 1.5 * whole


def test_chunked_cross_entropy_gradient_costs_no_recomputation():
    """The chunked loss's gradient takes the FLOPs of the whole path's (three V x D matmuls per row),
    not a rematerialised one's four. XLA's cost analysis counts a loop body once, so two chunks of
    half the rows each must cost half the whole path (a rematerialised scan measures 0.67)."""
    out = jax.random.normal(jax.random.key(0), (4, 64, 32))
    emb = jax.random.normal(jax.random.key(1), (5000, 32))
    y = jax.random.randint(jax.random.key(2), (4, 64), 0, 5000)

    def flops(loss):
        cost = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(out, emb).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    whole = flops(lambda o, e: losses.cross_entropy(jnp.einsum("btd,vd->btv", o, e), y))
    assert whole >= 3 * 2 * 256 * 5000 * 32
    assert flops(lambda o, e: losses.chunked_cross_entropy(o, e, y, 128)) <= 0.55 * whole
