"""Loss masks: a task's batch carries a per-target weight; without one, the step is the program it always was."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aed_jax import config as config_lib
from aed_jax import losses
from aed_jax import mesh as mesh_lib
from aed_jax import model as model_lib
from aed_jax import optim
from aed_jax import train

V, T, B = 48, 12, 8


def small_config(model_type="aed", ce_chunk_tokens=0, accum=2):
    c = config_lib.base_config(model_type)
    c.model_config.update(dict(n_embed=32, n_head=2, n_layer=1, context_size=T, alphabet_size=V))
    if model_type == "aed":
        c.model_config.update(dict(sub_pos_embed_to_decoder="YES_NO_LN", embedding_loss_type="MSE",
                                   embedding_loss_coeff=8.0, detach_type="ENCODER_OUT", embedding_ln_type="INIT",
                                   use_ln_on_encoder_out=True))
    c.update(dict(batch_size=B // accum, gradient_accumulation_steps=accum, ce_chunk_tokens=ce_chunk_tokens,
                  lr=3e-3, warmup_iters=1, lr_decay_iters=10))
    return c


def batch(seed=0, with_weight=False):
    rng = np.random.default_rng(seed)
    out = {"x": rng.integers(0, V, (B, T), dtype=np.int32), "y": rng.integers(0, V, (B, T), dtype=np.int32)}
    if with_weight:
        out["weight"] = (rng.random((B, T)) < 0.3).astype(np.float32)
        out["weight"][:, -1] = 1.0  # every row has an answer
    return out


def setup(c):
    model, optimizer = model_lib.from_config(c), optim.make_optimizer(c)
    mesh = mesh_lib.make_mesh(c)
    state = train.init_state(jax.random.key(0), model=model, optimizer=optimizer)
    step = train.compile_train_step(c, model, optimizer, mesh)
    return model, optimizer, state, step


def unmasked_step(params, opt_state, b, rng, lr, *, model, optimizer, accum_steps):
    """The step as it was before masks existed: the model called without any weights argument."""
    def loss_fn(p, x, y, key):
        _, l = model.apply({"params": p}, x, y, train=True, rngs={"dropout": key})
        return l["total"], l

    def micro(a):
        return a.reshape(-1, accum_steps, a.shape[-1]).transpose(1, 0, 2)

    def acc(carry, inputs):
        g, l = jax.grad(loss_fn, has_aux=True)(params, *inputs)
        return jax.tree_util.tree_map(jnp.add, carry, (g, l)), None

    zeros = (jax.tree_util.tree_map(jnp.zeros_like, params), {k: jnp.zeros((), jnp.float32) for k in model_lib.LOSS_KEYS})
    (g, l), _ = jax.lax.scan(acc, zeros, (micro(b["x"]), micro(b["y"]), jax.random.split(rng, accum_steps)),
                             unroll=accum_steps == 1)
    g, l = jax.tree_util.tree_map(lambda a: a / accum_steps, (g, l))
    updates, opt_state = optimizer.update(g, opt_state, params, learning_rate=lr)
    return optax.apply_updates(params, updates), l["total"]


@pytest.mark.slow
@pytest.mark.parametrize("model_type,chunk", [("aed", 0), ("aed", 20), ("baseline", 20)])
def test_without_a_mask_the_step_is_bit_identical_to_the_unmasked_program(model_type, chunk):
    c = small_config(model_type, chunk)
    model, optimizer, state, step = setup(c)
    b, rng, lr = batch(), jax.random.key(3), optim.step_learning_rate(c)(0)
    ref_params, ref_loss = jax.jit(functools.partial(unmasked_step, model=model, optimizer=optimizer, accum_steps=2))(
        state["params"], state["opt_state"], b, rng, lr)
    params, _, metrics = step(state["params"], state["opt_state"], b, rng, lr)
    assert float(metrics["loss"]) == float(ref_loss)
    for a, r in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(r))


@pytest.mark.parametrize("chunk", [0, 7])
def test_masked_cross_entropy_against_numpy(chunk):
    c = small_config("aed", chunk, accum=1)
    model = model_lib.from_config(c)
    params = model_lib.init_params(model, jax.random.key(1))
    b = batch(1, with_weight=True)
    logits, _ = model.apply({"params": params}, b["x"])
    logits = np.asarray(logits, np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    ce = -np.take_along_axis(logp, b["y"][..., None], -1)[..., 0]
    expected = (ce * b["weight"]).sum() / b["weight"].sum()
    _, got = model.apply({"params": params}, b["x"], b["y"], train=True, weights_BxT=jnp.asarray(b["weight"]))
    np.testing.assert_allclose(float(got["ce"]), expected, rtol=1e-5)


def test_targets_outside_the_mask_change_neither_loss_nor_update():
    c = small_config("aed", 5)
    model, optimizer, state, step = setup(c)
    b = batch(2, with_weight=True)
    other = dict(b, y=np.where(b["weight"] > 0, b["y"], (b["y"] + 7) % V).astype(np.int32))
    assert (other["y"] != b["y"]).any()
    fresh = lambda: jax.tree_util.tree_map(jnp.array, (state["params"], state["opt_state"]))  # the step donates
    lr = optim.step_learning_rate(c)(0)
    p1, _, m1 = step(*fresh(), b, jax.random.key(0), lr)
    p2, _, m2 = step(*fresh(), other, jax.random.key(0), lr)
    assert float(m1["ce"]) == float(m2["ce"])
    for a, r in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(r))


def test_exact_match_against_numpy():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(6, 5, 7)).astype(np.float32)
    y = rng.integers(0, 7, (6, 5)).astype(np.int32)
    y[0] = logits[0].argmax(-1)  # a row entirely right
    w = (rng.random((6, 5)) < 0.5).astype(np.float32)
    w[0] = 1.0
    w[5] = 0.0  # a row without answers counts for neither accuracy
    right = (logits.argmax(-1) == y)
    scored = w > 0
    sums = jax.device_get(losses.exact_match_sums(jnp.asarray(logits), jnp.asarray(y), jnp.asarray(w)))
    got = losses.exact_match(sums)
    assert got["token_accuracy"] == pytest.approx((right & scored).sum() / scored.sum())
    rows = [i for i in range(6) if scored[i].any()]
    assert got["sequence_accuracy"] == pytest.approx(np.mean([right[i][scored[i]].all() for i in rows]))
    assert got["sequence_accuracy"] >= 1 / len(rows)  # row 0 is all right


def test_sequence_accuracy_counts_each_packed_problem_against_numpy():
    """Rows packing 3 problems of 2 answers each, as sort packs them, one of row 0's problems with a wrong
    answer: sequence accuracy is per problem (5 of 6), the per-row figure packed_sequence_accuracy (1 of 2)."""
    rows, T, P = 2, 12, 3
    y = np.random.default_rng(7).integers(0, V, (rows, T)).astype(np.int32)
    w = np.zeros((rows, T), np.float32)
    for p in range(P):
        w[:, 4 * p + 1:4 * p + 3] = 1.0  # problem p's answers; unscored tokens between problems
    logits = 5.0 * np.eye(V, dtype=np.float32)[y]  # every answer right ...
    logits[0, 5] = 5.0 * np.eye(V, dtype=np.float32)[(y[0, 5] + 1) % V]  # ... but one of row 0's problem 1
    right, scored = logits.argmax(-1) == y, w > 0
    problems = [share for r in range(rows) for share in np.array_split(np.flatnonzero(scored[r]), P)]
    rows_of = [r for r in range(rows) for _ in range(P)]
    per_problem = np.mean([right[r, share].all() for r, share in zip(rows_of, problems)])
    per_row = np.mean([right[r, scored[r]].all() for r in range(rows)])
    assert (per_problem, per_row) == (5 / 6, 1 / 2)

    def accuracies(problems_a_row):
        sums = losses.exact_match_sums(jnp.asarray(logits), jnp.asarray(y), jnp.asarray(w), problems_a_row)
        return losses.exact_match(jax.device_get(sums))

    got = accuracies(P)
    assert got["sequence_accuracy"] == pytest.approx(per_problem)
    assert got["packed_sequence_accuracy"] == pytest.approx(per_row)
    assert got["token_accuracy"] == pytest.approx(11 / 12)
    one = accuracies(1)  # a task of one problem a row: the two figures are one
    assert one["sequence_accuracy"] == one["packed_sequence_accuracy"] == pytest.approx(per_row)
