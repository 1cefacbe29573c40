"""Where a train step's time goes on a CPU: what `python -m experiments.profile_cpu` prints.

Times jitted pieces of one micro-batch's train step separately (median of `repeats` calls after
two warm-up calls, each waited for), because a trace of one fused XLA:CPU program does not say
which model part a fusion came from:
  step        the whole train step for one micro-batch (forward, backward, AdamW), as `bench` runs it
  loss grad   forward + backward of the loss (no optimizer)
  forward     the loss alone
  head + CE   the tied head's matmul and the cross-entropy, forward + backward, on the stack's
              [micro, T, D] output and the [V, D] embedding (the model's own `_head`)
  attention   every attention call the model makes, forward + backward, each timed alone at the
              shapes it is called with (recorded while tracing the model) and summed
  AdamW       the optimizer's update and its application to the parameters
"Rest of the stack" is loss grad - head + CE - attention: the Dense layers, layer norms, residuals,
embeddings and the AED's embedding loss. The pieces compile separately, so they do not add up
exactly to the step (XLA fuses across their boundaries in the whole step).

`--thunks N` also profiles the whole step from the inside: XLA:CPU runs a compiled program as a
sequence of thunks (a fusion, a matmul, a copy) and jax.profiler records each one, so a trace of
`repeats` steps, each thunk mapped to the model operation its HLO instruction came from (layer
numbers dropped), gives the N operations that take the most time; and the minor page faults a step
takes (memory the step touches for the first time: a fresh block of temporaries costs one fault
per 4 KiB page). These two views found the cache transposes in decoding and the unmapped step
temporaries (BENCHMARKS.md).
"""
from __future__ import annotations

import collections
import functools
import glob
import gzip
import json
import re
import resource
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from aed_jax import benchmark
from aed_jax import mesh as mesh_lib
from aed_jax import model as model_lib
from aed_jax import optim
from aed_jax import train

def _micro_batch_step(c, micro: int):
    """(model, optimizer, a fresh state, random tokens [micro, T + 1], their batch on the mesh, the
    jitted train step) for one `micro`-sequence micro-batch of `c`, as bench runs it."""
    c.batch_size, c.gradient_accumulation_steps, c.micro_batch_size = micro, 1, micro
    mesh = mesh_lib.make_mesh(c)
    model, optimizer = model_lib.from_config(c), optim.make_optimizer(c)
    state = jax.jit(functools.partial(train.init_state, model=model, optimizer=optimizer))(jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, model.cfg.alphabet_size, (micro, c.model_config.context_size + 1))
    tokens = tokens.astype(np.int32)
    batch = mesh_lib.to_global(mesh, {"x": tokens[:, :-1], "y": tokens[:, 1:]})
    return model, optimizer, state, tokens, batch, train.compile_train_step(c, model, optimizer, mesh, micro)


