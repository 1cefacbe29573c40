"""Text from a model, with a KV cache: what `python -m aed_jax.sample` and the end of training run.

Every attention of both models is causal, so a generated token needs only its own position's
work: the prompt fills the caches in one call (`prefill`), then each token runs one position
through the encoder (self-attention cache), the bridge, and the decoder (self-attention cache and
cross-attention keys/values over the cached encoder outputs). The reference instead re-runs the
whole window for every token; `use_cache=False` does that, and greedy decoding gives the same
tokens either way. With rotary position embeddings (ROPE) the keys are cached already turned by
their positions.

Past context_size tokens the window slides: positions are absolute, so every earlier position's
activations change and the last context_size tokens are re-encoded for each new token, exactly
as the reference crops them. The cache speeds up the first context_size tokens of a sequence.

The whole generation is one compiled program (`_program`): the prefill, a `lax.fori_loop` of
cached steps with the cache in its carry, then a loop of sliding-window re-encodes, the sampling
on the device; no Python runs per token. At this model's size a step is a few small matmuls,
and calling a jitted step from Python per token cost more than the step (`compiled=False` keeps
that per-token loop, as the measure the benchmark compares with).

`benchmark` times the compiled program, the per-token loop and the uncached path, at batch 1 and
8, as tokens/s (`python -m aed_jax.sample --benchmark`).
"""
from __future__ import annotations

import functools
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from aed_jax import errors
from aed_jax import memory
from aed_jax import model as model_lib
from aed_jax import tokenizer as tokenizer_lib


class SampleError(errors.UserError):
    """A bad sampling request (prompt, temperature, top_k, ...): the message is one line."""


def check_sampling(alphabet_size: int, temperature: float, top_k: int | None, greedy: bool) -> None:
    """Raises SampleError for a temperature <= 0 when sampling or a top_k outside [0, alphabet_size]."""
    if greedy:
        return
    if not temperature > 0:
        raise SampleError(f"--temperature must be > 0 when sampling, got {temperature}; use --greedy for argmax")
    if top_k is not None and not 0 <= top_k <= alphabet_size:
        raise SampleError(f"--top_k must be between 1 and the vocabulary size {alphabet_size} (0: no cut), got {top_k}")


def encode_prompt(text: str, alphabet_size: int, encoding=None) -> np.ndarray:
    """The prompt's GPT-2 tokens as int32 [L]; SampleError if there are none or one is out of the vocab."""
    encoding = encoding or tokenizer_lib.get_encoding()
    ids = encoding.encode(text, allowed_special={"<|endoftext|>"})
    if not ids:
        raise SampleError(f"--prompt {text!r} tokenizes to no tokens")
    if max(ids) >= alphabet_size:
        raise SampleError(f"--prompt has token id {max(ids)}, outside the model's vocabulary of {alphabet_size}")
    return np.asarray(ids, np.int32)


def check_memory(model, params, num_samples: int, prompt_length: int, max_new_tokens: int, *,
                 use_cache: bool = True, top_k: int | None = None, greedy: bool = False) -> None:
    """Raises SampleError, naming the limit, when the tokens (int32 [num_samples, prompt_length +
    max_new_tokens]) outgrow the host's available memory, or the generation the device's free memory
    by XLA's buffer assignment. It compiles the very program `generate` runs (`_program`, for these
    shapes), so `generate` then reuses that compile instead of making its own."""
    need, free = 4 * num_samples * (prompt_length + max_new_tokens), memory.host_available()
    if need > free:
        most = free // (4 * num_samples) - prompt_length
        fix = f"pass --max_new_tokens {most} or less" if most > 0 else "pass a smaller --num_samples"
        raise SampleError(f"the tokens, int32 [--num_samples {num_samples}, {prompt_length} prompt + --max_new_tokens "
                          f"{max_new_tokens}], need {memory.gib(need)}, more than the {memory.gib(free)} of available "
                          f"host memory; {fix}")
    decode, _ = _program(model.cfg, prompt_length, max_new_tokens, use_cache, top_k or None, greedy)
    prompt_BxL = jax.ShapeDtypeStruct((num_samples, prompt_length), jnp.int32)
    compiled = decode.lower(params, prompt_BxL, jax.random.key(0), jnp.float32(1.0)).compile()
    need, (free, what) = memory.program_bytes(compiled, arguments_resident=True), memory.device_free(jax.local_devices()[0])
    if need > free:
        raise SampleError(f"--num_samples {num_samples}: a decoding call needs {memory.gib(need)} (XLA's buffer "
                          f"assignment), more than the {memory.gib(free)} of {what}; pass --num_samples "
                          f"{max(1, num_samples * free // need)} or less")


