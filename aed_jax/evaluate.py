"""`python -m aed_jax.evaluate --workdir DIR`: the losses of a checkpoint on a token split.

Reports what the seed's estimates report, in eval mode (no dropout): mean next-token CE, its
perplexity, the "accuracy loss" (fraction of positions where argmax(logits) != target) and, for an
AED model with an embedding loss, that loss (computed without dropout; the reference computes it
only in training). `--full` runs every non-overlapping window of the split in order (offsets 0, T,
2T, ... while i + T + 1 <= N), so the result is deterministic; `--batches N` draws N random batches
as the seed's estimate does. Every mean is over all evaluated positions; `--json` also gives
`ce_by_position`, the mean CE at each window position t = 0..T-1 (and `embedding_loss_by_position`).
A run on a synthetic task (`dataset` "task:<name>") is evaluated on `--batches` fresh sequences of
its task, drawn from `--seed`: CE and accuracy loss over the answers alone, and the exact-match
`token_accuracy` (answers right) and `sequence_accuracy` (sequences with every answer right).

Only the parameters are restored (host arrays), then placed on a mesh of this machine's devices,
so a checkpoint written on any number of devices evaluates here: the run config's mesh where it fits
these devices (an FSDP config keeps its parameters sharded), else every device on `data`; each
batch's rows are split over every device, the batch padded to a multiple of the device count.
"""
from __future__ import annotations

import functools
import glob
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags

from aed_jax import cli
from aed_jax import data as data_lib
from aed_jax import losses
from aed_jax import mesh as mesh_lib
from aed_jax import model as model_lib
from aed_jax import rundir
from aed_jax import tasks


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("workdir", None, "Run folder holding checkpoints/ (and best/).", flag_values=fv)
    flags.DEFINE_string("checkpoint", "latest", "Which checkpoint: latest, best, or a step number.", flag_values=fv)
    flags.DEFINE_string("data", None, "A token folder (<name>_<split>.bin or <split>.bin) or one .bin file; "
                        "default: the run config's data.", flag_values=fv)
    flags.DEFINE_enum("split", "val", ["val", "train"], "Split to evaluate (ignored when --data is a file).",
                      flag_values=fv)
    flags.DEFINE_integer("batches", None, "Random batches to draw, as the seed's estimate does "
                         "(default: the config's est_steps).", flag_values=fv)
    flags.DEFINE_bool("full", False, "Evaluate every non-overlapping window of the split, in order.", flag_values=fv)
    flags.DEFINE_integer("batch_size", None, "Sequences per batch (default: the config's batch_size).",
                         flag_values=fv)
    flags.DEFINE_integer("seed", None, "Seed of the random batches (default: the config's random_seed).",
                         flag_values=fv)
    flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.", flag_values=fv)


def data_path(config, data: str | None, split: str) -> str:
    """The token file to evaluate: the run's split, a split in the folder `data`, or the file `data`."""
    if data is None:
        if tasks.task_name(config.get("dataset", "")) is not None:
            raise data_lib.DataError(f"{config.dataset} is a synthetic task, drawn afresh: it has no token files "
                                     "to read; pass --data FILE.bin")
        train_path, val_path = data_lib.split_paths(config)
        return val_path if split == "val" else train_path
    if not os.path.isdir(data):
        return data  # a file: load_tokens checks it
    data_lib.finish_commit(data)  # a prepare killed mid-commit: move the rest of its files in first
    for name in (f"{config.dataset}_{split}.bin", f"{split}.bin"):
        if os.path.isfile(os.path.join(data, name)):
            return os.path.join(data, name)
    found = sorted(glob.glob(os.path.join(glob.escape(data), f"*_{split}.bin")))
    if len(found) == 1:
        return found[0]
    raise data_lib.DataError(f"{data}: no {split}.bin or <name>_{split}.bin here"
                             + (f" (several: {', '.join(map(os.path.basename, found))})" if found else ""))


