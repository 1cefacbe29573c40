"""Losses in float32: next-token cross-entropy (whole or chunked) and the AED embedding loss terms."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits_BxTxV, targets_BxT):
    """Mean next-token cross-entropy in float32 over every position."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV.astype(jnp.float32), targets_BxT).mean()


def chunked_cross_entropy(out_BxTxD, embedding_VxD, targets_BxT, chunk_tokens: int, dtype=jnp.float32):
    """`cross_entropy(out @ embedding.T, targets)` without the [B*T, V] float32 logits in memory.

    The B*T rows go through the tied output layer at most `chunk_tokens` at a time inside a
    rematerialised scan, so the forward keeps one chunk's logits and the backward recomputes them chunk by chunk.
    The matmul runs in `dtype` with float32 accumulation, as the unchunked path does.
    """
    d = out_BxTxD.shape[-1]
    out_NxD, targets_N = out_BxTxD.reshape(-1, d), targets_BxT.reshape(-1)
    n = out_NxD.shape[0]
    chunks = -(-n // chunk_tokens)
    chunk_tokens = -(-n // chunks)  # the same number of chunks, evened out: padding < chunks rows
    pad = chunks * chunk_tokens - n
    out_CxKxD = jnp.pad(out_NxD, ((0, pad), (0, 0))).reshape(chunks, chunk_tokens, d).astype(dtype)
    targets_CxK = jnp.pad(targets_N, (0, pad)).reshape(chunks, chunk_tokens)
    valid_CxK = (jnp.arange(chunks * chunk_tokens) < n).reshape(chunks, chunk_tokens)
    embedding_VxD = embedding_VxD.astype(dtype)

    @jax.checkpoint
    def chunk_loss(out_KxD, targets_K, valid_K):
        logits_KxV = jnp.einsum("kd,vd->kv", out_KxD, embedding_VxD, preferred_element_type=jnp.float32)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_KxV, targets_K) * valid_K)

    total, _ = jax.lax.scan(lambda acc, xs: (acc + chunk_loss(*xs), None), jnp.zeros((), jnp.float32),
                            (out_CxKxD, targets_CxK, valid_CxK))
    return total / n


def embedding_loss_terms(avg_BxTxD, enc_BxTxD, loss_type: str):
    """Per-position disaffinity between the aggregated embeddings and the encoder output.

    The mean of these terms over positions is the embedding loss: for MSE (and HUBER) it equals the
    mean over every element, since every position has D features.
    """
    if loss_type == "MSE":
        return jnp.mean(jnp.square(avg_BxTxD - enc_BxTxD), axis=-1)
    if loss_type == "HUBER":  # quadratic within 1.0, linear beyond: MSE that tolerates outliers
        return jnp.mean(optax.huber_loss(avg_BxTxD, enc_BxTxD, delta=1.0), axis=-1)
    eps = 1e-8  # torch.nn.functional.cosine_similarity clamps each norm at eps
    norms_BxT = (jnp.maximum(jnp.linalg.norm(avg_BxTxD, axis=-1), eps)
                 * jnp.maximum(jnp.linalg.norm(enc_BxTxD, axis=-1), eps))
    cos_BxT = jnp.sum(avg_BxTxD * enc_BxTxD, axis=-1) / norms_BxT
    if loss_type == "COSINE":
        return 1.0 - (cos_BxT + 1.0) / 2.0
    return -jnp.log((cos_BxT + 1.0) / 2.0)  # LOG_COSINE
