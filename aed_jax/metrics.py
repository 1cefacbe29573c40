"""The evaluation numbers, computed in one place for the trainer, `evaluate`, `analyze` and `bench`.

Two measures, both the seed's:

- the in-training estimate (`eval_step`, run by `Evaluator`): on `est_steps` random batches of each
  split, the mean of the batches' CE (the model's own loss, chunked or not) and of their "accuracy
  loss" (the fraction of wrong argmax predictions). A task's batches carry a "weight" (its answer
  mask): both over the answers alone, plus its exact-match accuracies from the summed counts.
- an evaluation (`loss_sums`, then `means`): sums over every position of every row of weight 1, so
  a split's windows, padded into fixed-size batches, give means over every evaluated position;
  per-position curves (`ce_by_position`) and, for an AED with one, the embedding loss come with it.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from aed_jax import data as data_lib
from aed_jax import losses
from aed_jax import mesh as mesh_lib
from aed_jax import model as model_lib
from aed_jax import tasks


def eval_step(params, batch, *, model, problems: int = 1):
    """Eval-mode CE and the seed's "accuracy loss": the fraction of wrong argmax predictions. With a
    task's "weight", both over the answers alone, and the sums of `losses.exact_match_sums` (`problems`
    packed in a row: `tasks.problems_per_sequence`)."""
    if "weight" not in batch:
        logits, batch_losses = model.apply({"params": params}, batch["x"], batch["y"])
        return {"loss": batch_losses["ce"], "accuracy_loss": jnp.mean(jnp.argmax(logits, -1) != batch["y"])}
    logits, batch_losses = model.apply({"params": params}, batch["x"], batch["y"], weights_BxT=batch["weight"])
    sums = losses.exact_match_sums(logits, batch["y"], batch["weight"], problems)
    return {"loss": batch_losses["ce"],
            "accuracy_loss": 1.0 - sums["answers_right"] / jnp.maximum(sums["answers"], 1.0), **sums}


class Evaluator:
    """The trainer's estimate, as the seed makes it: `est_steps` random batches of each split (of a
    task: fresh sequences), drawn from (random_seed, step, split), so a resumed run estimates on the
    same batches as a straight one. Calling it with the params at `step` gives {"train_loss",
    "val_loss", "train_accuracy_loss", ...}, and a task's `{split}_token_accuracy`,
    `{split}_sequence_accuracy` (per problem) and `{split}_packed_sequence_accuracy` (per sequence)."""

    def __init__(self, c: ml_collections.ConfigDict, model, mesh: jax.sharding.Mesh, tokens: dict | None):
        self.c, self.mesh, self.tokens = c, mesh, tokens  # tokens: {"train", "val"}, None for a task
        self.eval_fn = jax.jit(functools.partial(eval_step, model=model, problems=tasks.problems_per_sequence(c)))

    def batches(self, split: str, step: int):
        """The estimate's batches of `split` at `step` (host arrays, this process's rows)."""
        c, rows = self.c, mesh_lib.process_slice(self.c.batch_size)
        seed = (c.random_seed, step, int(split == "val"))
        if self.tokens is None:
            return data_lib.task_batches(c, c.batch_size, c.est_steps, seed, rows)
        return data_lib.random_batches(self.tokens[split], c.model_config.context_size, c.batch_size, c.est_steps,
                                       seed, rows)

    def __call__(self, params, step: int) -> dict:
        return estimate({split: [jax.device_get(self.eval_fn(params, mesh_lib.to_global(self.mesh, b)))
                                 for b in self.batches(split, step)] for split in ("train", "val")})


def estimate(sums: dict[str, list[dict]]) -> dict:
    """`Evaluator`'s numbers from each split's `eval_step` results (host values, a list a split): the means
    of the batches' losses and, for a task's (with exact-match sums), its accuracies from the summed counts."""
    out = {}
    for split, batches in sums.items():
        out[f"{split}_loss"] = float(np.mean([s["loss"] for s in batches]))
        out[f"{split}_accuracy_loss"] = float(np.mean([s["accuracy_loss"] for s in batches]))
        if "answers" in batches[0]:
            totals = {k: sum(float(s[k]) for s in batches) for k in batches[0] if k not in ("loss", "accuracy_loss")}
            out.update({f"{split}_{k}": v for k, v in losses.exact_match(totals).items()})
    return out


def loss_sums(logits_BxTxV, y_BxT, weight_B, embedding_terms_BxT=None, answers_BxT=None, problems: int = 1) -> dict:
    """Sums over the positions of rows with weight 1 (with a task's `answers_BxT` mask, over its
    answers alone, plus `losses.exact_match_sums` of `problems` a row): what `means` averages."""
    weight_BxT = jnp.broadcast_to(weight_B[:, None], y_BxT.shape)
    if answers_BxT is not None:
        weight_BxT = weight_BxT * answers_BxT
    ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, y_BxT) * weight_BxT
    wrong_BxT = (jnp.argmax(logits_BxTxV, axis=-1) != y_BxT).astype(jnp.float32)
    out = {"ce": jnp.sum(ce_BxT), "wrong": jnp.sum(wrong_BxT * weight_BxT), "tokens": jnp.sum(weight_BxT),
           "rows": jnp.sum(weight_B), "ce_T": jnp.sum(ce_BxT, axis=0), "tokens_T": jnp.sum(weight_BxT, axis=0)}
    if answers_BxT is not None:
        out.update(losses.exact_match_sums(logits_BxTxV, y_BxT, weight_BxT, problems))
    if embedding_terms_BxT is not None:  # per-position terms; their mean over positions is the loss
        out["embedding_T"] = jnp.sum(embedding_terms_BxT * weight_BxT, axis=0)
    return out


def accumulate(totals: dict, sums: dict) -> None:
    """Adds a batch's sums (device arrays) into `totals` (float64 host arrays)."""
    for key, value in jax.device_get(sums).items():
        totals[key] = totals.get(key, 0.0) + np.asarray(value, np.float64)


