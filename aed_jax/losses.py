"""Losses in float32: next-token cross-entropy (whole or chunked) and the AED embedding loss terms."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def cross_entropy(logits_BxTxV, targets_BxT, weights_BxT=None):
    """Mean next-token cross-entropy in float32 over every position, or, with `weights_BxT` (0 for a
    position that is not counted, 1 for one that is: a task's answers), over the counted ones."""
    ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV.astype(jnp.float32), targets_BxT)
    if weights_BxT is None:
        return ce_BxT.mean()
    return jnp.sum(ce_BxT * weights_BxT) / _count(weights_BxT)


def _count(weights):
    """The sum of the weights, or 1 where nothing is counted (the loss is then 0, not NaN)."""
    total = jnp.sum(weights.astype(jnp.float32))
    return jnp.where(total > 0, total, 1.0)


def exact_match_sums(logits_BxTxV, targets_BxT, weights_BxT, problems: int = 1) -> dict:
    """What a task's exact-match accuracies are made of, summed over a batch: "answers" counted
    (weight > 0), "answers_right" (argmax = target there), the rows with an answer ("answer_rows") and
    with every answer right ("rows_right"), and the same for the `problems` a row packs
    ("answer_problems", "problems_right"). A row's answers are its problems' in order, in equal
    shares (`tasks.problems_per_sequence`): the k-th of its n answers is problem k * problems // n's.
    Sums, so that batches and devices add up exactly."""
    scored_BxT = weights_BxT > 0
    right_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT) & scored_BxT
    has_answer_B = jnp.any(scored_BxT, axis=-1)
    all_right_B = jnp.all(right_BxT | ~scored_BxT, axis=-1) & has_answer_B
    answers_B = jnp.sum(scored_BxT, axis=-1, dtype=jnp.int32)
    rank_BxT = jnp.cumsum(scored_BxT, axis=-1, dtype=jnp.int32) - 1  # an answer's place among its row's
    problem_BxT = rank_BxT * problems // jnp.maximum(answers_B, 1)[:, None]
    in_BxTxP = (problem_BxT[..., None] == jnp.arange(problems)[None, None]) & scored_BxT[..., None]
    has_answer_BxP = jnp.any(in_BxTxP, axis=1)
    all_right_BxP = jnp.all(right_BxT[..., None] | ~in_BxTxP, axis=1) & has_answer_BxP
    return {"answers": jnp.sum(scored_BxT, dtype=jnp.float32), "answers_right": jnp.sum(right_BxT, dtype=jnp.float32),
            "answer_rows": jnp.sum(has_answer_B, dtype=jnp.float32), "rows_right": jnp.sum(all_right_B, dtype=jnp.float32),
            "answer_problems": jnp.sum(has_answer_BxP, dtype=jnp.float32),
            "problems_right": jnp.sum(all_right_BxP, dtype=jnp.float32)}


def exact_match(sums: dict) -> dict:
    """From accumulated `exact_match_sums`: `token_accuracy` (answers right / answers),
    `sequence_accuracy` (problems with every answer right / problems with an answer) and
    `packed_sequence_accuracy` (the same per row: rows with every answer right / rows with an answer),
    which differs from it only where a row packs several problems (sort)."""
    return {"token_accuracy": float(sums["answers_right"]) / max(float(sums["answers"]), 1.0),
            "sequence_accuracy": float(sums["problems_right"]) / max(float(sums["answer_problems"]), 1.0),
            "packed_sequence_accuracy": float(sums["rows_right"]) / max(float(sums["answer_rows"]), 1.0)}


