"""Rotary position embeddings: the relative-position property, the "next position" table of position
subtraction, old configs without the key, and the ROPE configs training, resuming, sampling."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from aed_jax import analysis
from aed_jax import api
from aed_jax import config as config_lib
from aed_jax import decoding
from aed_jax import model as model_lib
from aed_jax import rundir
from aed_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, V, D = 16, 64, 32


@pytest.mark.parametrize("head", [8, 15])  # an odd head turns its first 14 features and keeps the last
def test_shifting_every_position_leaves_the_attention_scores_unchanged(head):
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, T, 3, head))
    positions = jnp.arange(T)
    scores = lambda p, p_k=None: jnp.einsum("btnh,bsnh->bnts", model_lib.rope(q, p),
                                            model_lib.rope(k, p if p_k is None else p_k))
    base = scores(positions)
    for offset in (1, 7, 1000):  # float32 angles of ~1000 radians: 1e-4 relative
        np.testing.assert_allclose(scores(positions + offset), base, rtol=1e-4, atol=1e-3)
    assert np.abs(scores(positions + 3, positions) - base).max() > 0.1  # a relative shift does change them
    out = lambda p: jax.nn.dot_product_attention(model_lib.rope(q, p), model_lib.rope(k, p), v, is_causal=True)
    np.testing.assert_allclose(out(positions + 57), out(positions), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model_lib.rope(q, jnp.zeros(T, jnp.int32)), q)  # position 0 is not turned
    np.testing.assert_allclose(jnp.linalg.norm(model_lib.rope(q, positions), axis=-1), jnp.linalg.norm(q, axis=-1),
                               rtol=1e-5)  # a rotation


@pytest.mark.fast
def test_rope_turns_each_feature_pair_by_position_times_its_frequency():
    x = np.zeros((1, 3, 1, 4), np.float32)
    x[..., 0] = 1.0  # the pair (0, 2) at frequency 1, the pair (1, 3) at 10000^(-1/2) = 0.01
    x[..., 1] = 1.0
    got = np.asarray(model_lib.rope(jnp.asarray(x), jnp.arange(3)))[0, :, 0]
    t = np.arange(3)
    np.testing.assert_allclose(got, np.stack([np.cos(t), np.cos(0.01 * t), np.sin(t), np.sin(0.01 * t)], 1),
                               atol=1e-6)


def small(model_type, **model):
    return model_lib.ModelConfig(model_type=model_type, alphabet_size=V, context_size=T, n_embed=D, n_head=2,
                                 n_layer=1, position_embedding_type="ROPE", **model)


def test_parameters_the_next_position_table_and_the_embedding_loss():
    """Without a next position there are no positional parameters; with pos sub the only ones are T
    learned "next position" rows, initialised N(0, 0.02) and not counted, subtracted at each position."""
    assert "positional_embedding" not in model_lib.init_params(model_lib.make_model(small("baseline")),
                                                                jax.random.key(0))
    cfg = small("aed", sub_pos_embed_to_decoder="YES_NO_LN", embedding_loss_type="MSE", detach_type="ENCODER_OUT",
                embedding_ln_type="INIT", use_ln_on_encoder_out=True)
    model = model_lib.make_model(cfg)
    params = model_lib.init_params(model, jax.random.key(0))
    table = np.asarray(params["next_positional_embedding"]["embedding"])
    assert table.shape == (T, D) and "positional_embedding" not in params and abs(table.std() - 0.02) < 0.003
    learned = model_lib.make_model(model_lib.ModelConfig(**{**cfg.__dict__, "position_embedding_type": "LEARNED"}))
    assert model_lib.count_params(params) == model_lib.count_params(
        model_lib.init_params(learned, jax.random.key(0)))
    x = np.asarray(jax.random.randint(jax.random.key(1), (2, T), 0, V))
    zero = {**params, "next_positional_embedding": {"embedding": jnp.zeros_like(table)}}
    logits, _ = model.apply({"params": params}, x)
    logits_zero, _ = model.apply({"params": zero}, x)
    expected = -table @ np.asarray(params["token_embedding"]["embedding"]).T  # (out - next_t) @ tok^T
    np.testing.assert_allclose(logits - logits_zero, np.broadcast_to(expected, logits.shape), atol=1e-5)
    # The embedding loss sees no position: permuting the table changes nothing in it.
    _, losses = model.apply({"params": params}, x, with_embedding_loss=True)
    _, shuffled = model.apply({"params": {**params, "next_positional_embedding": {"embedding": table[::-1]}}}, x,
                              with_embedding_loss=True)
    assert float(losses["embedding_loss"]) > 0 and float(losses["embedding_loss"]) == float(shuffled["embedding_loss"])


def test_config_key_and_old_configs_without_it(tmp_path):
    c = config_lib.base_config("baseline")
    assert c.model_config.position_embedding_type == "LEARNED"
    assert config_lib.meanings()["model_config.position_embedding_type"].startswith("LEARNED")
    c.model_config.position_embedding_type = "ALIBI"
    with pytest.raises(config_lib.ConfigError, match=r"position_embedding_type: 'ALIBI' is not one of LEARNED, ROPE"):
        config_lib.validate(c)
    c = config_lib.base_config("aed")
    c.model_config.update(dict(position_embedding_type="ROPE", n_embed=16, n_head=2))
    c.model_config.cross_attn_config.n_head = 16
    with pytest.raises(config_lib.ConfigError, match=r"cross_attn_config.n_head: ROPE turns pairs of features"):
        config_lib.validate(c)
    # A checkpoint written before the key existed restores as the learned table, the same function.
    old = config_lib.base_config("aed")
    old.model_config.update(dict(n_embed=16, n_head=2, n_layer=1, context_size=8, alphabet_size=V))
    saved = old.to_dict()
    del saved["model_config"]["position_embedding_type"]
    model = model_lib.make_model(model_lib.ModelConfig.from_config(old))
    params = model_lib.init_params(model, jax.random.key(0))
    api.save_params(str(tmp_path), params, ml_collections.ConfigDict(saved))
    loaded, loaded_params, config, _ = api.load(str(tmp_path))
    assert "position_embedding_type" not in config.model_config
    assert loaded.cfg.position_embedding_type == "LEARNED" and loaded.cfg == model.cfg
    x = np.arange(8)[None] % V
    np.testing.assert_array_equal(loaded.apply({"params": loaded_params}, x)[0], model.apply({"params": params}, x)[0])


def shrunk(name, data_dir, train_steps):
    """configs/<name>.py at a size that trains in seconds on CPU, on the synthetic corpus."""
    c = config_lib.load(os.path.join(ROOT, "configs", f"{name}.py"))
    c.model_config.update(dict(n_embed=D, n_head=2, n_layer=1, context_size=T, alphabet_size=V))
    if c.model_type == "aed":
        c.model_config.cross_attn_config.n_head = 4
    c.update(dict(dataset="synth", data_dir=data_dir, batch_size=4, gradient_accumulation_steps=1,
                  train_steps=train_steps, lr=3e-3, min_lr=3e-4, warmup_iters=1, lr_decay_iters=20, est_interval=2,
                  est_steps=1, log_interval=1))
    config_lib.validate(c)
    return c


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rope", "rope_baseline"])
def test_rope_configs_train_resume_and_sample(name, tmp_path):
    full = config_lib.load(os.path.join(ROOT, "configs", f"{name}.py"))
    assert full.model_config.position_embedding_type == "ROPE"
    assert full.model_config.sub_pos_embed_to_decoder == ("YES_NO_LN" if name == "rope" else "NO")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3000), ("val", 600)):
        rng.integers(0, V, n).astype(np.uint16).tofile(tmp_path / f"synth_{split}.bin")
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(shrunk(name, str(tmp_path), 2), workdir)
    first = rundir.restore_params(workdir)[0]
    train.train_and_evaluate(shrunk(name, str(tmp_path), 4), workdir)  # resumes from step 2
    params, config, step = rundir.restore_params(workdir)
    assert step == 4 and config.model_config.position_embedding_type == "ROPE"
    assert not np.array_equal(params["token_embedding"]["embedding"], first["token_embedding"]["embedding"])
    assert ("next_positional_embedding" in params) == (name == "rope") and "positional_embedding" not in params
    model, params, _, _ = api.load(workdir)
    prompt = np.arange(5, dtype=np.int32)[None]
    cached = decoding.generate(model, params, prompt, T + 4, greedy=True)
    np.testing.assert_array_equal(cached, decoding.generate(model, params, prompt, T + 4, greedy=True, use_cache=False))
    run = analysis.analyze_run(workdir, windows=4)  # a report of it too; no table without pos sub
    assert run["positional_table"] == ("next_positional_embedding" if name == "rope" else None)
    assert len(run["ce_by_position"]) == T and np.isfinite(run["ce_loss"])
    figures = analysis.write_report({name: run}, str(tmp_path / "report"), "test")
    assert ("positional_cosine.png" in figures) == (name == "rope")
