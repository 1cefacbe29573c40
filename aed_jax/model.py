"""The AED transformer (Yan, 2024) and its decoder-only baseline, in Flax linen.

Both are the same functions as the reference PyTorch models (docs/model.md states them): same blocks,
same init, same parameter counts, module names that mirror the reference's state-dict names so that
weights map one to one. A call returns `(logits_BxTxV, losses)` for both models, `losses` holding
`ce`, `embedding_loss`, `scaled_embedding_loss` and `total`, so the trainer never branches on the
model. Parameters are float32; activations use `ModelConfig.dtype`; attention probabilities,
logits and losses are float32.

Cached decoding: `apply(..., mutable=["cache"])` runs the same modules incrementally. Every
attention of both models is causal, so each one keeps its keys and values in a "cache" collection
of context_size rows; a call with tokens [B, S] continues at the cached index (a prompt, then one
token at a time) and sees every earlier position, as the full window would. aed_jax.sample drives it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from aed_jax import config as config_lib
from aed_jax import losses


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything a model needs; built from a run config by `ModelConfig.from_config`."""
    model_type: str = "aed"
    alphabet_size: int = 50257
    context_size: int = 200
    n_embed: int = 150
    n_head: int = 5
    n_layer: int = 13
    use_bias: bool = False
    dropout_rate: float = 0.0
    sub_pos_embed_to_decoder: str = "NO"  # AED in the seed; the baseline's as a "next step" option
    position_embedding_type: str = "LEARNED"  # the seed's table; ROPE: rotary queries and keys (docs/model.md)
    # AED only (docs/model.md, "The AED model"); the seed's names and enum strings.
    order_type: str = "ORIGINAL"
    add_pos_embed_to_decoder: bool = False
    use_ln_on_encoder_out: bool | None = None
    add_ln_before_decoder_ff: bool = False
    embedding_loss_type: str = "NONE"
    detach_type: str | None = None
    embedding_loss_coeff: float | None = None
    embedding_ln_type: str | None = None
    embedding_var_coeff: float | None = None  # (ours) the encoder side's variance floor; None or 0: off
    cross_n_head: int | None = None  # cross_attn_config.n_head; None -> 2 * n_head
    cross_use_bias: bool | None = None  # cross_attn_config.use_bias; None -> use_bias
    # The seed's "next steps" (off by default). Unequal depths keep the residual init at n_layer.
    n_layer_encoder: int | None = None
    n_layer_decoder: int | None = None
    embedding_aggregation: str = "CUM_MEAN"  # or CAUSAL_CONV: a learned causal depthwise convolution
    embedding_aggregation_kernel_size: int = 16
    # Execution: the same function, computed differently (config.MODEL_EXECUTION_KEYS, and dtype).
    dtype: Any = jnp.float32  # compute dtype; from_config resolves the run's "auto"
    attention_impl: str = "auto"  # auto: cuDNN on GPU in bf16/fp16, written out on CPU, XLA elsewhere
    ce_chunk_tokens: int | None = None  # None: 8192 on GPU/TPU, 200 on CPU; 0: unchunked
    scan_layers: bool = False  # nn.scan over each stack (stacked parameters; see unstack_layers)
    remat: bool = False  # recompute block activations in the backward pass

    def __post_init__(self):
        _check = config_lib.check_choice
        _check("model_type", self.model_type, config_lib.MODEL_TYPES)
        _check("order_type", self.order_type, config_lib.ORDER_TYPES)
        _check("sub_pos_embed_to_decoder", self.sub_pos_embed_to_decoder, config_lib.SUB_POS_EMBED_TYPES)
        _check("position_embedding_type", self.position_embedding_type, config_lib.POSITION_EMBEDDING_TYPES)
        _check("embedding_loss_type", self.embedding_loss_type, config_lib.EMBEDDING_LOSS_TYPES)
        _check("detach_type", self.detach_type, config_lib.DETACH_TYPES + (None,))
        _check("embedding_ln_type", self.embedding_ln_type, config_lib.EMBEDDING_LN_TYPES + (None,))
        _check("embedding_aggregation", self.embedding_aggregation, config_lib.EMBEDDING_AGGREGATIONS)
        _check("attention_impl", self.attention_impl, config_lib.ATTENTION_IMPLS)
        heads = (self.n_head, self.cross_heads) if self.model_type == "aed" else (self.n_head,)
        if any(self.n_embed % h for h in heads):
            raise config_lib.ConfigError(f"n_embed={self.n_embed} is not divisible by the head counts {heads}")

    @property
    def cross_heads(self) -> int:
        return self.cross_n_head if self.cross_n_head is not None else 2 * self.n_head

    @property
    def cross_bias(self) -> bool:
        return self.cross_use_bias if self.cross_use_bias is not None else self.use_bias

    @property
    def loss_coeff(self) -> float:
        return 1.0 if self.embedding_loss_coeff is None else self.embedding_loss_coeff

    @property
    def uses_next_position(self) -> bool:
        """Whether the embeddings of the positions being predicted are used (added to the decoder input
        or subtracted from the output)."""
        return (self.model_type == "aed" and self.add_pos_embed_to_decoder) or self.sub_pos_embed_to_decoder != "NO"

    @property
    def pos_rows(self) -> int:
        """T+1 rows when a "next position" embedding is used, else T (docs/model.md, AED step 1)."""
        return self.context_size + int(self.uses_next_position)

    @property
    def encoder_layers(self) -> int:
        return self.n_layer_encoder or self.n_layer

    @property
    def decoder_layers(self) -> int:
        return self.n_layer_decoder or self.n_layer

    @property
    def ce_chunk(self) -> int:
        """Tokens per cross-entropy chunk, 0 for unchunked. None: 8192 on accelerators; 200 on CPU, the
        fastest of 25-320 rows there: the head's loss and gradient run ~1.3x faster than whole, as
        each chunk's logits are used while near the cores (BENCHMARKS.md, CPU)."""
        if self.ce_chunk_tokens is None:
            return 8192 if jax.default_backend() in ("gpu", "tpu") else 200
        return self.ce_chunk_tokens

    @classmethod
    def from_config(cls, c: ml_collections.ConfigDict, **kw) -> "ModelConfig":
        """The model of run config `c`, in its compute dtype (`compute_dtype`); `kw` overrides fields."""
        m = c.model_config.to_dict()
        cross = m.pop("cross_attn_config", None) or {}
        execution = {k: c[k] for k in config_lib.MODEL_EXECUTION_KEYS if k in c}
        return cls(model_type=c.model_type, cross_n_head=cross.get("n_head"), cross_use_bias=cross.get("use_bias"),
                   **m, **{"dtype": compute_dtype(c.get("dtype", "auto")), **execution, **kw})

    def for_inference(self) -> "ModelConfig":
        """The same model without training-only execution: no rematerialisation (nothing to recompute)."""
        return dataclasses.replace(self, remat=False)

    def abstract_params(self):
        """The parameters' shapes and dtypes (jax.ShapeDtypeStruct leaves), computing nothing."""
        return jax.eval_shape(lambda: init_params(make_model(self), jax.random.key(0)))