def means(totals: dict) -> dict:
    """The means of `evaluate` from accumulated `loss_sums`; DataError when no position was evaluated."""
    tokens = float(totals.get("tokens", 0.0))
    if not tokens:
        raise data_lib.DataError("no windows to evaluate")
    ce = float(totals["ce"]) / tokens
    out = {"ce_loss": ce, "perplexity": math.exp(ce), "accuracy_loss": float(totals["wrong"]) / tokens,
           "tokens": int(tokens)}
    if "embedding_T" in totals:
        out["embedding_loss"] = float(np.sum(totals["embedding_T"])) / tokens
    if "answers" in totals:
        out.update(losses.exact_match(totals))
    # Per position, over the rows that count it (every row, but for a task only where it has an answer).
    counted_T = totals["tokens_T"]
    out["ce_by_position"] = [float(ce / n) if n else None for ce, n in zip(totals["ce_T"], counted_T)]
    if "embedding_T" in totals:  # over the same rows and positions as the CE: a task's answers alone
        out["embedding_loss_by_position"] = [float(e / n) if n else None
                                             for e, n in zip(totals["embedding_T"], counted_T)]
    return out


def pad_batch(batch: dict, batch_size: int):
    """(x_BxT, y_BxT, weight_B[, answers_BxT]): a batch of b <= batch_size rows padded to batch_size,
    weight 0 on the padding; a task's batch also its answer mask ("weight" [b, T])."""
    b = batch["x"].shape[0]
    pad = ((0, batch_size - b), (0, 0))
    arrays = np.pad(batch["x"], pad), np.pad(batch["y"], pad), (np.arange(batch_size) < b).astype(np.float32)
    return arrays + (np.pad(batch["weight"], pad),) if "weight" in batch else arrays


def has_embedding_loss(cfg: model_lib.ModelConfig) -> bool:
    return cfg.model_type == "aed" and cfg.embedding_loss_type != "NONE"


@functools.lru_cache(maxsize=8)
def eval_sums(cfg: model_lib.ModelConfig, problems: int = 1):
    """A jitted (params, x_BxT, y_BxT, weight_B[, answers_BxT]) -> `loss_sums`, for the model `cfg`
    describes (in its inference form), a task's rows packing `problems` each."""
    model = model_lib.make_model(cfg.for_inference())
    with_embedding_loss = has_embedding_loss(cfg)

    @jax.jit
    def sums(params, x_BxT, y_BxT, weight_B, answers_BxT=None):
        (logits_BxTxV, _), state = model.apply({"params": params}, x_BxT, with_embedding_loss=with_embedding_loss,
                                               mutable=["intermediates"])
        terms_BxT = state["intermediates"]["embedding_loss_BxT"][0] if with_embedding_loss else None
        return loss_sums(logits_BxTxV, y_BxT, weight_B, terms_BxT, answers_BxT, problems)

    return sums


def evaluate(model, params, batches, batch_size: int, mesh: jax.sharding.Mesh | None = None,
             problems: int = 1) -> dict:
    """{"ce_loss", "perplexity", "accuracy_loss", "tokens"} (+ "embedding_loss" for an AED with one)
    over every position of `batches` ({"x", "y"} int32 [b <= batch_size, T]), and "ce_by_position"
    (T floats: the mean CE at each window position, where in the window a model gains or loses; and
    "embedding_loss_by_position" with an embedding loss); short batches are padded. With a `mesh`
    (batch_size a multiple of its devices), each batch's rows are split over it. A task's batches (with
    their "weight") also give its exact-match accuracies, its rows packing `problems` each."""
    sums_fn, totals = eval_sums(model.cfg, problems), {}
    for batch in batches:
        arrays = pad_batch(batch, batch_size)
        if mesh is not None:
            arrays = jax.device_put(arrays, mesh_lib.batch_sharding(mesh))
        accumulate(totals, sums_fn(params, *arrays))
    return means(totals)