def loss_sums(logits_BxTxV, y_BxT, weight_B, embedding_terms_BxT=None, answers_BxT=None) -> dict:
    """Sums over the positions of rows with weight 1 (with a task's `answers_BxT` mask, over its
    answers alone, plus `losses.exact_match_sums`): what `means` averages. The one place the
    evaluation numbers are computed (aed_jax.analyze adds these sums to its own pass)."""
    weight_BxT = jnp.broadcast_to(weight_B[:, None], y_BxT.shape)
    if answers_BxT is not None:
        weight_BxT = weight_BxT * answers_BxT
    ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, y_BxT) * weight_BxT
    wrong_BxT = (jnp.argmax(logits_BxTxV, axis=-1) != y_BxT).astype(jnp.float32)
    out = {"ce": jnp.sum(ce_BxT), "wrong": jnp.sum(wrong_BxT * weight_BxT), "tokens": jnp.sum(weight_BxT),
           "rows": jnp.sum(weight_B), "ce_T": jnp.sum(ce_BxT, axis=0), "tokens_T": jnp.sum(weight_BxT, axis=0)}
    if answers_BxT is not None:
        out.update(losses.exact_match_sums(logits_BxTxV, y_BxT, weight_BxT))
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
    if "embedding_T" in totals:
        out["embedding_loss_by_position"] = (totals["embedding_T"] / totals["rows"]).tolist()
    return out


def pad_batch(batch: dict, batch_size: int):
    """(x_BxT, y_BxT, weight_B[, answers_BxT]): a batch of b <= batch_size rows padded to batch_size,
    weight 0 on the padding; a task's batch also its answer mask ("weight" [b, T])."""
    b = batch["x"].shape[0]
    pad = ((0, batch_size - b), (0, 0))
    arrays = np.pad(batch["x"], pad), np.pad(batch["y"], pad), (np.arange(batch_size) < b).astype(np.float32)
    return arrays + (np.pad(batch["weight"], pad),) if "weight" in batch else arrays


@functools.lru_cache(maxsize=8)
def _eval_sums(cfg: model_lib.ModelConfig):
    """A jitted (params, x_BxT, y_BxT, weight_B[, answers_BxT]) -> `loss_sums`."""
    model = model_lib.make_model(cfg.for_inference())
    with_embedding_loss = has_embedding_loss(cfg)

    @jax.jit
    def sums(params, x_BxT, y_BxT, weight_B, answers_BxT=None):
        (logits_BxTxV, _), state = model.apply({"params": params}, x_BxT, with_embedding_loss=with_embedding_loss,
                                               mutable=["intermediates"])
        terms_BxT = state["intermediates"]["embedding_loss_BxT"][0] if with_embedding_loss else None
        return loss_sums(logits_BxTxV, y_BxT, weight_B, terms_BxT, answers_BxT)

    return sums


def eval_mesh(config) -> jax.sharding.Mesh:
    """The run config's mesh if it fits this machine's devices, else every device on `data` (also
    for a config saved before there were mesh keys)."""
    keys = {"mesh_data": config.get("mesh_data", -1), "mesh_fsdp": config.get("mesh_fsdp", 1)}
    try:
        return mesh_lib.make_mesh(ml_collections.ConfigDict(keys))
    except mesh_lib.MeshError:
        return mesh_lib.make_mesh(ml_collections.ConfigDict({"mesh_data": -1, "mesh_fsdp": 1}))


def place(params, mesh: jax.sharding.Mesh):
    """`params` (host arrays) on `mesh`, sharded by the training rules."""
    return jax.device_put(params, mesh_lib.state_shardings(mesh, params))