def compute_dtype(name: str):
    """A run's `dtype` key as a jnp dtype: "auto" is bfloat16 on GPU and TPU, float32 on CPU."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    return jnp.dtype(name)


def _dense(cfg: ModelConfig, features: int, name: str, residual: bool = False, use_bias: bool | None = None):
    """Linear with the reference init: N(0, 0.02), or N(0, 0.02/sqrt(2 n_layer)) for residual_proj."""
    std = 0.02 / math.sqrt(2 * cfg.n_layer) if residual else 0.02
    return nn.Dense(features, use_bias=cfg.use_bias if use_bias is None else use_bias, name=name,
                    dtype=cfg.dtype, kernel_init=nn.initializers.normal(std), bias_init=nn.initializers.zeros)


def _layer_norm(cfg: ModelConfig, name: str, use_bias: bool | None = None, dtype: Any = None):
    return nn.LayerNorm(epsilon=1e-5, use_bias=cfg.use_bias if use_bias is None else use_bias,
                        dtype=dtype or cfg.dtype, name=name)


def _decoding(module: nn.Module) -> bool:
    """True in a cached-decoding call (`apply(..., mutable=["cache"])`), never during init."""
    return module.is_mutable_collection("cache") and not module.is_initializing()


def _cache_index(module: nn.Module, length: int):
    """Decoding: the cached index (0 in a fresh cache), advanced by `length` for the next call."""
    index = module.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    start = index.value
    index.value = start + length
    return start


def _positions(module: nn.Module, t: int):
    """Positions of a call's t tokens: 0..t-1, or when decoding the t positions after the cached ones."""
    return _cache_index(module, t) + jnp.arange(t) if _decoding(module) else jnp.arange(t)


ROPE_BASE = 10000.0


def rope(x_BxTxNxH, positions_T):
    """Rotary position embedding (Su et al., 2021), the "rotate half" layout: feature i and i + R/2
    of the first R = 2 * (H // 2) features of each head turn by the angle position * ROPE_BASE^(-2i/R)
    (an odd head's last feature stays as it is). Queries and keys both turned, q(t) . k(s) depends
    on t - s only. Computed in float32."""
    half = x_BxTxNxH.shape[-1] // 2
    freq_F = ROPE_BASE ** (-jnp.arange(half, dtype=jnp.float32) / max(half, 1))
    angle_TxF = positions_T.astype(jnp.float32)[:, None] * freq_F[None]
    cos, sin = jnp.cos(angle_TxF)[None, :, None], jnp.sin(angle_TxF)[None, :, None]
    x = x_BxTxNxH.astype(jnp.float32)
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1).astype(x_BxTxNxH.dtype)