def profile(c, micro: int, repeats: int) -> dict[str, float]:
    """Seconds of each piece of one `micro`-sequence micro-batch's train step (module docstring)."""
    model, optimizer, state, tokens, batch, step = _micro_batch_step(c, micro)
    cfg, T = model.cfg, c.model_config.context_size
    params, opt_state = state["params"], state["opt_state"]
    x, y = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
    out = {}

    carry = {"params": jax.tree_util.tree_map(jnp.copy, params), "opt_state": jax.tree_util.tree_map(jnp.copy, opt_state)}

    def one_step():  # the step donates its state: carry it from call to call, as the trainer does
        carry["params"], carry["opt_state"], metrics = step(carry["params"], carry["opt_state"], batch, jax.random.key(1),
                                                            np.float32(c.lr))
        return metrics

    out["step"] = benchmark.timed(one_step, repeats=repeats)

    def loss(p):
        return model.apply({"params": p}, x, y, train=True, rngs={"dropout": jax.random.key(1)})[1]["total"]

    # Record every attention call's shapes while tracing the loss, then time each alone.
    calls, original = [], model_lib.attention

    def recording(q, k, v, dropout, deterministic, impl="xla"):
        calls.append((q.shape, k.shape, v.shape, q.dtype, dropout.rate, deterministic, impl))
        return original(q, k, v, dropout, deterministic, impl)

    model_lib.attention = recording
    try:
        jax.eval_shape(lambda p: loss(p), params)  # a fresh function: no cached trace
    finally:
        model_lib.attention = original
    out["loss grad"] = benchmark.timed(jax.jit(jax.grad(loss)), params, repeats=repeats)
    out["forward"] = benchmark.timed(jax.jit(loss), params, repeats=repeats)

    # The head at the shapes the model calls it with: the stack's output and the tied embedding.
    embed_VxD = params["token_embedding"]["embedding"]
    out_BxTxD = jax.random.normal(jax.random.key(2), (micro, T, cfg.n_embed), jnp.float32)

    class Embed:  # `_head` reads only `.embedding`
        def __init__(self, e):
            self.embedding = e

    def head_ce(o, e):
        return model_lib._head(cfg, Embed(e), o, y, train=True)[1]["ce"]

    out["head + CE"] = benchmark.timed(jax.jit(jax.grad(head_ce, argnums=(0, 1))), out_BxTxD, embed_VxD, repeats=repeats)

    attention_s = 0.0
    for shapes, n in collections.Counter(calls).items():
        qs, ks, vs, dtype, rate, deterministic, impl = shapes
        q, k, v = (jax.random.normal(jax.random.key(i), s, dtype) for i, s in enumerate((qs, ks, vs)))

        def attn(q, k, v):
            return jnp.sum(original(q, k, v, nn.Dropout(0.0), True, impl))

        attention_s += n * benchmark.timed(jax.jit(jax.grad(attn, argnums=(0, 1, 2))), q, k, v, repeats=repeats)
    out["attention"] = attention_s
    out["attention calls"] = len(calls)

    grads = jax.tree_util.tree_map(jnp.ones_like, params)

    def adamw(p, s, g):
        updates, s = optimizer.update(g, s, p, learning_rate=np.float32(c.lr))
        return optax.apply_updates(p, updates), s

    out["AdamW"] = benchmark.timed(jax.jit(adamw), params, opt_state, grads, repeats=repeats)
    out["rest of the stack"] = out["loss grad"] - out["head + CE"] - out["attention"]
    return out


def _operation(op_name: str) -> str:
    """An HLO op_name as a model operation: `jit(step)/while/body/closed_call/jvp(AED)/encoder_
    transformer_blocks_3/ln1/mul` -> `jvp(AED)/encoder_transformer_blocks/ln1/mul`."""
    op = re.sub(r"^jit\([^)]*\)/", "", op_name)
    op = re.sub(r"(while/body/)?closed_call/", "", op)
    return re.sub(r"_\d+/", "/", op)


def thunks(c, micro: int, repeats: int) -> tuple[list[tuple[str, float, int]], float]:
    """([(operation, ms per step, thunks per step)] by time, minor page faults per step) of one
    `micro`-sequence micro-batch's train step, from a jax.profiler trace (module docstring)."""
    _, _, state, _, batch, step = _micro_batch_step(c, micro)
    step = step.lower(state["params"], state["opt_state"], batch, jax.random.key(1), np.float32(c.lr)).compile()
    origin = {}  # HLO instruction -> the model operation it came from, layer numbers dropped
    for line in step.as_text().splitlines():
        if (name := re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)):
            op = re.search(r'op_name="([^"]*)"', line)
            origin[name.group(1)] = _operation(op.group(1)) if op else ""
    carry = dict(state)

    def run(n):
        for _ in range(n):
            carry["params"], carry["opt_state"], metrics = step(carry["params"], carry["opt_state"], batch,
                                                                jax.random.key(1), np.float32(c.lr))
            jax.block_until_ready(metrics)

    run(2)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run(repeats)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            run(repeats)
        [path] = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    time_us, count = collections.Counter(), collections.Counter()
    for e in events:  # thunk events carry their instruction's name; the runtime's own spans do not
        name = e.get("name", "")
        kind = re.sub(r"[.]\d+$", "", name)  # the thunk's kind: fusion, dot, copy, ...
        if e.get("ph") == "X" and name in origin and kind not in ("while", "conditional", "call"):  # not their bodies again
            operation = f"{origin[name] or '(no op_name)'} [{kind}]"
            time_us[operation] += e.get("dur", 0)
            count[operation] += 1
    return [(op, us / 1e3 / repeats, count[op] // repeats) for op, us in time_us.most_common()], faults