def padded_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """The smallest multiple of the mesh's device count that holds `batch_size` rows."""
    return -(-batch_size // mesh.size) * mesh.size


def step_memory(cfg: model_lib.ModelConfig, params, batch_size: int, mesh: jax.sharding.Mesh,
                task: bool = False) -> int:
    """Bytes one device allocates in the eval step for a batch of `batch_size` (its temporaries and
    outputs, by XLA's buffer assignment); `evaluate` then runs this very compile (with a `task`'s
    answer mask, the program that takes one)."""
    rows = mesh_lib.rows(mesh)
    x_BxT = jax.ShapeDtypeStruct((batch_size, cfg.context_size), jnp.int32, sharding=rows)
    weight_B = jax.ShapeDtypeStruct((batch_size,), jnp.float32, sharding=rows)
    answers = (jax.ShapeDtypeStruct((batch_size, cfg.context_size), jnp.float32, sharding=rows),) if task else ()
    mem = _eval_sums(cfg).lower(params, x_BxT, x_BxT, weight_B, *answers).compile().memory_analysis()
    return mem.temp_size_in_bytes + mem.output_size_in_bytes


def has_embedding_loss(cfg: model_lib.ModelConfig) -> bool:
    return cfg.model_type == "aed" and cfg.embedding_loss_type != "NONE"


def evaluate(model, params, batches, batch_size: int, mesh: jax.sharding.Mesh | None = None) -> dict:
    """{"ce_loss", "perplexity", "accuracy_loss", "tokens"} (+ "embedding_loss" for an AED with one)
    over every position of `batches` ({"x", "y"} int32 [b <= batch_size, T]), and "ce_by_position"
    (T floats: the mean CE at each window position, where in the window a model gains or loses; and
    "embedding_loss_by_position" with an embedding loss); short batches are padded. With a `mesh`
    (batch_size a multiple of its devices), each batch's rows are split over it."""
    sums_fn, totals = _eval_sums(model.cfg), {}
    for batch in batches:
        arrays = pad_batch(batch, batch_size)
        if mesh is not None:
            arrays = jax.device_put(arrays, mesh_lib.rows(mesh))
        accumulate(totals, sums_fn(params, *arrays))
    return means(totals)


def format_table(results: dict) -> str:
    lines = []
    for key, value in results.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<16}{text}")
    return "\n".join(lines)


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    if not fv.workdir:
        cli.fail("--workdir is required")
    if fv.full and fv.batches is not None:
        cli.fail("--full and --batches exclude each other: evaluate every window, or N random batches")
    for name in ("batches", "batch_size"):
        if fv[name].value is not None and fv[name].value < 1:
            cli.fail(f"--{name} must be at least 1, got {fv[name].value}")
    if fv.seed is not None and fv.seed < 0:
        cli.fail(f"--seed must be >= 0, got {fv.seed}")
    params, config, step = rundir.restore_params(fv.workdir, fv.checkpoint)
    cfg = model_lib.ModelConfig.from_config(config)
    task = tasks.task_name(config.get("dataset", ""))
    if task is not None and (fv.full or fv.data):
        cli.fail(f"--{'full' if fv.full else 'data'}: {config.dataset} draws its sequences afresh, it has no "
                 "split to read; evaluate it with --batches N [--seed S]")
    context = cfg.context_size
    if task is None:
        path = data_path(config, fv.data, fv.split)
        tokens = data_lib.load_tokens(path, cfg.alphabet_size, context + (1 if fv.full else 2))
    else:
        path = config.dataset
    batch_size = fv.batch_size or config.batch_size
    mesh = eval_mesh(config)
    params, padded = place(params, mesh), padded_size(batch_size, mesh)
    need, (free, what) = step_memory(cfg, params, padded, mesh, task is not None), cli.memory_free(jax.local_devices()[0])
    if need > free:  # refused before any batch runs, with the batch that fits (need grows about linearly)
        cli.fail(f"a batch of {batch_size} sequences needs {cli.gib(need)} in the eval step (XLA's buffer "
                 f"assignment), more than the {cli.gib(free)} of {what}; pass --batch_size "
                 f"{max(1, batch_size * free // need)} or less")
    seed, n_batches = config.random_seed if fv.seed is None else fv.seed, fv.batches or config.est_steps
    if fv.full:
        batches = data_lib.eval_windows(tokens, context, batch_size)
    elif task is None:
        batches = data_lib.random_batches(tokens, context, batch_size, n_batches, seed)
    else:
        batches = data_lib.task_batches(config, batch_size, n_batches, seed)
    results = evaluate(model_lib.make_model(cfg), params, batches, padded, mesh)
    where = {"workdir": fv.workdir, "checkpoint": fv.checkpoint, "step": step, "data": path,
             "mode": "full" if fv.full else f"{fv.batches or config.est_steps} random batches",
             "mesh": f"{mesh.shape['data']}x{mesh.shape['fsdp']}"}
    if fv.json:
        print(json.dumps({**results, **where}))
    else:
        print(f"{cfg.model_type} model, step {step} of {fv.workdir} ({fv.checkpoint}); {path}, {where['mode']}")
        print(format_table({k: v for k, v in results.items() if not isinstance(v, list)}))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