def _rotary(cfg: ModelConfig, q_BxTxNxH, k_BxTxNxH, positions_T):
    """q and k turned by their positions with ROPE; unchanged with the learned table."""
    if cfg.position_embedding_type != "ROPE":
        return q_BxTxNxH, k_BxTxNxH
    return rope(q_BxTxNxH, positions_T), rope(k_BxTxNxH, positions_T)


def cached_attention(module: nn.Module, q_BxSxNxH, k_BxSxNxH, v_BxSxNxH, start):
    """Decoding: writes this call's keys and values into the module's cache (context_size rows) from
    row `start` (the call's first position), then attends causally by absolute position: the query
    at position p sees cached rows <= p. The cache keeps keys as [B*N, H, C] and values as
    [B*N, C, H], the layouts its two matmuls read as they are: stored as [B, C, N, H], XLA:CPU
    copied and transposed the whole cache for every attention of every token (BENCHMARKS.md)."""
    b, s, n, h = k_BxSxNxH.shape
    c = module.cfg.context_size
    key = module.variable("cache", "key", jnp.zeros, (b * n, h, c), k_BxSxNxH.dtype)
    value = module.variable("cache", "value", jnp.zeros, (b * n, c, h), v_BxSxNxH.dtype)
    key.value = jax.lax.dynamic_update_slice(key.value, k_BxSxNxH.transpose(0, 2, 3, 1).reshape(b * n, h, s),
                                             (0, 0, start))
    value.value = jax.lax.dynamic_update_slice(value.value, v_BxSxNxH.transpose(0, 2, 1, 3).reshape(b * n, s, h),
                                               (0, start, 0))
    q_KxSxH = q_BxSxNxH.transpose(0, 2, 1, 3).reshape(b * n, s, h)  # K = B*N
    mask_SxC = jnp.arange(c)[None, :] <= (start + jnp.arange(s))[:, None]
    logits_KxSxC = jnp.einsum("ksh,khc->ksc", q_KxSxH, key.value, preferred_element_type=jnp.float32)
    probs_KxSxC = _masked_softmax(logits_KxSxC * (1.0 / math.sqrt(h)), mask_SxC)
    out_KxSxH = jnp.einsum("ksc,kch->ksh", probs_KxSxC.astype(value.value.dtype), value.value)
    return out_KxSxH.reshape(b, n, s, h).transpose(0, 2, 1, 3)


def _masked_softmax(logits_TxS, mask_TxS):
    """softmax over S of the logits where mask, -inf elsewhere (logits may have leading dimensions)."""
    return jax.nn.softmax(jnp.where(mask_TxS, logits_TxS, -jnp.inf), axis=-1)


def causal_probs(q_BxTxNxH, k_BxSxNxH):
    """Causal softmax(q k^T / sqrt(H)) in float32, [B, N, T, S]: the probabilities of every attention
    of both models, written out (aed_jax.analyze reads them too)."""
    logits_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH, k_BxSxNxH, preferred_element_type=jnp.float32)
    t, s = logits_BxNxTxS.shape[-2:]
    return _masked_softmax(logits_BxNxTxS * (1.0 / math.sqrt(q_BxTxNxH.shape[-1])), jnp.tril(jnp.ones((t, s), bool)))


def padded_attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, implementation: str = "cudnn"):
    """Causal attention with the head size zero-padded to a multiple of 8, as cuDNN wants (the seed's
    AED has heads of 30 and 15). Padding changes no score (the scale stays 1/sqrt(head size)) and
    only adds zero columns to the output, which are sliced off."""
    h = q_BxTxNxH.shape[-1]
    pad = [(0, 0)] * 3 + [(0, -h % 8)]
    out = jax.nn.dot_product_attention(*(jnp.pad(a, pad) for a in (q_BxTxNxH, k_BxSxNxH, v_BxSxNxH)),
                                       scale=1.0 / math.sqrt(h), is_causal=True, implementation=implementation)
    return out[..., :h]


@functools.cache
def _warn_cudnn_fallback(reason: str) -> None:
    logging.warning("attention_impl=auto: cuDNN flash attention unavailable (%s); using XLA attention", reason)


def attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, dropout: nn.Dropout, deterministic: bool, impl: str = "auto"):
    """Causal multi-head attention (query t sees keys <= t), with dropout on the probabilities.

    impl "cudnn" is cuDNN flash attention (`padded_attention`), "xla" `jax.nn.dot_product_attention`,
    and "auto" the fastest of them where it is: cuDNN on a GPU in bf16/fp16 (XLA wherever cuDNN
    refuses the call: no cuDNN, an unsupported GPU or shape; jax checks at trace time), the matmuls
    and softmax written out on CPU (~1.1x a step there: XLA:CPU fuses them better), XLA elsewhere.
    Dropout on the probabilities needs them explicitly, so that path is written out too.
    """
    no_dropout = deterministic or dropout.rate == 0.0
    if no_dropout:
        if impl == "auto" and jax.default_backend() == "gpu" and q_BxTxNxH.dtype in (jnp.bfloat16, jnp.float16):
            try:
                return padded_attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH)
            except (RuntimeError, NotImplementedError, ValueError) as e:
                _warn_cudnn_fallback(str(e).splitlines()[0] if str(e) else type(e).__name__)
        if impl == "cudnn":
            return padded_attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH)
        if impl == "xla" or jax.default_backend() != "cpu":
            return jax.nn.dot_product_attention(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, is_causal=True)
    probs_BxNxTxS = causal_probs(q_BxTxNxH, k_BxSxNxH)
    if not no_dropout:
        probs_BxNxTxS = dropout(probs_BxNxTxS, deterministic=False)
    return jnp.einsum("bnts,bsnh->btnh", probs_BxNxTxS.astype(v_BxSxNxH.dtype), v_BxSxNxH)