def chunked_cross_entropy(out_BxTxD, embedding_VxD, targets_BxT, chunk_tokens: int, dtype=jnp.float32,
                          weights_BxT=None):
    """`cross_entropy(out @ embedding.T, targets, weights)` without the [B*T, V] float32 logits in memory.

    The B*T rows go through the tied output layer at most `chunk_tokens` at a time in a scan, so
    only one chunk's logits exist at once. Under differentiation each chunk's gradients (softmax -
    one-hot, through both matmuls) are taken as soon as its logits exist, in the same scan: the
    backward pass only scales them, so the head costs the FLOPs of the unchunked path, with no
    recomputation (a rematerialised scan would run the head's forward matmul twice). The matmuls
    run in `dtype` with float32 accumulation, as the unchunked path's do.
    """
    d = out_BxTxD.shape[-1]
    out_NxD, targets_N = out_BxTxD.reshape(-1, d), targets_BxT.reshape(-1)
    n = out_NxD.shape[0]
    chunks = -(-n // chunk_tokens)
    chunk_tokens = -(-n // chunks)  # the same number of chunks, evened out: padding < chunks rows
    pad = chunks * chunk_tokens - n
    out_CxKxD = jnp.pad(out_NxD, ((0, pad), (0, 0))).reshape(chunks, chunk_tokens, d)
    targets_CxK = jnp.pad(targets_N, (0, pad)).reshape(chunks, chunk_tokens)
    if weights_BxT is None:
        valid_CxK = (jnp.arange(chunks * chunk_tokens) < n).reshape(chunks, chunk_tokens).astype(jnp.float32)
        return _ce_sum(out_CxKxD, embedding_VxD, targets_CxK, valid_CxK, jnp.dtype(dtype)) / n
    weights_N = weights_BxT.reshape(-1).astype(jnp.float32)
    valid_CxK = jnp.pad(weights_N, (0, pad)).reshape(chunks, chunk_tokens)
    return _ce_sum(out_CxKxD, embedding_VxD, targets_CxK, valid_CxK, jnp.dtype(dtype)) / _count(weights_N)


def _chunk_logits(out_KxD, embedding_VxD, dtype):
    return jnp.einsum("kd,vd->kv", out_KxD.astype(dtype), embedding_VxD.astype(dtype),
                      preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ce_sum(out_CxKxD, embedding_VxD, targets_CxK, valid_CxK, dtype):
    """Summed cross-entropy of the valid rows, chunk by chunk (the value alone: evaluation)."""
    def chunk(total, xs):
        out_KxD, targets_K, valid_K = xs
        ce_K = optax.softmax_cross_entropy_with_integer_labels(_chunk_logits(out_KxD, embedding_VxD, dtype), targets_K)
        return total + jnp.sum(ce_K * valid_K), None
    return jax.lax.scan(chunk, jnp.zeros((), jnp.float32), (out_CxKxD, targets_CxK, valid_CxK))[0]


def _ce_sum_fwd(out_CxKxD, embedding_VxD, targets_CxK, valid_CxK, dtype):
    emb = embedding_VxD.astype(dtype)

    def chunk(d_emb_VxD, xs):
        out_KxD, targets_K, valid_K = xs
        logits_KxV = _chunk_logits(out_KxD, emb, dtype)
        lse_K = jax.nn.logsumexp(logits_KxV, axis=-1)
        ce_K = lse_K - jnp.take_along_axis(logits_KxV, targets_K[:, None], axis=-1)[:, 0]
        d_logits_KxV = (jnp.exp(logits_KxV - lse_K[:, None])
                        - jax.nn.one_hot(targets_K, logits_KxV.shape[-1], dtype=jnp.float32)) * valid_K[:, None]
        d_logits_KxV = d_logits_KxV.astype(dtype)
        d_out_KxD = jnp.einsum("kv,vd->kd", d_logits_KxV, emb, preferred_element_type=jnp.float32)
        d_emb_VxD += jnp.einsum("kv,kd->vd", d_logits_KxV, out_KxD.astype(dtype), preferred_element_type=jnp.float32)
        return d_emb_VxD, (jnp.sum(ce_K * valid_K), d_out_KxD.astype(out_KxD.dtype))

    d_emb_VxD, (ce_C, d_out_CxKxD) = jax.lax.scan(
        chunk, jnp.zeros(embedding_VxD.shape, jnp.float32), (out_CxKxD, targets_CxK, valid_CxK))
    return jnp.sum(ce_C), (d_out_CxKxD, d_emb_VxD.astype(embedding_VxD.dtype), targets_CxK, valid_CxK)


def _ce_sum_bwd(dtype, residuals, g):
    d_out_CxKxD, d_emb_VxD, targets_CxK, valid_CxK = residuals
    return ((g * d_out_CxKxD).astype(d_out_CxKxD.dtype), (g * d_emb_VxD).astype(d_emb_VxD.dtype),
            np.zeros(targets_CxK.shape, jax.dtypes.float0), jnp.zeros_like(valid_CxK))


_ce_sum.defvjp(_ce_sum_fwd, _ce_sum_bwd)


# The standardisation of NORM_MSE: far below any variance a trained side has, so that it scales nothing.
# LayerNorm's 1e-5 would not do: against a running mean's feature variance of ~1e-4, a side shrunk towards
# eps would count as partly zero, and the loss would fall by shrinking it (docs/model.md, NORM_MSE).
STANDARDISE_EPS = 1e-12
VARIANCE_FLOOR_EPS = 1e-4  # VICReg's, inside the square root of the variance floor


def standardise(v_BxTxD):
    """Each vector centred and scaled to unit variance over its features, with nothing learnable: the
    parameter-free normalisation of NORM_MSE (and, up to a positive factor, of CENTERED_COSINE)."""
    centred_BxTxD = v_BxTxD - jnp.mean(v_BxTxD, axis=-1, keepdims=True)
    return centred_BxTxD * jax.lax.rsqrt(jnp.mean(jnp.square(centred_BxTxD), axis=-1, keepdims=True) + STANDARDISE_EPS)


def variance_floor(enc_BxTxD):
    """[B]: VICReg's variance hinge of each sequence, mean over features d of max(0, 1 - sqrt(Var_t(enc_d) + eps)),
    the variance over the sequence's positions. Zero once every feature varies along the sequence with a
    standard deviation of at least 1; it grows as features collapse to constants. Per sequence, not over
    the batch, so that a sequence's loss never depends on the others in its (micro-)batch."""
    std_BxD = jnp.sqrt(jnp.var(enc_BxTxD, axis=1) + VARIANCE_FLOOR_EPS)
    return jnp.mean(jnp.maximum(0.0, 1.0 - std_BxD), axis=-1)


def embedding_loss_terms(avg_BxTxD, enc_BxTxD, loss_type: str):
    """Per-position disaffinity between the aggregated embeddings and the encoder output.

    The mean of these terms over positions is the embedding loss: for MSE (and HUBER) it equals the
    mean over every element, since every position has D features. NORM_MSE and CENTERED_COSINE are
    given the sides before any LayerNorm (`model.AED._embedding_loss`) and normalise them here.
    """
    if loss_type == "MSE":
        return jnp.mean(jnp.square(avg_BxTxD - enc_BxTxD), axis=-1)
    if loss_type == "HUBER":  # quadratic within 1.0, linear beyond: MSE that tolerates outliers
        return jnp.mean(optax.huber_loss(avg_BxTxD, enc_BxTxD, delta=1.0), axis=-1)
    if loss_type == "NORM_MSE":  # MSE of the standardised sides: 2 - 2 r, r their correlation over the features
        return jnp.mean(jnp.square(standardise(avg_BxTxD) - standardise(enc_BxTxD)), axis=-1)
    if loss_type == "CENTERED_COSINE":  # each side less its feature mean: no shared offset makes the cosine high
        avg_BxTxD = avg_BxTxD - jnp.mean(avg_BxTxD, axis=-1, keepdims=True)
        enc_BxTxD = enc_BxTxD - jnp.mean(enc_BxTxD, axis=-1, keepdims=True)
    eps = 1e-8  # torch.nn.functional.cosine_similarity clamps each norm at eps
    norms_BxT = (jnp.maximum(jnp.linalg.norm(avg_BxTxD, axis=-1), eps)
                 * jnp.maximum(jnp.linalg.norm(enc_BxTxD, axis=-1), eps))
    cos_BxT = jnp.sum(avg_BxTxD * enc_BxTxD, axis=-1) / norms_BxT
    if loss_type in ("COSINE", "CENTERED_COSINE"):
        return 1.0 - (cos_BxT + 1.0) / 2.0
    if loss_type == "LOG_COSINE":
        return -jnp.log((cos_BxT + 1.0) / 2.0)
    # A type config.py allows but this function lacks: a model option half added (docs/package.md, "Add
    # a model option"), which must not train as another loss.
    raise ValueError(f"embedding_loss_type {loss_type!r} has no terms in losses.embedding_loss_terms")