class _Decoder(NamedTuple):
    full: callable  # (params, window_BxT, length, key, i, temperature, top_k, greedy) -> token_B
    prefill: callable  # same arguments -> (token_B, cache)
    step: callable  # (params, cache, token_B, key, i, temperature, top_k, greedy) -> (token_B, cache)


def _argmax(logits_BxV):
    """jnp.argmax over the vocabulary (the first largest logit, or the first NaN), as two plain
    reductions: XLA:CPU runs argmax's (value, index) reduce unvectorised, ~0.2 ms over 50,257 logits,
    7% of a token at batch 1."""
    top_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
    ids_V = jnp.arange(logits_BxV.shape[-1], dtype=jnp.int32)
    hit_BxV = (logits_BxV == top_Bx1) | jnp.isnan(logits_BxV)
    return jnp.min(jnp.where(hit_BxV, ids_V, logits_BxV.shape[-1]), axis=-1)


def _pick(logits_BxV, key, temperature, top_k: int | None, greedy: bool):
    """The next token: argmax, or a draw from softmax(logits / temperature) cut to the top k."""
    if greedy:
        return _argmax(logits_BxV)
    logits_BxV = logits_BxV / temperature
    if not top_k:
        return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)
    # A draw among the k largest only: the same distribution as masking the rest, far cheaper.
    top_BxK, ids_BxK = jax.lax.top_k(logits_BxV, top_k)
    choice_B = jax.random.categorical(key, top_BxK, axis=-1)
    return jnp.take_along_axis(ids_BxK, choice_B[:, None], axis=1)[:, 0].astype(jnp.int32)