class SelfAttention(nn.Module):
    """q, k, v from one Linear D->3D (split in that order), causal attention, residual_proj, dropout."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, deterministic: bool):
        cfg = self.cfg
        b, t, d = x_BxTxD.shape
        qkv_BxTx3D = _dense(cfg, 3 * d, "batch_attn_weights")(x_BxTxD)
        q, k, v = (a.reshape(b, t, cfg.n_head, d // cfg.n_head) for a in jnp.split(qkv_BxTx3D, 3, axis=-1))
        positions_T = _positions(self, t)  # decoding: the cached index, advanced past this call
        q, k = _rotary(cfg, q, k, positions_T)
        if _decoding(self):
            out_BxTxNxH = cached_attention(self, q, k, v, positions_T[0])
        else:
            out_BxTxNxH = attention(q, k, v, nn.Dropout(cfg.dropout_rate), deterministic, cfg.attention_impl)
        out_BxTxD = _dense(cfg, d, "residual_proj", residual=True)(out_BxTxNxH.reshape(b, t, d))
        return nn.Dropout(cfg.dropout_rate)(out_BxTxD, deterministic=deterministic)


class CrossAttention(nn.Module):
    """k, v from the encoder (Linear D->2D), q from the decoder (Linear D->D); causal like the reference."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, enc_BxSxD, x_BxTxD, deterministic: bool):
        cfg = self.cfg
        (b, t, d), s, n = x_BxTxD.shape, enc_BxSxD.shape[1], cfg.cross_heads
        kv_BxSx2D = _dense(cfg, 2 * d, "k_v_weights", use_bias=cfg.cross_bias)(enc_BxSxD)
        k, v = (a.reshape(b, s, n, d // n) for a in jnp.split(kv_BxSx2D, 2, axis=-1))
        q = _dense(cfg, d, "q_weights", use_bias=cfg.cross_bias)(x_BxTxD).reshape(b, t, n, d // n)
        positions_T = _positions(self, t)  # decoder and encoder side: the same positions
        q, k = _rotary(cfg, q, k, positions_T)
        if _decoding(self):  # the encoder side grows by one position a token, like self-attention's
            out_BxTxNxH = cached_attention(self, q, k, v, positions_T[0])
        else:
            out_BxTxNxH = attention(q, k, v, nn.Dropout(cfg.dropout_rate), deterministic, cfg.attention_impl)
        out_BxTxD = _dense(cfg, d, "residual_proj", residual=True, use_bias=cfg.cross_bias)(out_BxTxNxH.reshape(b, t, d))
        return nn.Dropout(cfg.dropout_rate)(out_BxTxD, deterministic=deterministic)


class FeedForward(nn.Module):
    """Linear D->4D, exact (erf) GELU, Linear 4D->D (residual_proj), dropout."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, deterministic: bool):
        h_BxTxF = nn.gelu(_dense(self.cfg, 4 * x_BxTxD.shape[-1], "linear")(x_BxTxD), approximate=False)
        out_BxTxD = _dense(self.cfg, x_BxTxD.shape[-1], "residual_proj", residual=True)(h_BxTxF)
        return nn.Dropout(self.cfg.dropout_rate)(out_BxTxD, deterministic=deterministic)


class Block(nn.Module):
    """Pre-LN transformer block: x += attn(ln1(x)); x += ff(ln2(x))."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, deterministic: bool):
        x_BxTxD = x_BxTxD + SelfAttention(self.cfg, name="multi_attn_head")(
            _layer_norm(self.cfg, "ln1")(x_BxTxD), deterministic)
        return x_BxTxD + FeedForward(self.cfg, name="feed_forward")(_layer_norm(self.cfg, "ln2")(x_BxTxD), deterministic)


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention over the raw encoder output (ORIGINAL order; ALT swaps them), FF."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, enc_BxTxD, x_BxTxD, deterministic: bool):
        cfg = self.cfg

        def self_attn(x):
            return x + SelfAttention(cfg, name="decoder_multi_attn_head")(_layer_norm(cfg, "decoder_ln1")(x), deterministic)

        def cross_attn(x):
            return x + CrossAttention(cfg, name="cross_multi_attn_head")(
                _layer_norm(cfg, "encoder_cross_ln")(enc_BxTxD), _layer_norm(cfg, "decoder_cross_ln")(x), deterministic)

        first, second = (self_attn, cross_attn) if cfg.order_type == "ORIGINAL" else (cross_attn, self_attn)
        x_BxTxD = second(first(x_BxTxD))
        return x_BxTxD + FeedForward(cfg, name="decoder_feed_forward")(_layer_norm(cfg, "decoder_ln2")(x_BxTxD), deterministic)


class _Layer(nn.Module):
    """One block as an nn.scan body: (x, enc) -> (x, None), its parameters under "block"."""
    cfg: ModelConfig
    decoder: bool
    deterministic: bool

    @nn.compact
    def __call__(self, x_BxTxD, enc_BxTxD):
        if self.decoder:
            return DecoderBlock(self.cfg, name="block")(enc_BxTxD, x_BxTxD, self.deterministic), None
        return Block(self.cfg, name="block")(x_BxTxD, self.deterministic), None


def _stack(cfg: ModelConfig, name: str, depth: int, x_BxTxD, enc_BxTxD=None, deterministic: bool = True):
    """`depth` blocks (decoder blocks when `enc_BxTxD` is given) named `<name>_<i>` like the reference,
    or with `scan_layers` one nn.scan over them, parameters stacked under `<name>/block`."""
    decoder = enc_BxTxD is not None
    if cfg.scan_layers:
        layer = nn.remat(_Layer, prevent_cse=False) if cfg.remat else _Layer
        scanned = nn.scan(layer, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                          split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast, length=depth)
        return scanned(cfg, decoder, deterministic, name=name)(x_BxTxD, enc_BxTxD)[0]
    cls = DecoderBlock if decoder else Block
    if cfg.remat:  # `deterministic`, the last argument, stays static
        cls = nn.remat(cls, static_argnums=(3,) if decoder else (2,))
    for i in range(depth):
        args = (enc_BxTxD, x_BxTxD) if decoder else (x_BxTxD,)
        x_BxTxD = cls(cfg, name=f"{name}_{i}")(*args, deterministic)
    return x_BxTxD


LOSS_KEYS = ("ce", "embedding_loss", "scaled_embedding_loss", "total")


def _head(cfg: ModelConfig, embed: nn.Embed, out_BxTxD, targets_BxT, train: bool, emb_loss=None, weights_BxT=None):
    """Tied output layer and the losses dict. The logits are a float32-accumulated matmul of the
    compute-dtype activations and embedding. Training with `ce_chunk` streams the cross-entropy
    through chunks of rows instead: the full logits are still returned, and under jit XLA drops
    them when only the loss is used (the train step). Evaluation returns the logits anyway (the
    accuracy loss needs them), so its cross-entropy comes from them and the head runs once.
    `weights_BxT` (a task's loss mask: 1 on the answers, 0 elsewhere) makes the cross-entropy the mean
    over the counted positions; without it the program is the one of every language-modelling run."""
    logits_BxTxV = jnp.einsum("btd,vd->btv", out_BxTxD.astype(cfg.dtype), embed.embedding.astype(cfg.dtype),
                              preferred_element_type=jnp.float32)
    zero = jnp.zeros((), jnp.float32)
    if targets_BxT is None:
        ce = zero
    elif cfg.ce_chunk and train:
        ce = losses.chunked_cross_entropy(out_BxTxD, embed.embedding, targets_BxT, cfg.ce_chunk, cfg.dtype,
                                          weights_BxT)
    else:
        ce = losses.cross_entropy(logits_BxTxV, targets_BxT, weights_BxT)
    emb = zero if emb_loss is None else emb_loss
    coeff = cfg.loss_coeff if emb_loss is not None else 0.0
    return logits_BxTxV, {"ce": ce, "embedding_loss": emb, "scaled_embedding_loss": coeff * emb,
                          "total": ce + coeff * emb}


def _embeddings(cfg: ModelConfig, tokens_BxT, positions_T):
    """(token embedding module, input embeddings, next_TxD): tok_emb(x) + pos_emb(0..T-1) (ROPE:
    tok_emb(x) alone), and the embeddings of the positions being predicted, pos_emb(1..T) (ROPE: the
    learned `next_positional_embedding` rows 0..T-1), None when unused (docs/model.md, AED step 1)."""
    embed = _embed(cfg, cfg.alphabet_size, "token_embedding")
    if cfg.position_embedding_type == "ROPE":
        next_TxD = _embed(cfg, cfg.context_size, "next_positional_embedding")(positions_T) \
            if cfg.uses_next_position else None
        return embed, embed(tokens_BxT), next_TxD
    pos = _embed(cfg, cfg.pos_rows, "positional_embedding")
    next_TxD = pos(positions_T + 1) if cfg.uses_next_position else None
    return embed, embed(tokens_BxT) + pos(positions_T)[None], next_TxD


def _sub_next_positions(cfg: ModelConfig, out_BxTxD, next_TxD):
    """AED step 5 (docs/model.md): subtract the next positions' embeddings; YES_LN then applies a LayerNorm."""
    if cfg.sub_pos_embed_to_decoder == "NO":
        return out_BxTxD
    out_BxTxD = out_BxTxD - next_TxD[None]
    if cfg.sub_pos_embed_to_decoder == "YES_LN":
        out_BxTxD = _layer_norm(cfg, "post_sub_pos_ln")(out_BxTxD)
    return out_BxTxD


class GPT(nn.Module):
    """The decoder-only baseline: embeddings, n_layer blocks, LayerNorm, tied output layer."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT, targets_BxT=None, train: bool = False, with_embedding_loss: bool | None = None,
                 weights_BxT=None):
        """with_embedding_loss: accepted for a uniform call; the baseline has no embedding loss.
        weights_BxT: which targets the cross-entropy counts (`_head`); None: all."""
        cfg, positions_T = self.cfg, _positions(self, tokens_BxT.shape[1])
        embed, x_BxTxD, next_TxD = _embeddings(cfg, tokens_BxT, positions_T)
        x_BxTxD = self.perturb("embeddings", x_BxTxD)  # aed_jax.ablations only; adds nothing otherwise
        x_BxTxD = nn.Dropout(cfg.dropout_rate)(x_BxTxD, deterministic=not train)
        x_BxTxD = _stack(cfg, "transformer_blocks", cfg.n_layer, x_BxTxD, deterministic=not train)
        out_BxTxD = _sub_next_positions(cfg, _layer_norm(cfg, "ln")(x_BxTxD), next_TxD)
        return _head(cfg, embed, out_BxTxD, targets_BxT, train, weights_BxT=weights_BxT)


class AED(nn.Module):
    """The auto-regressive encoder-decoder transformer, its steps numbered as in docs/model.md."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT, targets_BxT=None, train: bool = False, with_embedding_loss: bool | None = None,
                 weights_BxT=None):
        """with_embedding_loss: compute the embedding loss (default: only when training, as the
        reference does); True in eval mode reports it without dropout. weights_BxT: which targets
        the cross-entropy counts (`_head`); None: all. The embedding loss is over every position
        whatever the weights: it is about the inputs, which are all seen."""
        cfg, positions_T = self.cfg, _positions(self, tokens_BxT.shape[1])
        # 1-2. Input embeddings (ROPE: the tokens' alone) and the causal encoder.
        embed, emb_BxTxD, next_TxD = _embeddings(cfg, tokens_BxT, positions_T)
        emb_BxTxD = self.perturb("embeddings", emb_BxTxD)  # aed_jax.ablations only; adds nothing otherwise
        emb_BxTxD = nn.Dropout(cfg.dropout_rate)(emb_BxTxD, deterministic=not train)
        enc_BxTxD = _stack(cfg, "encoder_transformer_blocks", cfg.encoder_layers, emb_BxTxD, deterministic=not train)
        enc_BxTxD = self.perturb("encoder_out", enc_BxTxD)  # the same
        # 3. Bridge to the decoder.
        dec_BxTxD = enc_BxTxD
        if cfg.add_ln_before_decoder_ff:
            dec_BxTxD = _layer_norm(cfg, "ffd_ln")(dec_BxTxD)
        dec_BxTxD = _dense(cfg, cfg.n_embed, "decoder_feed_forward")(dec_BxTxD)
        if cfg.add_pos_embed_to_decoder:
            dec_BxTxD = dec_BxTxD + next_TxD[None]
        # 4. Decoder: every block cross-attends to the same raw encoder output.
        dec_BxTxD = _stack(cfg, "decoder_transformer_blocks", cfg.decoder_layers, dec_BxTxD, enc_BxTxD, not train)
        # 5. Final LN, optional subtraction of the "next" positions' embeddings, tied output layer.
        out_BxTxD = _sub_next_positions(cfg, _layer_norm(cfg, "ln")(dec_BxTxD), next_TxD)
        # 6. Embedding loss (training mode only, as in the reference).
        emb_loss = None
        with_embedding_loss = train if with_embedding_loss is None else with_embedding_loss
        if cfg.embedding_loss_type != "NONE" and (with_embedding_loss or self.is_initializing()):
            emb_loss = self._embedding_loss(emb_BxTxD, enc_BxTxD)
        elif self.is_initializing():
            self._declare_embedding_lns(emb_BxTxD)
        return _head(cfg, embed, out_BxTxD, targets_BxT, train, emb_loss, weights_BxT)

    def _embedding_lns(self):
        """LayerNorms of the embedding loss, always with bias. The reference creates `embeddings_ln`
        whenever embedding_ln_type != NONE, so also when it is None (no loss): its 2D parameters
        are part of the seed's counts (15,763,200 for the no-loss run)."""
        cfg = self.cfg
        enc_name, emb_name = EMBEDDING_LNS
        enc_ln = _layer_norm(cfg, enc_name, True, jnp.float32) if cfg.use_ln_on_encoder_out else None
        emb_ln = _layer_norm(cfg, emb_name, True, jnp.float32) if cfg.embedding_ln_type != "NONE" else None
        return enc_ln, emb_ln

    def _declare_embedding_lns(self, x_BxTxD):
        for ln in self._embedding_lns():
            if ln is not None:
                ln(x_BxTxD)

    def _embedding_loss(self, emb_BxTxD, enc_BxTxD):
        cfg = self.cfg
        enc_ln, emb_ln = self._embedding_lns()
        emb_BxTxD, enc_BxTxD = emb_BxTxD.astype(jnp.float32), enc_BxTxD.astype(jnp.float32)
        if cfg.detach_type == "EMBEDDING":
            emb_BxTxD = jax.lax.stop_gradient(emb_BxTxD)
        elif cfg.detach_type == "ENCODER_OUT":
            enc_BxTxD = jax.lax.stop_gradient(enc_BxTxD)
        if cfg.embedding_loss_type in config_lib.PARAMETER_FREE_LOSSES:
            # (ours) The sides before the LayerNorms, normalised without parameters: the LayerNorms are still
            # declared (the parameters of the same config with a seed loss), but no scale or bias is in the path.
            for ln in (enc_ln, emb_ln) if self.is_initializing() else ():
                if ln is not None:
                    ln(emb_BxTxD)
            avg_BxTxD = running_mean(emb_BxTxD)
            terms_BxT = losses.embedding_loss_terms(avg_BxTxD, enc_BxTxD, cfg.embedding_loss_type)
            return self._loss(terms_BxT, losses.standardise(enc_BxTxD), losses.standardise(avg_BxTxD))
        if enc_ln is not None:
            enc_BxTxD = enc_ln(enc_BxTxD)
        if cfg.embedding_ln_type == "INIT":
            emb_BxTxD = emb_ln(emb_BxTxD)
        if cfg.embedding_aggregation == "CUM_MEAN":
            avg_BxTxD = running_mean(emb_BxTxD)
        else:  # CAUSAL_CONV: position t mixes positions t-K+1..t, one learned filter a feature
            k = cfg.embedding_aggregation_kernel_size
            conv = nn.Conv(cfg.n_embed, (k,), padding=[(k - 1, 0)], feature_group_count=cfg.n_embed,
                           kernel_init=nn.initializers.constant(1.0 / k), name="embedding_aggregation")
            avg_BxTxD = conv(emb_BxTxD)
        if cfg.embedding_ln_type == "AVG_CUM_SUM":
            avg_BxTxD = emb_ln(avg_BxTxD)
        terms_BxT = losses.embedding_loss_terms(avg_BxTxD, enc_BxTxD, cfg.embedding_loss_type)
        return self._loss(terms_BxT, enc_BxTxD, avg_BxTxD)

    def _loss(self, terms_BxT, enc_BxTxD, avg_BxTxD):
        """The embedding loss from its terms by position, given both sides as the terms compare them:
        (ours) plus `embedding_var_coeff` times each sequence's variance floor on the encoder side, added to
        each of its positions' terms."""
        if self.cfg.embedding_var_coeff:
            terms_BxT = terms_BxT + self.cfg.embedding_var_coeff * losses.variance_floor(enc_BxTxD)[:, None]
        self.sow("intermediates", "embedding_loss_BxT", terms_BxT)
        self.sow("intermediates", "embedding_loss_target_BxTxD", avg_BxTxD)  # what analyze compares layers with
        return terms_BxT.mean()


def running_mean(emb_BxTxD):
    """[B, T, D]: at each t the mean of emb over positions 0..t (the embedding loss's CUM_MEAN), in float32."""
    count_T = jnp.arange(1, emb_BxTxD.shape[1] + 1, dtype=jnp.float32)
    return jnp.cumsum(emb_BxTxD.astype(jnp.float32), axis=1) / count_T[None, :, None]


def _embed(cfg: ModelConfig, rows: int, name: str):
    return nn.Embed(rows, cfg.n_embed, dtype=cfg.dtype, embedding_init=nn.initializers.normal(0.02), name=name)


def make_model(cfg: ModelConfig) -> nn.Module:
    """The one factory: the AED model or the baseline, by `cfg.model_type`."""
    return AED(cfg) if cfg.model_type == "aed" else GPT(cfg)


def from_config(c: ml_collections.ConfigDict) -> nn.Module:
    """The model run config `c` trains: `make_model(ModelConfig.from_config(c))`."""
    return make_model(ModelConfig.from_config(c))


def init_params(model: nn.Module, rng: jax.Array, batch_size: int = 1):
    """float32 parameters of `model` for its context size."""
    tokens = jnp.zeros((batch_size, model.cfg.context_size), jnp.int32)
    return model.init({"params": rng, "dropout": rng}, tokens, tokens, train=False)["params"]


POSITIONAL_TABLES = ("positional_embedding", "next_positional_embedding")  # the learned table; ROPE's
EMBEDDING_LNS = ("encoder_out_ln", "embeddings_ln")  # the embedding loss's LayerNorms: encoder side, inputs' side


def count_params(params, exclude_positional: bool = True) -> int:
    """Parameter count as the seed counts it: the positional tables excluded, the tied matrix once."""
    if exclude_positional:
        params = {k: v for k, v in params.items() if k not in POSITIONAL_TABLES}
    return sum(x.size for x in jax.tree_util.tree_leaves(params))


def flops_per_token(params, cfg: ModelConfig) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward), PaLM's convention, for MFU (the
    trainer's progress line, `bench`): 6 * N_matmul + 12 * n_attention * T * D.

    N_matmul counts every matmul weight: every Dense kernel plus the tied output layer (V x D);
    embedding lookups are not matmuls. Each attention (self- or cross-) costs 2 * T * D multiply-adds
    per token for q.k and again for p.v, counted over the full window (not halved for the causal mask).
    `params` may be abstract (shapes only).
    """
    flat = [(jax.tree_util.keystr(path), x) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]]
    matmul = sum(x.size for name, x in flat if name.endswith("['kernel']")) + cfg.alphabet_size * cfg.n_embed
    # One attention per q/k/v projection; a scanned stack holds its layers' kernels as [L, in, out].
    n_attention = sum(x.shape[0] if x.ndim == 3 else 1 for name, x in flat
                      if name.endswith(("['batch_attn_weights']['kernel']", "['k_v_weights']['kernel']")))
    return 6.0 * matmul + 12.0 * n_attention * cfg.context_size * cfg.n_embed


def unstack_layers(params):
    """Parameters of a `scan_layers` model in the per-layer layout (`<stack>_<i>`) of the reference
    and of the unscanned model; other parameters pass through unchanged."""
    out = {}
    for name, sub in params.items():
        if isinstance(sub, dict) and set(sub) == {"block"}:
            depth = jax.tree_util.tree_leaves(sub)[0].shape[0]
            out.update({f"{name}_{i}": jax.tree_util.tree_map(lambda a, i=i: a[i], sub["block"]) for i in range(depth)})
        else:
            out[name] = sub
    return out


def stack_layers(params, cfg: ModelConfig):
    """The inverse of `unstack_layers` for `cfg` (a no-op unless cfg.scan_layers)."""
    if not cfg.scan_layers:
        return params
    stacks = {"transformer_blocks": cfg.n_layer} if cfg.model_type == "baseline" else {
        "encoder_transformer_blocks": cfg.encoder_layers, "decoder_transformer_blocks": cfg.decoder_layers}
    out = {k: v for k, v in params.items() if not any(k.startswith(f"{name}_") for name in stacks)}
    for name, depth in stacks.items():
        layers = [params[f"{name}_{i}"] for i in range(depth)]
        out[name] = {"block": jax.tree_util.tree_map(lambda *a: jnp.stack(a), *layers)}
    return out
