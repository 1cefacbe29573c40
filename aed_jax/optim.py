"""The seed's optimizer: AdamW with decay on matrices only, linear warmup then cosine to min_lr."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def learning_rate(c: ml_collections.ConfigDict) -> optax.Schedule:
    """The seed's get_lr at 0-based step i, with s = i + 1 (docs/model.md, "Training recipe").

    Linear warmup to `lr` over warmup_iters, cosine decay to `min_lr` at lr_decay_iters, min_lr
    beyond. optax's warmup_cosine_decay_schedule is the same curve shifted by one step, so it is
    evaluated at s, not i.
    """
    if not c.decay_lr:
        return optax.constant_schedule(c.lr)
    warmup = optax.linear_schedule(0.0, c.lr, c.warmup_iters) if c.warmup_iters else None
    cosine = optax.cosine_decay_schedule(c.lr, c.lr_decay_iters - c.warmup_iters, alpha=c.min_lr / c.lr)
    schedule = optax.join_schedules([warmup, cosine], [c.warmup_iters]) if warmup else cosine
    return lambda i: schedule(i + 1)


def step_learning_rate(c: ml_collections.ConfigDict):
    """Step i's learning rate, the float32 scalar each update is given (`make_optimizer`): `learning_rate(c)`
    compiled on its own, at an int32 step as the optimizer's count is, so the trainer's host loop pays one
    dispatch a step and the train step's program holds none of the schedule's scalars."""
    schedule = jax.jit(lambda i: jnp.asarray(learning_rate(c)(i), jnp.float32))
    return lambda i: schedule(np.int32(i))


def decay_mask(params):
    """Weight decay only on parameters with ndim >= 2: the matrices and both embeddings."""
    return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(c: ml_collections.ConfigDict, **hyper) -> optax.GradientTransformationExtraArgs:
    """AdamW(beta1, beta2, eps 1e-8) with the seed's decay mask; no gradient clipping. `hyper` (beta1,
    beta2, weight_decay) stands in for the config's values: an ensemble's per-member values, traced
    arrays inside its vmapped step (`ensemble`).

    Each update is given its step's learning rate (`update(..., learning_rate=learning_rate(c)(i))`)
    instead of computing it from the schedule, so the compiled train step holds no scalar of the
    schedule: runs that differ only in lr, min_lr, warmup_iters or lr_decay_iters share one program,
    and a learning-rate sweep hits the compilation cache. The state is optax.adamw's with a schedule
    (its step count included), so checkpoints keep their layout.
    """
    h = {"beta1": c.beta1, "beta2": c.beta2, "weight_decay": c.weight_decay, **hyper}
    adamw = functools.partial(optax.adamw, b1=h["beta1"], b2=h["beta2"], eps=1e-8, weight_decay=h["weight_decay"],
                              mask=decay_mask)

    def update(updates, state, params=None, *, learning_rate):
        return adamw(lambda _count: learning_rate).update(updates, state, params)

    return optax.GradientTransformationExtraArgs(adamw(learning_rate(c)).init, update)