def _set_index(cache, index):
    """The cache with every index (the model's and each attention's) set to `index`."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, index) if path[-1].key == "index" else x, cache)


@functools.lru_cache(maxsize=8)
def _decoder(cfg: model_lib.ModelConfig) -> _Decoder:
    """Jitted decoding functions for `cfg`, with fixed shapes (windows padded to context_size), so a
    whole generation compiles each of them once."""
    model = model_lib.make_model(cfg.for_inference())
    static = ("top_k", "greedy")

    @functools.partial(jax.jit, static_argnames=static)
    def full(params, window_BxT, length, key, i, temperature, top_k, greedy):
        logits_BxTxV, _ = model.apply({"params": params}, window_BxT)
        return _pick(logits_BxTxV[:, length - 1], jax.random.fold_in(key, i), temperature, top_k, greedy)

    @functools.partial(jax.jit, static_argnames=static)
    def prefill(params, window_BxT, length, key, i, temperature, top_k, greedy):
        # The padding rows past `length` fill cache rows that each step overwrites before reading.
        (logits_BxTxV, _), variables = model.apply({"params": params}, window_BxT, mutable=["cache"])
        token_B = _pick(logits_BxTxV[:, length - 1], jax.random.fold_in(key, i), temperature, top_k, greedy)
        return token_B, _set_index(variables["cache"], length)

    @functools.partial(jax.jit, static_argnames=static, donate_argnames=("cache",))
    def step(params, cache, token_B, key, i, temperature, top_k, greedy):
        (logits_Bx1xV, _), variables = model.apply({"params": params, "cache": cache}, token_B[:, None],
                                                   mutable=["cache"])
        return _pick(logits_Bx1xV[:, 0], jax.random.fold_in(key, i), temperature, top_k, greedy), variables["cache"]

    return _Decoder(full, prefill, step)


@functools.lru_cache(maxsize=16)
def _program(cfg: model_lib.ModelConfig, prompt_length: int, max_new_tokens: int, use_cache: bool,
             top_k: int | None, greedy: bool):
    """The whole generation as one jitted (params, prompt_BxL, key, temperature) -> tokens_BxN.

    Token n = prompt_length + i: i = 0 comes from the prefill (or a window); while n <= context_size
    the cached steps follow, then windows of the last context_size tokens. The same calls, in the
    same order and with the same keys, as the per-token loop of `generate(compiled=False)`.
    """
    model = model_lib.make_model(cfg.for_inference())
    context, length = cfg.context_size, prompt_length
    cached = use_cache and length < context
    steps = min(max_new_tokens - 1, context - length) if cached else 0  # i = 1..steps run cached

    def pick(logits_BxV, key, i, temperature):
        return _pick(logits_BxV, jax.random.fold_in(key, i), temperature, top_k, greedy)

    def from_window(params, out_BxW, i, key, temperature):
        """Token n from the last context_size tokens before it; while n <= context_size the window
        starts at 0 and holds zeros past n - 1, inert under causal attention."""
        n = length + i
        start = jnp.maximum(n - context, 0)
        window_BxT = jax.lax.dynamic_slice_in_dim(out_BxW, start, context, axis=1)
        logits_BxTxV, _ = model.apply({"params": params}, window_BxT)
        return pick(jax.lax.dynamic_index_in_dim(logits_BxTxV, n - 1 - start, 1, keepdims=False), key, i, temperature)

    @jax.jit
    def decode(params, prompt_BxL, key, temperature):
        out_BxW = jnp.zeros((prompt_BxL.shape[0], max(length + max_new_tokens, context)), jnp.int32)
        out_BxW = out_BxW.at[:, :length].set(prompt_BxL)
        if cached:  # the prompt alone (not a padded window): the head runs on `length` positions, not context_size
            (logits_BxLxV, _), variables = model.apply({"params": params}, prompt_BxL, mutable=["cache"])
            token_B, cache = pick(logits_BxLxV[:, length - 1], key, 0, temperature), variables["cache"]
        else:
            token_B, cache = from_window(params, out_BxW, 0, key, temperature), None
        out_BxW = out_BxW.at[:, length].set(token_B)

        def step(i, carry):
            out_BxW, token_B, cache = carry
            (logits_Bx1xV, _), variables = model.apply({"params": params, "cache": cache}, token_B[:, None],
                                                       mutable=["cache"])
            token_B = pick(logits_Bx1xV[:, 0], key, i, temperature)
            return out_BxW.at[:, length + i].set(token_B), token_B, variables["cache"]

        def slide(i, out_BxW):
            return out_BxW.at[:, length + i].set(from_window(params, out_BxW, i, key, temperature))

        if steps:
            out_BxW, _, _ = jax.lax.fori_loop(1, steps + 1, step, (out_BxW, token_B, cache))
        out_BxW = jax.lax.fori_loop(steps + 1, max_new_tokens, slide, out_BxW)
        return out_BxW[:, :length + max_new_tokens]

    calls = {"prefill": int(cached), "step": steps, "full": max_new_tokens - steps - int(cached)}
    return decode, calls


def generate(model, params, prompt_BxL, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, greedy: bool = False, seed: int = 0, use_cache: bool = True,
             stats: dict | None = None, compiled: bool = True) -> np.ndarray:
    """prompt_BxL followed by max_new_tokens generated tokens, as int32 [B, L + max_new_tokens].

    Token i is drawn with the key fold_in(key(seed), i) on every path, so with the same seed the
    cached and uncached paths, compiled or per token, make the same draws. `stats`, when given,
    receives the number of `prefill`, `step` and `full` (re-encode) calls. `compiled=False` runs
    the per-token loop of earlier versions (one jitted call a token from Python).
    """
    cfg = model.cfg
    check_sampling(cfg.alphabet_size, temperature, top_k, greedy)
    context = cfg.context_size
    prompt_BxL = np.asarray(prompt_BxL, np.int32)
    b, length = prompt_BxL.shape
    if length == 0:
        raise SampleError("the prompt is empty")
    if compiled:
        decode, calls = _program(cfg, length, max_new_tokens, use_cache, top_k or None, greedy)
        if stats is not None:
            stats.update(calls)
        return np.asarray(decode(params, prompt_BxL, jax.random.key(seed), jnp.float32(temperature)))
    decoder = _decoder(cfg)
    out_BxN = np.zeros((b, length + max_new_tokens), np.int32)
    out_BxN[:, :length] = prompt_BxL
    options = dict(key=jax.random.key(seed), temperature=jnp.float32(temperature), top_k=top_k or None, greedy=greedy)
    cache, pending, calls = None, {}, {"prefill": 0, "step": 0, "full": 0}

    def fetch():  # device tokens to the host, only when a window needs them: steps queue up meanwhile
        for n, token_B in pending.items():
            out_BxN[:, n] = np.asarray(token_B)
        pending.clear()

    for i, n in enumerate(range(length, length + max_new_tokens)):  # n: tokens so far
        if cache is not None and n <= context:  # rows 0..n-2 are cached: run the last token (n-1) alone
            token_B, cache = decoder.step(params, cache, token_B, i=i, **options)
            calls["step"] += 1
        else:  # the window is the last `context` tokens at positions 0..; pad it to a fixed shape
            fetch()
            window = out_BxN[:, max(0, n - context):n]
            padded_BxT = np.pad(window, ((0, 0), (0, context - window.shape[1])))
            if use_cache and n < context:
                token_B, cache = decoder.prefill(params, padded_BxT, window.shape[1], i=i, **options)
                calls["prefill"] += 1
            else:
                token_B = decoder.full(params, padded_BxT, window.shape[1], i=i, **options)
                calls["full"] += 1
        pending[n] = token_B
    fetch()
    if stats is not None:
        stats.update(calls)
    return out_BxN


def benchmark(model, params, prompt_BxL, max_new_tokens: int, repeats: int = 3, batches=(1, 8), **options) -> str:
    """tokens/s of the compiled program and of the per-token loop, both with the cache, at each batch
    size of `batches` (the prompt's first row repeated), and of the uncached path at the first; best
    of `repeats` runs after a compiling one; as text."""
    length = np.shape(prompt_BxL)[1]
    lines = [f"benchmark: {max_new_tokens} new tokens after a {length}-token prompt "
             f"(context_size {model.cfg.context_size}, {jax.devices()[0].platform})"]
    paths = {"with cache, one program": dict(), "with cache, per token": dict(compiled=False),
             "without cache": dict(use_cache=False)}
    for b in batches:
        prompt = np.tile(np.asarray(prompt_BxL)[:1], (b, 1))
        tokens, rates = {}, {}
        for name, path in paths.items():
            if name == "without cache" and b != batches[0]:  # the reference's cost; once is enough
                continue
            generate(model, params, prompt, max_new_tokens, **path, **options)  # compiles
            seconds, stats = [], {}
            for _ in range(repeats):
                start = time.perf_counter()
                tokens[name] = generate(model, params, prompt, max_new_tokens, stats=stats, **path, **options)
                seconds.append(time.perf_counter() - start)
            rates[name] = b * max_new_tokens / min(seconds)
            detail = (f"{stats['full']} window runs" if name == "without cache" else
                      f"{stats['prefill']} prefill, {stats['step']} cached steps, {stats['full']} re-encodes")
            lines.append(f"  batch {b:<3} {name:<24} {rates[name]:10.1f} tokens/s  ({detail})")
        same = "yes" if all(np.array_equal(t, tokens["with cache, one program"]) for t in tokens.values()) else "no"
        lines.append(f"  batch {b:<3} one program / per token: {rates['with cache, one program'] / rates['with cache, per token']:.2f}x; "
                     f"same tokens: {same}")
    return "\n".join(lines)
