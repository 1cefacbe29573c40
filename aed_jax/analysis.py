"""What a run's parts are worth and what its embeddings and attention look like, for the seed's open
questions (does the embedding loss make the encoder track the running mean of its input, does
position subtraction matter, what does the decoder take from the encoder, where in the window a
model wins), several runs side by side: what `python -m aed_jax.analyze` reports.

Every run is measured on the same sample of windows: `--windows N` starts drawn at random from the
val split (or `--data`) with `--seed` (data.sample_offsets), so N is a sample size and two runs on
the same file with the same context size are compared window by window (others share no window:
the report says so, `unpaired`). A task run (dataset "task:<name>") has no file: its windows are
the first N sequences its task draws from `--seed` (`task_sequences`), the same for every run of that
task and settings, and it is scored where the task scores, on the answers (the `weight` mask of
`tasks.make_batch`): its CE, token accuracy and embedding loss, by position too, the ablations'
changes and the differences are over the answers, a position that never holds one has no value
(None, NaN), and two task runs are paired only when they measured the very same sequences.

Then `DIR/report.md`, one PNG per figure (runs on shared axes, one panel per quantity),
`DIR/metrics.json` with every number and `DIR/windows.npz` with each run's cross-entropy by window
and position:

- validation cross-entropy by position t = 0..T-1 (`metrics.loss_sums`, evaluate's numbers), and
  each run's difference from the first run by position, with a bootstrap band over the windows
  (stats.bootstrap_band) and a t-interval of the mean difference;
- eval-time ablations (aed_jax.ablations): the change in cross-entropy, and AED the change in
  embedding loss, when one part is taken out (input positions, position subtraction, the encoder
  output, the cross-attention, the embedding-loss LayerNorms' scales), each a mean over the windows
  of the paired per-window change with its 95% t-interval;
- the embedding-loss LayerNorms: their scales and biases, the cosine of each encoder layer's output
  with the running mean before them (raw) and after them (as the loss compares them: standardised,
  for the parameter-free NORM_MSE and CENTERED_COSINE), each feature's standard deviation on both
  sides (`feature_sums`: min / median / max over the features, raw and as compared), and a
  sentence when the loss is met mostly by shrinking the scales (`shrinking_factor`, the run's own
  loss with the scales reset to 1);
- the positional table's cosine-similarity matrix (ROPE: the table of "next position" vectors, if
  any), its row norms next to the token embeddings' norms weighted by token frequency in the
  training split;
- the overlap of the positional and token embeddings: principal angles between the top-k principal
  subspaces of both (centred) tables, and the fraction of the positional variance inside the token
  table's top-k subspace, for several k (a random k-dimensional subspace holds k/D of it);
- AED: the embedding-loss terms by position; every model: the cosine between each layer's output
  (AED: encoder blocks) and the running mean of the input embeddings (tok_emb + pos_emb, ROPE:
  tok_emb), by layer and position (layer 0 is the input embeddings themselves);
- the attention entropy (nats) of every layer and head, self- and cross-attention, and the mean
  attended distance (query position minus key position, weighted by the attention).

The attention probabilities are recomputed from the queries and keys the model produced (flax's
`capture_intermediates`), so the model runs unchanged. Each number is computed by one function
below; tests/test_analyze.py checks each against numpy on a tiny model.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from aed_jax import ablations as ablations_lib
from aed_jax import config as config_lib
from aed_jax import data as data_lib
from aed_jax import losses
from aed_jax import metrics
from aed_jax import model as model_lib
from aed_jax import plotting
from aed_jax import rundir
from aed_jax import stats
from aed_jax import tasks

plt = plotting.pyplot()
import matplotlib.ticker  # noqa: E402  (once plotting has set matplotlib up)

KS = (1, 2, 4, 8, 16, 32, 64)  # subspace dimensions of the overlap, those below D and the table's rows
_ATTENTION_DENSE = ("batch_attn_weights", "q_weights", "k_v_weights")
ATTENTION_KINDS = ("self", "encoder self", "decoder self", "decoder cross")  # baseline; AED
FEATURE_SIDES = ("encoder_out", "encoder_out_compared", "running_mean", "running_mean_compared")  # `feature_sums`
SHRINKING = 10.0  # shrinking_factor at or above this: the report says the scales, not alignment, meet the loss
RESAMPLES = 1000  # bootstrap resamples of the windows
TASK_DRAW = 1000  # a task run's sequences are drawn this many at a time: the first N are the same for every N


# Embedding tables (host numpy, float64).

def cosine_matrix(table_RxD: np.ndarray) -> np.ndarray:
    """cos(row i, row j) for every pair of rows (norms clamped at 1e-8)."""
    unit = table_RxD / np.maximum(np.linalg.norm(table_RxD, axis=-1, keepdims=True), 1e-8)
    return unit @ unit.T


def weighted_norm(table_VxD: np.ndarray, counts_V: np.ndarray) -> float:
    """The mean token-embedding norm over the tokens of a split: each row's norm weighted by its count."""
    return float(np.sum(np.linalg.norm(table_VxD, axis=-1) * counts_V) / np.sum(counts_V))


def principal_basis(table_NxD: np.ndarray, k: int) -> np.ndarray:
    """D x k orthonormal basis of the top-k principal directions of the centred rows."""
    centred = table_NxD - table_NxD.mean(axis=0)
    return np.linalg.svd(centred, full_matrices=False)[2][:k].T


def overlap(token_VxD: np.ndarray, positional_RxD: np.ndarray, k: int) -> dict:
    """The principal angles (degrees, smallest first) between the top-k principal subspaces of the
    centred token and positional tables, and the fraction of the centred positional table's variance
    that lies in the token table's top-k subspace."""
    token_DxK, positional_DxK = principal_basis(token_VxD, k), principal_basis(positional_RxD, k)
    cosines = np.clip(np.linalg.svd(token_DxK.T @ positional_DxK, compute_uv=False), 0.0, 1.0)
    centred = positional_RxD - positional_RxD.mean(axis=0)
    inside = np.sum((centred @ token_DxK) ** 2) / np.sum(centred ** 2)
    return {"principal_angles_deg": np.degrees(np.arccos(cosines)).tolist(),
            "positional_variance_in_token_subspace": float(inside),
            "random_subspace_expectation": k / token_VxD.shape[1]}


# Activations (jnp, inside the jitted pass): sums over the rows of weight 1, averaged by `summarise`.

def entropy_sums(probs_BxNxTxS, weight_B):
    """[N]: the attention entropy (nats) of each head, summed over query positions and weighted rows."""
    plogp = jnp.where(probs_BxNxTxS > 0, probs_BxNxTxS * jnp.log(jnp.where(probs_BxNxTxS > 0, probs_BxNxTxS, 1.0)), 0.0)
    return jnp.einsum("bnt,b->n", -plogp.sum(-1), weight_B)


def distance_sums(probs_BxNxTxS, weight_B):
    """[N]: the attended distance sum_s p(s | t) (t - s) of each head, summed over positions t and weighted rows."""
    t, s = probs_BxNxTxS.shape[-2:]
    distance_TxS = (jnp.arange(t)[:, None] - jnp.arange(s)[None, :]).astype(jnp.float32)
    return jnp.einsum("bnts,ts,b->n", probs_BxNxTxS, distance_TxS, weight_B)


def cosine_sums(a_BxTxD, b_BxTxD, weight_B):
    """[T]: cos(a at t, b at t) (norms clamped at 1e-8), summed over weighted rows."""
    a_BxTxD, b_BxTxD = a_BxTxD.astype(jnp.float32), b_BxTxD.astype(jnp.float32)
    norms_BxT = (jnp.maximum(jnp.linalg.norm(a_BxTxD, axis=-1), 1e-8)
                 * jnp.maximum(jnp.linalg.norm(b_BxTxD, axis=-1), 1e-8))
    return jnp.einsum("bt,b->t", jnp.sum(a_BxTxD * b_BxTxD, axis=-1) / norms_BxT, weight_B)


def feature_sums(side: str, v_BxTxD, weight_B) -> dict:
    """{"features/<side>/sum_D", "features/<side>/square_D"}: each feature's sum and sum of squares over the
    positions of weighted rows, from which `feature_spread` takes each feature's standard deviation."""
    v_BxTxD = v_BxTxD.astype(jnp.float32)
    return {f"features/{side}/sum_D": jnp.einsum("btd,b->d", v_BxTxD, weight_B),
            f"features/{side}/square_D": jnp.einsum("btd,b->d", jnp.square(v_BxTxD), weight_B)}


def feature_spread(sum_D: np.ndarray, square_D: np.ndarray, count: float) -> dict:
    """{"min", "median", "max"} over the features of each one's standard deviation over `count` values
    (its sum and sum of squares): a collapsed feature is a min near 0."""
    mean_D = sum_D / count
    std_D = np.sqrt(np.maximum(square_D / count - mean_D ** 2, 0.0))
    return {"min": float(std_D.min()), "median": float(np.median(std_D)), "max": float(std_D.max())}


def alignment_sums(layer_BxTxD, emb_BxTxD, weight_B):
    """[T]: cos(layer output at t, mean of the input embeddings 0..t), summed over weighted rows."""
    return cosine_sums(layer_BxTxD, model_lib.running_mean(emb_BxTxD), weight_B)


def input_embeddings(cfg: model_lib.ModelConfig, params, x_BxT):
    """What the first block sees in eval mode: tok_emb(x) + pos_emb(0..T-1) (ROPE: tok_emb(x))."""
    if cfg.position_embedding_type == "ROPE":
        return params["token_embedding"]["embedding"][x_BxT]
    positions_T = params["positional_embedding"]["embedding"][:x_BxT.shape[1]]
    return params["token_embedding"]["embedding"][x_BxT] + positions_T[None]


def attentions(cfg: model_lib.ModelConfig, captured: dict) -> dict:
    """{"<stack> <kind>": [(q_BxTxNxH, k_BxSxNxH) per layer]} from the captured Dense outputs (ROPE:
    turned by their positions, as the model turns them)."""
    def heads(a, n):
        a = a.reshape(a.shape[:2] + (n, a.shape[-1] // n))
        return model_lib.rope(a, jnp.arange(a.shape[1])) if cfg.position_embedding_type == "ROPE" else a

    def get(*path):
        node = captured
        for key in path:
            node = node[key]
        return node["__call__"][0]

    found = {}
    if cfg.model_type == "baseline":
        stacks = [("self", "transformer_blocks", cfg.n_layer, "multi_attn_head")]
    else:
        stacks = [("encoder self", "encoder_transformer_blocks", cfg.encoder_layers, "multi_attn_head"),
                  ("decoder self", "decoder_transformer_blocks", cfg.decoder_layers, "decoder_multi_attn_head")]
    for name, stack, depth, module in stacks:
        layers = []
        for i in range(depth):
            q, k, _ = jnp.split(get(f"{stack}_{i}", module, "batch_attn_weights"), 3, axis=-1)
            layers.append((heads(q, cfg.n_head), heads(k, cfg.n_head)))
        found[name] = layers
    if cfg.model_type == "aed":
        layers = []
        for i in range(cfg.decoder_layers):
            block = ("decoder_transformer_blocks_" + str(i), "cross_multi_attn_head")
            k, _ = jnp.split(get(*block, "k_v_weights"), 2, axis=-1)
            layers.append((heads(get(*block, "q_weights"), cfg.cross_heads), heads(k, cfg.cross_heads)))
        found["decoder cross"] = layers
    return found


def positional_table(params) -> tuple[str | None, np.ndarray | None]:
    """(name, rows) of the model's positional parameters: the learned table, ROPE's table of "next
    position" vectors, or (None, None) for a ROPE model without one."""
    for name in model_lib.POSITIONAL_TABLES:
        if name in params:
            return name, np.asarray(params[name]["embedding"], np.float64)
    return None, None


def _capture(module: nn.Module, method_name: str) -> bool:
    """What the pass keeps: the attentions' projections and every (encoder) block's output."""
    return method_name == "__call__" and (isinstance(module, model_lib.Block) or (
        isinstance(module, nn.Dense) and module.name in _ATTENTION_DENSE))


def after_embedding_lns(cfg: model_lib.ModelConfig, params, layer_BxTxD):
    """A layer's output as the embedding loss compares it: standardised over its features for a
    parameter-free loss (NORM_MSE, CENTERED_COSINE: no LayerNorm in their path), else through
    `encoder_out_ln` when the run has one."""
    if cfg.embedding_loss_type in config_lib.PARAMETER_FREE_LOSSES:
        return losses.standardise(layer_BxTxD.astype(jnp.float32))
    if "encoder_out_ln" not in params:
        return layer_BxTxD.astype(jnp.float32)
    ln = nn.LayerNorm(epsilon=1e-5, use_bias=True, dtype=jnp.float32)
    return ln.apply({"params": params["encoder_out_ln"]}, layer_BxTxD.astype(jnp.float32))


def row_means(values_BxT, answers_BxT=None):
    """[B]: each row's mean over its positions, or with a task's `answers_BxT` mask over its answers alone."""
    if answers_BxT is None:
        return values_BxT.mean(-1)
    return jnp.sum(values_BxT * answers_BxT, -1) / jnp.maximum(jnp.sum(answers_BxT, -1), 1.0)


@functools.lru_cache(maxsize=8)
def _pass(cfg: model_lib.ModelConfig, with_ablations: bool, problems: int = 1):
    """A jitted (params, ablated {name: params}, x_BxT, y_BxT, weight_B[, answers_BxT]) -> the evaluator's
    sums, the activation sums, each row's CE by position, and each ablation's CE (and embedding loss) by
    row. With a task's answer mask (its rows packing `problems` each), the CE, the embedding loss and
    each row's token accuracy are over the answers alone, and a row's CE elsewhere is NaN; the
    activations stay over every position (the representation, not the scoring)."""
    model = model_lib.make_model(cfg)
    with_embedding_loss = metrics.has_embedding_loss(cfg)
    parameter_free = cfg.model_type == "aed" and cfg.embedding_loss_type in config_lib.PARAMETER_FREE_LOSSES
    stack, depth = (("encoder_transformer_blocks", cfg.encoder_layers) if cfg.model_type == "aed"
                    else ("transformer_blocks", cfg.n_layer))
    ablated = {name: ablations_lib.ablated_config(name, cfg)
               for name in (ablations_lib.applicable(cfg) if with_ablations else ())}

    def by_row(logits_BxTxV, y_BxT, answers_BxT, state, name="intact"):
        out = {"ce_B": row_means(optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, y_BxT), answers_BxT)}
        if answers_BxT is not None:
            right_BxT = (jnp.argmax(logits_BxTxV, -1) == y_BxT).astype(jnp.float32)
            out["accuracy_B"] = row_means(right_BxT, answers_BxT)
        if with_embedding_loss and name not in ablations_lib.DECODER_SIDE:
            out["embedding_loss_B"] = row_means(state["intermediates"]["embedding_loss_BxT"][0], answers_BxT)
        return out

    @jax.jit
    def sums(params, ablated_params, x_BxT, y_BxT, weight_B, answers_BxT=None):
        (logits_BxTxV, _), state = model.apply({"params": params}, x_BxT, with_embedding_loss=with_embedding_loss,
                                               capture_intermediates=_capture, mutable=["intermediates"])
        captured = state["intermediates"]
        terms_BxT = captured["embedding_loss_BxT"][0] if with_embedding_loss else None
        out = metrics.loss_sums(logits_BxTxV, y_BxT, weight_B, terms_BxT, answers_BxT, problems)
        out["rows/ce_BxT"] = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, y_BxT)
        if answers_BxT is not None:
            out["rows/ce_BxT"] = jnp.where(answers_BxT > 0, out["rows/ce_BxT"], jnp.nan)
        out.update({f"rows/intact/{k}": v for k, v in by_row(logits_BxTxV, y_BxT, answers_BxT, state).items()})
        emb_BxTxD = input_embeddings(cfg, params, x_BxT)
        layers = [emb_BxTxD] + [captured[f"{stack}_{i}"]["__call__"][0] for i in range(depth)]
        out["alignment_LxT"] = jnp.stack([alignment_sums(layer, emb_BxTxD, weight_B) for layer in layers])
        if with_embedding_loss:  # the same layers as the loss compares them: after the LayerNorms
            target_BxTxD = captured["embedding_loss_target_BxTxD"][0]
            after = [after_embedding_lns(cfg, params, layer) for layer in layers]
            out["alignment_after_ln_LxT"] = jnp.stack([cosine_sums(a, target_BxTxD, weight_B) for a in after])
            if cfg.embedding_aggregation == "CUM_MEAN":  # a bias b shifts a running mean by b: take both out
                # (a parameter-free loss has no bias in its path: nothing to take out)
                bias_enc, bias_emb = (params[n]["bias"][None, None] if n in params and not parameter_free else 0.0
                                      for n in model_lib.EMBEDDING_LNS)
                out["alignment_unbiased_LxT"] = jnp.stack([
                    cosine_sums(a - bias_enc, target_BxTxD - bias_emb, weight_B) for a in after])
            # Each feature's spread over every position of every row: both sides raw and as the loss compares
            # them, so that a collapsed feature (or a LayerNorm scale shrunk to nothing) shows.
            for side, v_BxTxD in zip(FEATURE_SIDES, (layers[-1], after[-1], model_lib.running_mean(emb_BxTxD),
                                                     target_BxTxD)):
                out.update(feature_sums(side, v_BxTxD, weight_B))
        for name, pairs in attentions(cfg, captured).items():
            probs = [model_lib.causal_probs(q, k) for q, k in pairs]
            out[f"entropy/{name}"] = jnp.stack([entropy_sums(p, weight_B) for p in probs])
            out[f"distance/{name}"] = jnp.stack([distance_sums(p, weight_B) for p in probs])
        positions_TxD = (params["positional_embedding"]["embedding"][:x_BxT.shape[1]]
                         if "positional_embedding" in params else None)
        for name, ablated_cfg in ablated.items():
            perturbations = ablations_lib.perturbations(name, cfg, emb_BxTxD, layers[-1], positions_TxD)
            (logits, _), state = model_lib.make_model(ablated_cfg).apply(
                {"params": ablated_params[name], "perturbations": perturbations}, x_BxT,
                with_embedding_loss=with_embedding_loss, mutable=["intermediates"])
            out.update({f"rows/{name}/{k}": v for k, v in by_row(logits, y_BxT, answers_BxT, state, name).items()})
        return out

    return sums


def summarise(totals: dict) -> dict:
    """Means of the pass's accumulated sums: the evaluator's, then per layer, head and position."""
    out = metrics.means(totals)
    rows, t = float(totals["rows"]), len(totals["ce_T"])
    for key, name in (("alignment_LxT", "alignment"), ("alignment_after_ln_LxT", "alignment_after_ln"),
                      ("alignment_unbiased_LxT", "alignment_unbiased")):
        if key in totals:
            out[f"{name}_by_layer_position"] = (totals[key] / rows).tolist()
            out[f"{name}_by_layer"] = (totals[key].sum(-1) / (rows * t)).tolist()
    sides = sorted({key.split("/")[1] for key in totals if key.startswith("features/")})
    if sides:
        out["feature_std"] = {side: feature_spread(totals[f"features/{side}/sum_D"],
                                                   totals[f"features/{side}/square_D"], rows * t) for side in sides}
    out["attention"] = {key.split("/")[1]: {"entropy": (totals[key] / (rows * t)).tolist(),
                                            "distance": (totals["distance/" + key.split("/")[1]] / (rows * t)).tolist()}
                        for key in sorted(totals) if key.startswith("entropy/")}
    out["uniform_attention"] = {"entropy": float(np.mean(np.log(np.arange(1, t + 1)))),
                                "distance": float(np.mean(np.arange(t) / 2))}
    return out


def _interval(values_N: np.ndarray) -> dict:
    """{"mean", "low", "high"}: a mean over windows with its 95% t-interval (stats.t_interval)."""
    i = stats.t_interval([float(v) for v in values_N])
    return {"mean": i.mean, "low": i.low, "high": i.high}


def ablation_effects(rows: dict) -> dict:
    """{ablation: {"ce": interval, "embedding_loss": interval, "accuracy": interval}}: the paired
    per-window change (ablated minus intact) of each quantity the rows have, `rows` holding
    {"intact"|ablation: {"ce_B", "embedding_loss_B", "accuracy_B" (a task's)}} over the same windows."""
    intact = rows["intact"]
    return {name: {q: _interval(np.asarray(by_row[f"{q}_B"]) - np.asarray(intact[f"{q}_B"]))
                   for q in ("ce", "embedding_loss", "accuracy") if f"{q}_B" in by_row}
            for name, by_row in rows.items() if name != "intact"}


def layer_norm_stats(params) -> dict:
    """{LayerNorm: {"scale_mean", "scale_abs_mean", "scale_abs_max", "bias_abs_mean"}} of the
    embedding-loss LayerNorms the run has."""
    out = {}
    for name in model_lib.EMBEDDING_LNS:
        if name in params:
            scale, bias = (np.asarray(params[name][k], np.float64) for k in ("scale", "bias"))
            out[name] = {"scale_mean": float(scale.mean()), "scale_abs_mean": float(np.abs(scale).mean()),
                         "scale_abs_max": float(np.abs(scale).max()), "bias_abs_mean": float(np.abs(bias).mean())}
    return out


def shrinking_factor(run: dict) -> float | None:
    """How much larger the embedding loss is with the embedding-loss LayerNorms' scales reset to 1 than
    with the learned ones (None without that ablation). The loss compares the two LayerNormed sides;
    scaling both by gamma scales an MSE by about gamma^2 whatever their directions, so a factor of
    SHRINKING or more says that at least 1 - 1/SHRINKING of the disagreement the normalised sides
    still have is hidden by small scales rather than removed by alignment."""
    effect = run.get("ablations", {}).get("unit_ln_scales", {}).get("embedding_loss")
    if effect is None or not run.get("embedding_loss"):
        return None
    return (run["embedding_loss"] + effect["mean"]) / run["embedding_loss"]


def table_metrics(params, counts_V: np.ndarray) -> dict:
    """Norms, cosines and overlaps of the embedding tables (token frequencies `counts_V`)."""
    token_VxD = np.asarray(params["token_embedding"]["embedding"], np.float64)
    out = {"token_norm_weighted": weighted_norm(token_VxD, counts_V),
           "token_norm_mean": float(np.mean(np.linalg.norm(token_VxD, axis=-1)))}
    name, positional_RxD = positional_table(params)
    out["positional_table"] = name
    if positional_RxD is not None:
        out["positional_norms"] = np.linalg.norm(positional_RxD, axis=-1).tolist()
        out["positional_cosine"] = cosine_matrix(positional_RxD).tolist()
        out["overlap"] = {str(k): overlap(token_VxD, positional_RxD, k) for k in KS
                          if k < min(token_VxD.shape[1], positional_RxD.shape[0])}
    return out


def token_counts(config, data: str | None, evaluated_path: str, evaluated: np.ndarray, alphabet_size: int):
    """(count of every token id, the file counted): the run's training split (or the train split of
    the --data folder), else the evaluated tokens when no training split is found."""
    try:
        path = data_lib.split_file(config, data if data and os.path.isdir(data) else None, "train")
        tokens = data_lib.load_tokens(path, alphabet_size, 1)
    except data_lib.DataError:
        path, tokens = evaluated_path, evaluated
    return np.bincount(np.asarray(tokens), minlength=alphabet_size), path


def task_sequences(config, count: int, seed: int, batch_size: int):
    """A task run's `count` sequences {"x", "y", "weight"} in batches of batch_size (the last may be
    smaller): the first `count` of the stream `tasks.make_batch` draws from np.random.default_rng(seed),
    TASK_DRAW at a time. So they depend on the task, its settings and `seed` alone (never on a run's
    batch size), every run of that task is measured on the same sequences, and a larger `count` adds
    sequences after the same first ones."""
    draws = data_lib.task_batches(config, TASK_DRAW, -(-count // TASK_DRAW), seed)
    pending, left = None, count
    for drawn in draws:
        drawn = {k: v[:left] for k, v in drawn.items()}
        left -= len(drawn["x"])
        pending = drawn if pending is None else {k: np.concatenate([pending[k], v]) for k, v in drawn.items()}
        while len(pending["x"]) >= batch_size or (left == 0 and len(pending["x"])):
            yield {k: v[:batch_size] for k, v in pending.items()}
            pending = {k: v[batch_size:] for k, v in pending.items()}


def analyze_run(workdir: str, checkpoint: str = "latest", data: str | None = None, windows: int = 1000,
                seed: int = 0, batch_size: int | None = None, with_ablations: bool = True, label: str = "") -> dict:
    """Every number of one run's checkpoint on `windows` windows drawn with `seed` (a task run:
    `task_sequences`, scored on their answers); its rows' CE by window and position under "_ce_WxT"
    (not JSON: windows.npz; NaN off a task's answers). CheckpointError / DataError (one line) for bad
    input, --data for a task run among them."""
    params, config, step = rundir.restore_params(workdir, checkpoint)
    # float32 whatever the run trained in: these are measurements, compared with numpy's.
    cfg = model_lib.ModelConfig.from_config(config, dtype=jnp.float32, scan_layers=False).for_inference()
    params = model_lib.unstack_layers(params)
    context = cfg.context_size
    batch_size = batch_size or config.batch_size
    task = tasks.task_name(config.get("dataset", ""))
    if task is None:
        path = data_lib.split_file(config, data, "val")
        tokens = data_lib.load_tokens(path, cfg.alphabet_size, context + 2)
        offsets = data_lib.sample_offsets(tokens, context, windows, seed)
        counts_V, counted = token_counts(config, data, path, tokens, cfg.alphabet_size)
        batches = data_lib.windows_at(tokens, offsets, context, batch_size)
    else:
        if data is not None:
            raise data_lib.DataError(f"--data {data}: {workdir} is a run of {config.dataset}: a task run draws "
                                     "its sequences from its task; --data is for corpus runs")
        # No file to count tokens in: the sequences drawn are counted as they are measured.
        path, offsets, counts_V = config.dataset, np.arange(windows), np.zeros(cfg.alphabet_size, np.int64)
        counted = f"the {windows:,} sequences of {config.dataset} drawn with seed {seed}"
        batches, fingerprint = task_sequences(config, windows, seed, batch_size), hashlib.sha256()
    sums_fn, totals, rows = _pass(cfg, with_ablations, tasks.problems_per_sequence(config)), {}, {}
    device_params = jax.device_put(params)
    ablated = {name: jax.device_put(ablations_lib.ablated_params(name, cfg, params))
               for name in (ablations_lib.applicable(cfg) if with_ablations else ())}
    for batch in tqdm.tqdm(batches, total=-(-windows // batch_size), unit="batch",
                           desc=f"analyze {label or workdir}", disable=None):
        if task is not None:
            counts_V += np.bincount(batch["x"].ravel(), minlength=cfg.alphabet_size)
            for name in ("x", "y", "weight"):
                fingerprint.update(np.ascontiguousarray(batch[name]).tobytes())
        arrays = metrics.pad_batch(batch, batch_size)  # x, y, weight_B[, a task's answers_BxT]
        out = jax.device_get(sums_fn(device_params, ablated, *arrays))
        kept = arrays[2] > 0
        for key in [k for k in out if k.startswith("rows/")]:
            rows.setdefault(key, []).append(np.asarray(out.pop(key), np.float64)[kept])
        metrics.accumulate(totals, out)
    rows = {key: np.concatenate(value) for key, value in rows.items()}
    by_row: dict = {}
    for key, value in rows.items():
        if key != "rows/ce_BxT":
            _, name, quantity = key.split("/")
            by_row.setdefault(name, {})[quantity] = value
    run = {"workdir": workdir, "checkpoint": checkpoint, "step": step, "data": path, "frequencies_from": counted,
           "windows": windows, "seed": seed, "model_type": cfg.model_type,
           "position_embedding_type": cfg.position_embedding_type, "context_size": context, "n_embed": cfg.n_embed,
           "sub_pos_embed_to_decoder": cfg.sub_pos_embed_to_decoder,
           "embedding_loss_type": cfg.embedding_loss_type if cfg.model_type == "aed" else None,
           "embedding_var_coeff": cfg.embedding_var_coeff if cfg.model_type == "aed" else None,
           "pos_rows": cfg.pos_rows, **summarise(totals), **table_metrics(params, counts_V),
           "layer_norms": layer_norm_stats(params), "ablations": ablation_effects(by_row),
           "_ce_WxT": rows["rows/ce_BxT"], "_offsets": offsets}
    if task is not None:  # what pairs two task runs: the very sequences measured (`unpaired`)
        run["task"] = {"name": task, "settings": {"alphabet_size": cfg.alphabet_size, **config.task.to_dict()},
                       "chance_token_accuracy": tasks.chance_token_accuracy(config),
                       "problems_per_sequence": tasks.problems_per_sequence(config)}
        run["_accuracy_W"], run["_sequences_sha256"] = by_row["intact"]["accuracy_B"], fingerprint.hexdigest()
    run["shrinking_factor"] = shrinking_factor(run)
    return run


def _source(m: dict) -> str:
    return f"the task `{m['data']}`" if "task" in m else f"`{m['data']}`"


def unpaired(reference: dict, m: dict) -> str | None:
    """Why run `m` was not measured on `reference`'s windows, as a clause (None when it was): a
    difference is taken window by window, so runs of other context sizes, data files, tasks or task
    settings have none. Two task runs are paired when they measured the very same sequences."""
    if m["context_size"] != reference["context_size"]:
        return f"its windows are {m['context_size']} tokens long, the first run's {reference['context_size']}"
    if m["data"] != reference["data"]:
        return f"its windows come from {_source(m)}, the first run's from {_source(reference)}"
    if "task" in m:  # the same task: its settings and the seed decide the sequences
        if m["_sequences_sha256"] == reference["_sequences_sha256"]:
            return None
        mine, first = m["task"]["settings"], reference["task"]["settings"]
        changed = [f"{'' if k == 'alphabet_size' else 'task.'}{k} {mine.get(k)}, the first run's {first.get(k)}"
                   for k in sorted(mine.keys() | first.keys()) if mine.get(k) != first.get(k)]
        return f"its task settings differ ({'; '.join(changed)})" if changed else "its sequences differ"
    if not np.array_equal(m["_offsets"], reference["_offsets"]):
        return "its windows start elsewhere in the file"
    return None


def _masked_mean(values: np.ndarray, axis: int) -> np.ndarray:
    """The mean of the values that are not NaN along `axis`; NaN where there are none."""
    present = ~np.isnan(values)
    count = present.sum(axis)
    return np.where(count > 0, np.where(present, values, 0.0).sum(axis) / np.maximum(count, 1), np.nan)


def _json_floats(values: np.ndarray) -> list:
    """Floats for metrics.json, None for NaN (a position no answer is at)."""
    return [None if np.isnan(v) else float(v) for v in values]


def differences(runs: dict, seed: int = 0) -> dict:
    """{label: {"against", "by_position", "low", "high", "mean"}} for every run after the first that
    was measured on the first run's windows (`unpaired` is None): its CE minus the first run's, by
    position with a bootstrap band over the windows, and overall with a t-interval. Task runs: over
    their answers (None at a position no sequence has one), and "accuracy", the token accuracy's
    difference with a t-interval over the sequences."""
    (first, reference), out = next(iter(runs.items())), {}
    for label, m in list(runs.items())[1:]:
        if unpaired(reference, m):
            continue
        difference_WxT = m["_ce_WxT"] - reference["_ce_WxT"]
        if "task" in reference:  # NaN off the answers, at the same places in both runs' sequences
            low_T, high_T = stats.bootstrap_band(difference_WxT, seed, RESAMPLES)
            out[label] = {"against": first, "by_position": _json_floats(_masked_mean(difference_WxT, 0)),
                          "low": _json_floats(low_T), "high": _json_floats(high_T),
                          "mean": _interval(_masked_mean(difference_WxT, 1)),
                          "accuracy": _interval(m["_accuracy_W"] - reference["_accuracy_W"])}
            continue
        low_T, high_T = stats.bootstrap_band(difference_WxT, seed, RESAMPLES)
        out[label] = {"against": first, "by_position": difference_WxT.mean(0).tolist(), "low": low_T.tolist(),
                      "high": high_T.tolist(), "mean": _interval(difference_WxT.mean(1))}
    return out


# Figures: one Figure each, every run on the same axes (one panel per quantity; the positional heatmaps,
# which cannot share axes, one panel per run on one colour scale), a legend entry per run.

def _colors(runs: dict) -> dict:
    return {label: f"C{i % 10}" for i, label in enumerate(runs)}


def _finish(fig, axes, title: str | None = None):
    for ax in axes:
        entries = len(ax.get_legend_handles_labels()[0])
        if entries > 5:  # many runs: below the panel, where it hides no line
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
        elif entries:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_ce_by_position(runs: dict):
    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, m), color in zip(runs.items(), _colors(runs).values()):
        # A task run's positions without an answer are None: gaps, and dots for answers between them.
        ax.plot(np.asarray(m["ce_by_position"], np.float64), color=color, marker="." if "task" in m else None,
                label=f"{label} (mean {m['ce_loss']:.3f})")
    ax.set(title="Validation cross-entropy by position in the window", xlabel="position t",
           ylabel="mean cross-entropy (nats)")
    return _finish(fig, [ax])


def plot_ce_difference(runs: dict, diffs: dict):
    if not diffs:
        return None
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, d in diffs.items():
        low, high = np.asarray(d["low"], np.float64), np.asarray(d["high"], np.float64)  # None: no answer there
        if "accuracy" in d:  # task runs: answers at scattered positions, so the band as a bar at each
            ax.vlines(range(len(low)), low, high, color=colors[label], alpha=0.35, linewidth=4)
        else:
            ax.fill_between(range(len(low)), low, high, color=colors[label], alpha=0.25, linewidth=0)
        ax.plot(np.asarray(d["by_position"], np.float64), color=colors[label], marker="." if "accuracy" in d else None,
                label=f"{label} - {d['against']} (mean {d['mean']['mean']:+.3f}, "
                      f"95% CI {d['mean']['low']:+.3f} to {d['mean']['high']:+.3f})")
    ax.axhline(0.0, color="gray", linewidth=1)
    ax.set(title="Cross-entropy difference by position (band: 95% bootstrap over windows)", xlabel="position t",
           ylabel="difference in cross-entropy (nats)")
    return _finish(fig, [ax])


def _bars(ax, runs: dict, values: dict, names: list[str]):
    """Grouped horizontal bars: a group per name, a bar per run, with 95% intervals as error bars.
    `values[label][name]` is an interval dict or missing (no bar)."""
    colors, height = _colors(runs), 0.8 / max(len(runs), 1)
    for i, label in enumerate(runs):
        ys, xs, errors = [], [], [[], []]
        for j, name in enumerate(names):
            v = values.get(label, {}).get(name)
            if v is None:
                continue
            ys.append(j + (i - (len(runs) - 1) / 2) * height)
            xs.append(v["mean"])
            errors[0].append(v["mean"] - (v["low"] if v["low"] is not None else v["mean"]))
            errors[1].append((v["high"] if v["high"] is not None else v["mean"]) - v["mean"])
        if xs:
            ax.barh(ys, xs, height=height, xerr=errors if np.any(errors) else None, color=colors[label], label=label,
                    capsize=2)
    ax.set_yticks(range(len(names)), names)
    ax.axvline(0.0, color="gray", linewidth=1)
    ax.invert_yaxis()


def plot_ablations(runs: dict):
    names = [n for n in ablations_lib.ABLATIONS if any(n in m["ablations"] for m in runs.values())]
    if not names:
        return None
    quantities = [("ce", "change in cross-entropy (nats)")]
    if any("embedding_loss" in e for m in runs.values() for e in m["ablations"].values()):
        quantities.append(("embedding_loss", "change in embedding loss"))
    if any("accuracy" in e for m in runs.values() for e in m["ablations"].values()):
        quantities.append(("accuracy", "change in token accuracy (task runs)"))
    fig, axes = plt.subplots(1, len(quantities), figsize=(6.5 * len(quantities), 0.6 * len(names) + 2.2),
                             squeeze=False)
    for ax, (key, xlabel) in zip(axes[0], quantities):
        _bars(ax, runs, {label: {n: e[key] for n, e in m["ablations"].items() if key in e}
                         for label, m in runs.items()}, names)
        ax.set(title=xlabel.split(" (")[0].capitalize() + " when a part is taken out", xlabel=xlabel)
        # symlog: changes from a hundredth of a nat (or 1e-4 of a loss) to many nats on one axis
        ax.set_xscale("symlog", linthresh=1e-4 if key == "embedding_loss" else 1e-2)
    return _finish(fig, axes[0], "Eval-time ablations against the intact model (95% intervals over windows)")


def plot_layer_norms(runs: dict):
    with_lns = {label: m for label, m in runs.items() if m["layer_norms"]}
    if not with_lns:
        return None
    names = [n for n in model_lib.EMBEDDING_LNS if any(n in m["layer_norms"] for m in with_lns.values())]
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.0 * len(names) + 2.4))
    for ax, (key, xlabel) in zip(axes, (("scale_abs_mean", "mean |scale| (1 at initialisation)"),
                                         ("bias_abs_mean", "mean |bias| (0 at initialisation)"))):
        _bars(ax, with_lns, {label: {n: {"mean": v[key], "low": None, "high": None}
                                     for n, v in m["layer_norms"].items()} for label, m in with_lns.items()}, names)
        ax.set(title=xlabel.split(" (")[0], xlabel=xlabel, xscale="log" if key == "scale_abs_mean" else "linear")
    axes[0].axvline(1.0, color="gray", linestyle="--", label="initial scale")
    return _finish(fig, axes, "The embedding-loss LayerNorms")


def plot_positional_cosine(runs: dict):
    tables = {label: m for label, m in runs.items() if m["positional_table"]}
    if not tables:
        return None
    fig, axes = plt.subplots(1, len(tables), figsize=(4.6 * len(tables), 4.2), squeeze=False)
    for ax, (label, m) in zip(axes[0], tables.items()):
        image = ax.imshow(np.asarray(m["positional_cosine"]), vmin=-1, vmax=1, cmap="RdBu_r", origin="lower")
        ax.set(title=f"{label} ({m['positional_table']})", xlabel="row (position)", ylabel="row (position)")
        fig.colorbar(image, ax=ax, fraction=0.046, label="cosine")
    fig.suptitle("Cosine similarity between positional embeddings (one colour scale)")
    fig.tight_layout()
    return fig


def plot_norms(runs: dict):
    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, m), color in zip(runs.items(), _colors(runs).values()):
        if m["positional_table"]:
            norms = m["positional_norms"]
            ax.plot(range(m["context_size"]), norms[:m["context_size"]], color=color,
                    label=f"{label}: positional embedding norm")
            if len(norms) > m["context_size"]:
                ax.plot([m["context_size"]], norms[m["context_size"]:], "X", color=color, markersize=9,
                        label=f"{label}: row T, the last token's next position (used only by pos sub)")
        ax.axhline(m["token_norm_weighted"], color=color, linestyle="--",
                   label=f"{label}: token embedding norm, frequency-weighted")
    ax.set(title="Embedding norms: positional by row, tokens weighted by frequency", xlabel="row (position)",
           ylabel="L2 norm", ylim=(0, None))
    return _finish(fig, [ax])


def plot_overlap(runs: dict):
    tables = {label: m for label, m in runs.items() if m.get("overlap")}
    if not tables:
        return None
    colors = _colors(runs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, m in tables.items():
        ks = [int(k) for k in m["overlap"]]
        left.plot(ks, [m["overlap"][str(k)]["positional_variance_in_token_subspace"] for k in ks], "o-",
                  color=colors[label], label=label)
        k = max(ks)
        right.plot(range(1, k + 1), m["overlap"][str(k)]["principal_angles_deg"], "o-", color=colors[label],
                   label=f"{label} (k={k})")
    for d in sorted({m["n_embed"] for m in tables.values()}):
        ks = sorted({int(k) for m in tables.values() if m["n_embed"] == d for k in m["overlap"]})
        left.plot(ks, [k / d for k in ks], ":", color="gray", label=f"a random subspace (k/D, D={d})")
    left.set(title="Positional variance inside the token top-k subspace", xlabel="k", ylabel="fraction of variance",
             ylim=(0, 1.02))
    left.set_xscale("log", base=2)
    right.set(title="Principal angles between the top-k subspaces", xlabel="angle index",
              ylabel="angle (degrees)", ylim=(0, 92))
    return _finish(fig, [left, right])


def plot_embedding_loss(runs: dict):
    with_loss = {label: m for label, m in runs.items() if "embedding_loss_by_position" in m}
    if not with_loss:
        return None
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, m in with_loss.items():
        ax.plot(np.asarray(m["embedding_loss_by_position"], np.float64), color=colors[label],
                marker="." if "task" in m else None,
                label=f"{label} ({m['embedding_loss_type']}, mean {m['embedding_loss']:.3g})")
    ax.set(title="Embedding-loss terms by position (eval mode, before the coefficient)", xlabel="position t",
           ylabel="loss term", ylim=(0, None))
    return _finish(fig, [ax])


def plot_alignment(runs: dict):
    colors = _colors(runs)
    panels = [("alignment_by_layer", "Before the LayerNorms: cos(layer output, running mean)")]
    if any("alignment_after_ln_by_layer" in m for m in runs.values()):
        panels.append(("alignment_after_ln_by_layer", "After them, as the embedding loss compares"))
    if any("alignment_unbiased_by_layer" in m for m in runs.values()):
        panels.append(("alignment_unbiased_by_layer", "After them, their biases taken out"))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5 * (len(panels) + 1), 4.2))
    for ax, (key, title) in zip(axes, panels):
        for label, m in runs.items():
            if key in m:
                what = "encoder blocks" if m["model_type"] == "aed" else "blocks"
                ax.plot(m[key], "o-", color=colors[label], label=f"{label} ({what})")
        ax.set(title=title, xlabel="layer (0: the input embeddings)", ylabel="mean cosine")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for label, m in runs.items():
        axes[-1].plot(m["alignment_by_layer_position"][-1], color=colors[label], label=f"{label}: last layer")
    axes[-1].set(title="Before the LayerNorms, last layer, by position", xlabel="position t", ylabel="mean cosine")
    low = min(min(np.min(m[key]) for key, _ in panels if key in m) for m in runs.values())
    for ax in axes:  # one range for every panel: 0 to 1, and below 0 when a cosine is
        ax.set_ylim(min(-0.05, low - 0.05), 1.05)
    return _finish(fig, axes, "Does the encoder track the running mean of its input embeddings?")


_KIND_STYLES = {"self": "-", "encoder self": "-", "decoder self": "--", "decoder cross": ":"}


def plot_attention(runs: dict):
    """Entropy and attended distance: a panel each, every run and attention kind as lines (the layer
    mean; the heads' values as dots), uniform attention over the visible keys dashed grey."""
    colors = _colors(runs)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for ax, stat in zip(axes, ("entropy", "distance")):
        for label, m in runs.items():
            for kind, values in m["attention"].items():
                values_LxN = np.asarray(values[stat])
                layers = np.arange(len(values_LxN))
                ax.plot(np.repeat(layers, values_LxN.shape[1]), values_LxN.ravel(), ".", color=colors[label],
                        alpha=0.35)
                ax.plot(layers, values_LxN.mean(1), _KIND_STYLES[kind], marker="o", color=colors[label],
                        label=f"{label}: {kind}")
        for t, uniform in sorted({(m["context_size"], m["uniform_attention"][stat]) for m in runs.values()}):
            ax.axhline(uniform, color="gray", linestyle="--", label=f"uniform over the visible keys (T={t})")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(title="Attention entropy" if stat == "entropy" else "Mean attended distance", xlabel="layer",
               ylabel="entropy (nats)" if stat == "entropy" else "query position - key position", ylim=(0, None))
    return _finish(fig, axes, "Attention by layer (lines: the mean over heads; dots: each head)")


FIGURES = (  # (file, function of (runs, differences), a comparison on shared axes, what the report says of it)
    ("ce_by_position.png", lambda runs, diffs: plot_ce_by_position(runs), True,
     "Mean validation cross-entropy at each position t over the sampled windows."),
    ("ce_difference.png", lambda runs, diffs: plot_ce_difference(runs, diffs), True,
     "Each run's cross-entropy minus the first run's, by position, on the same windows: the band is a 95% "
     "bootstrap band over the windows; where it excludes zero the runs differ at that position."),
    ("ablations.png", lambda runs, diffs: plot_ablations(runs), True,
     "What each part is worth: the change when it is taken out, against the intact model on the same windows "
     "(bars: mean; whiskers: 95% t-interval over windows)."),
    ("layer_norms.png", lambda runs, diffs: plot_layer_norms(runs), True,
     "The scales and biases of the LayerNorms the embedding loss compares through (log axis; dashed: the initial "
     "scale of 1)."),
    ("alignment.png", lambda runs, diffs: plot_alignment(runs), True,
     "What the embedding loss asks of the last encoder layer: the cosine between each layer's output and the "
     "running mean of the input embeddings, raw and (AED with a loss) after the embedding-loss LayerNorms."),
    ("embedding_loss_by_position.png", lambda runs, diffs: plot_embedding_loss(runs), True,
     "The AED embedding-loss terms at each position, without dropout and before the coefficient."),
    ("attention.png", lambda runs, diffs: plot_attention(runs), True,
     "Attention entropy and how far back each head looks, every run and attention on the same axes; dashed: "
     "uniform attention over the visible keys."),
    ("norms.png", lambda runs, diffs: plot_norms(runs), True,
     "Positional embedding norms by row (X: the extra row only position subtraction uses), against the token "
     "embeddings' norm weighted by token frequency in the training split (dashed)."),
    ("overlap.png", lambda runs, diffs: plot_overlap(runs), True,
     "How much the positional and token embeddings share directions: the fraction of the positional variance "
     "inside the token table's top-k principal subspace (dotted: a random subspace), and the principal angles "
     "between the two top-k subspaces (0: shared, 90: orthogonal)."),
    ("positional_cosine.png", lambda runs, diffs: plot_positional_cosine(runs), False,
     "How similar the positional embeddings are to each other (a panel per run, one colour scale)."),
)


TASK_NOTES = {  # what a figure's sentence adds when a run is a task run
    "ce_by_position.png": " A task run's: over the sequences with an answer at t (dots; a gap: no answer there).",
    "ce_difference.png": " Task runs: over the answers, so over the sequences with an answer at t.",
    "ablations.png": " A task run's changes are over its answers, token accuracy's among them.",
    "embedding_loss_by_position.png": " A task run's: at its answers, as its cross-entropy.",
    "norms.png": " A task run's token frequencies are those of the sequences drawn.",
}


def _interval_text(i: dict, digits: int = 3) -> str:
    if i["low"] is None:
        return f"{i['mean']:+.{digits}f}"
    return f"{i['mean']:+.{digits}f} [{i['low']:+.{digits}f}, {i['high']:+.{digits}f}]"


def _zero(i: dict) -> str:
    return ": the interval excludes zero" if i["low"] > 0 or i["high"] < 0 else ": the interval includes zero"


def _measured_on(runs: dict, gaps: dict) -> str:
    """The report's first paragraph: what every run was measured on (for a task run, the sequences
    drawn from its task and how they are scored) and what the intervals are over."""
    first = next(iter(runs.values()))
    luck = ("They measure how much the numbers move with the windows drawn, not with the random seed a run was "
            "trained with: a difference between two runs that the windows cannot explain may still be one seed's "
            "luck (`experiments.reproduce --seeds N` measures that).")
    if not any("task" in m for m in runs.values()):
        lengths = (f"of {first['context_size']} tokens" if len({m["context_size"] for m in runs.values()}) == 1 else
                   "of its own context size (" + ", ".join(f"{label}: {m['context_size']} tokens"
                                                           for label, m in runs.items()) + ")")
        windows = f"{'' if gaps else 'the same '}{first['windows']:,} windows {lengths}"
        return (f"Every run measured on {windows}, drawn at random (seed {first['seed']}) from its data file; "
                f"intervals are 95%, over those windows. {luck}")
    if not gaps and all("task" in m for m in runs.values()):
        sample = (f"Every run measured on the same {first['windows']:,} sequences of `{first['data']}` "
                  f"({first['context_size']} tokens), drawn from the task with seed {first['seed']} "
                  f"(`tasks.make_batch`, {TASK_DRAW:,} at a time, so the first N are the same for any N)")
    else:
        sample = "What each run was measured on: " + "; ".join(
            f"{label}, {m['windows']:,} sequences of `{m['data']}` ({m['context_size']} tokens) drawn from the task "
            f"with seed {m['seed']}" if "task" in m else
            f"{label}, {m['windows']:,} windows of {m['context_size']} tokens drawn at random (seed {m['seed']}) "
            f"from `{m['data']}`" for label, m in runs.items())
    return (f"{sample}. A task run's sequences are scored on their answer positions alone (the task's `weight` "
            f"mask): its cross-entropy, token accuracy and embedding loss, by position too, each ablation's change "
            f"and each difference between runs are over the answers, and a position no sequence has an answer at "
            f"has no value (a gap in the figures); its alignment and attention numbers are over every position. "
            f"Intervals are 95%, over the windows (a task run's: its sequences). {luck}")


def _loss_text(i: dict) -> str:
    return f"{i['mean']:+.3g} [{i['low']:+.3g}, {i['high']:+.3g}]" if i["low"] is not None else f"{i['mean']:+.3g}"


def shrinking_sentence(label: str, m: dict) -> str | None:
    """What the report says of a run's embedding loss and its LayerNorms (None without the ablation)."""
    factor = m.get("shrinking_factor")
    if factor is None:
        return None
    loss = m["embedding_loss"]
    scales = ", ".join(f"`{n}` {v['scale_abs_mean']:.3g}" for n, v in m["layer_norms"].items())
    if m.get("embedding_loss_type") in config_lib.PARAMETER_FREE_LOSSES:  # no LayerNorm in the loss path
        cosines = (f"{m['alignment_by_layer'][-1]:.2f}, and {m['alignment_after_ln_by_layer'][-1]:.2f} standardised "
                   f"as {m['embedding_loss_type']} compares them (no LayerNorm in its path)")
    else:
        cosines = (f"{m['alignment_by_layer'][-1]:.2f} before the LayerNorms, "
                   f"{m['alignment_after_ln_by_layer'][-1]:.2f} after")
        if "alignment_unbiased_by_layer" in m:
            cosines += f" and {m['alignment_unbiased_by_layer'][-1]:.2f} with their biases taken out"
    times = f"{factor:,.0f}" if factor >= SHRINKING else f"{factor:.2f}"
    detail = (f"with the scales reset to 1 the loss is {loss * factor:.3g}, {times} times as large; the mean "
              f"|scale| is {scales}; the last encoder layer's cosine with the running mean is {cosines}")
    if factor >= SHRINKING:
        # Not "by the encoder tracking the running mean": with detach_type ENCODER_OUT (the seed's) the encoder
        # gets no gradient from the loss at all, so the sentence names no side.
        return (f"**{label}: the embedding loss ({loss:.3g}) is met mostly by shrinking the LayerNorm scales, not by "
                f"bringing the two sides together**: {detail}.")
    return f"{label}: the embedding loss ({loss:.3g}) is not explained by small scales alone: {detail}."


def write_report(runs: dict, out: str, command: str, seed: int = 0) -> list[str]:
    """DIR/report.md, the PNGs, metrics.json and windows.npz for `runs` ({label: analyze_run's dict});
    the PNG names. Each file is written atomically."""
    os.makedirs(out, exist_ok=True)
    diffs = differences(runs, seed)
    with_task = any("task" in m for m in runs.values())
    written = []
    for name, plot, _, text in FIGURES:
        fig = plot(runs, diffs)
        if fig is None:
            continue
        with rundir.atomic_file(os.path.join(out, name), "wb") as f:
            fig.savefig(f, dpi=110, format="png")
        plt.close(fig)
        written.append((name, text + (TASK_NOTES.get(name, "") if with_task else "")))
    public = {label: {k: v for k, v in m.items() if not k.startswith("_")} for label, m in runs.items()}
    rundir.write_atomic(os.path.join(out, "metrics.json"), json.dumps({"runs": public, "differences": diffs}))
    with rundir.atomic_file(os.path.join(out, "windows.npz"), "wb") as f:
        np.savez(f, labels=np.asarray(list(runs)), **{f"run{i}_{k}": m[f"_{k}"] for i, m in enumerate(runs.values())
                                                       for k in ("ce_WxT", "offsets")})
    first_label, first = next(iter(runs.items()))
    gaps = {label: gap for label, m in list(runs.items())[1:] if (gap := unpaired(first, m))}
    lines = ["# Analysis", "", f"`{command}`", "", _measured_on(runs, gaps), ""]
    accuracy = ("token accuracy (chance) | sequence accuracy | ", "---|---|") if with_task else ("", "")
    lines += [f"| run | model | step | tokens{' (a task: answers)' if with_task else ''} | val CE | perplexity | "
              f"accuracy loss | {accuracy[0]}embedding loss | token norm (weighted) | mean positional norm |",
              f"|---|---|---|---|---|---|---|{accuracy[1]}---|---|---|"]
    for label, m in runs.items():
        emb = f"{m['embedding_loss']:.3g}" if "embedding_loss" in m else "-"
        pos = f"{np.mean(m['positional_norms']):.3f}" if m["positional_table"] else "-"
        scored = ("" if not with_task else "- | - | " if "task" not in m else
                  f"{m['token_accuracy']:.4f} ({m['task']['chance_token_accuracy']:.3f}) | "
                  f"{m['sequence_accuracy']:.4f} | ")
        lines.append(f"| {label} | {m['model_type']} | {m['step']} | {m['tokens']:,} | {m['ce_loss']:.4f} | "
                     f"{m['perplexity']:.2f} | {m['accuracy_loss']:.4f} | {scored}{emb} | "
                     f"{m['token_norm_weighted']:.3f} | {pos} |")
    lines += ["", "Runs: " + "; ".join(f"{label} = `{m['workdir']}` ({m['checkpoint']}, step {m['step']}), "
                                       + (f"task `{m['data']}`, sequences" if "task" in m else
                                          f"data `{m['data']}`, windows") + f" of {m['context_size']} tokens"
                                       for label, m in runs.items()), ""]
    if diffs or gaps:
        lines += ["## Differences", ""]
    if diffs and "task" in first:
        lines += ["Cross-entropy minus the first run's on the same sequences, over their answers: the mean of each "
                  "sequence's difference over its answers, with its t-interval over the sequences (by position: "
                  "`ce_difference.png`); and token accuracy minus the first run's, likewise.", ""]
        lines += [f"- {label} - {d['against']}: {_interval_text(d['mean'])} nats{_zero(d['mean'])}; token accuracy "
                  f"{_interval_text(d['accuracy'])}{_zero(d['accuracy'])}" for label, d in diffs.items()]
        lines.append("")
    elif diffs:
        lines += ["Cross-entropy minus the first run's on the same windows, the mean over "
                  "positions with its t-interval over windows (by position: `ce_difference.png`).", ""]
        lines += [f"- {label} - {d['against']}: {_interval_text(d['mean'])} nats{_zero(d['mean'])}"
                  for label, d in diffs.items()]
        lines.append("")
    if gaps:  # a difference pairs the two runs' CE window by window: these have no window in common
        lines += [f"- {label} - {first_label}: no difference: {gap}, so no "
                  f"{'sequence' if 'task' in first or 'task' in runs[label] else 'window'} was measured by both."
                  for label, gap in gaps.items()]
        lines += ["", "The difference figure (`ce_difference.png`) has no line for these runs"
                  + ("." if diffs else ", so it is not drawn."), ""]
    names = [n for n in ablations_lib.ABLATIONS if any(n in m["ablations"] for m in runs.values())]
    if names:
        lines += ["## What each part is worth: eval-time ablations", "",
                  "Each part taken out of the trained model, nothing retrained; the change against the intact model "
                  "on the same windows, mean [95% t-interval over windows] (windows drawn at random may overlap: "
                  "read the intervals as approximate). `-`: the run has no such part."
                  + (" A task run's changes are over its answers alone, each sequence's change the mean over its "
                     "answers, its token accuracy's among them." if with_task else ""), ""]
        lines += [f"- `{n}`: {ablations_lib.ABLATIONS[n]}" for n in names]
        for key, what in (("ce", "Change in cross-entropy (nats)"), ("embedding_loss", "Change in embedding loss"),
                          ("accuracy", "Change in token accuracy (task runs)")):
            if key != "ce" and not any(key in e for m in runs.values() for e in m["ablations"].values()):
                continue
            fmt = _loss_text if key == "embedding_loss" else _interval_text
            lines += ["", f"{what}:", "", "| ablation | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
            lines += [f"| `{n}` | " + " | ".join(fmt(m["ablations"][n][key]) if key in m["ablations"].get(n, {})
                                                   else "-" for m in runs.values()) + " |" for n in names]
        lines.append("")
    with_lns = {label: m for label, m in runs.items() if m["layer_norms"]}
    with_loss = {label: m for label, m in runs.items() if "alignment_after_ln_by_layer" in m}
    if with_lns or with_loss:
        lines += ["## The embedding loss and its LayerNorms", ""]
    if with_lns:
        lines += ["| run | LayerNorm | mean scale | mean abs scale | max abs scale | mean abs bias |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {label} | `{n}` | {v['scale_mean']:.3g} | {v['scale_abs_mean']:.3g} | {v['scale_abs_max']:.3g} | "
                  f"{v['bias_abs_mean']:.3g} |" for label, m in with_lns.items() for n, v in m["layer_norms"].items()]
        lines.append("")
    if with_loss:
        lines += ["Mean cosine with the running mean, by layer (layer 0: the input embeddings): before the "
                  "LayerNorms / after them, as the loss compares / after them with their biases taken out (a shared "
                  "bias on both sides makes the cosine after them high whatever the directions). NORM_MSE and "
                  "CENTERED_COSINE compare the sides standardised over their features, with no LayerNorm: their "
                  "second and third numbers are that cosine.", ""]
        for label, m in with_loss.items():
            columns = [m[k] for k in ("alignment_by_layer", "alignment_after_ln_by_layer",
                                      "alignment_unbiased_by_layer") if k in m]
            floor = f", variance floor {m['embedding_var_coeff']:g}" if m.get("embedding_var_coeff") else ""
            lines.append(f"- {label} ({m['embedding_loss_type']}{floor}): " + ", ".join(
                " / ".join(f"{v:.3f}" for v in values) for values in zip(*columns)))
        lines += ["", "Each feature's standard deviation over every position of the windows, min / median / max "
                  "over the features: the last encoder layer's output and the running mean of the input "
                  "embeddings, raw and as the loss compares them (a collapsed feature, or a LayerNorm scale "
                  "shrunk towards 0, is a min or a median near 0):", "",
                  "| run | encoder output | encoder output, as compared | running mean | running mean, as compared |",
                  "|---|---|---|---|---|"]
        lines += [f"| {label} | " + " | ".join(" / ".join(f"{m['feature_std'][side][k]:.3g}"
                                                         for k in ("min", "median", "max"))
                                              for side in FEATURE_SIDES) + " |" for label, m in with_loss.items()]
        lines.append("")
        sentences = [s for s in (shrinking_sentence(label, m) for label, m in with_lns.items()) if s]
        if sentences:
            lines += sentences + ["", f"How that is decided: the loss compares the two LayerNormed sides, and "
                                  f"scaling both by a factor g scales an MSE by about g^2 whatever their "
                                  f"directions. So the loss with the scales reset to 1 (the `unit_ln_scales` "
                                  f"ablation, the run's own loss type) is compared with the loss as trained: at "
                                  f"{SHRINKING:.0f} times or more, at least {1 - 1 / SHRINKING:.0%} of the "
                                  f"disagreement the normalised sides still have is hidden by the scales rather "
                                  f"than removed by alignment. NORM_MSE and CENTERED_COSINE read the sides before "
                                  f"the LayerNorms, so their factor is 1 whatever the scales.", ""]
    lines += ["## Alignment with the running mean of the input embeddings", "",
              "Mean cosine by layer, before any LayerNorm (layer 0: the input embeddings; then each encoder block, or "
              "each block of a baseline).", ""]
    lines += [f"- {label}: " + ", ".join(f"{v:.3f}" for v in m["alignment_by_layer"]) for label, m in runs.items()]
    lines += ["", "## Overlap of positional and token embeddings", "",
              "| run | k | principal angles (deg) min / mean / max | positional variance in token top-k | random k/D |",
              "|---|---|---|---|---|"]
    for label, m in runs.items():
        for k, o in (m.get("overlap") or {}).items():
            a = o["principal_angles_deg"]
            lines.append(f"| {label} | {k} | {min(a):.1f} / {np.mean(a):.1f} / {max(a):.1f} | "
                         f"{o['positional_variance_in_token_subspace']:.3f} | {o['random_subspace_expectation']:.3f} |")
    lines += ["", "## Attention", "", "| run | attention | layer | entropy by head (nats) | distance by head |",
              "|---|---|---|---|---|"]
    for label, m in runs.items():
        for kind, values in m["attention"].items():
            for i, (entropy, distance) in enumerate(zip(values["entropy"], values["distance"])):
                lines.append(f"| {label} | {kind} | {i} | {' '.join(f'{v:.2f}' for v in entropy)} | "
                             f"{' '.join(f'{v:.1f}' for v in distance)} |")
    lines += ["", "## Figures", ""]
    for name, text in written:
        lines += [f"![{name}]({name})", "", text, ""]
    rundir.write_atomic(os.path.join(out, "report.md"), "\n".join(lines))
    return [name for name, _ in written]


def labels(workdirs: list[str]) -> list[str]:
    """Each run's name in the legends: the last part of its path, or as many last parts as tell every run
    apart (runs/tiny/mse_pos_sub/seed1337 and .../baseline/seed1337: mse_pos_sub/seed1337, baseline/seed1337)."""
    parts = [os.path.normpath(w).split(os.sep) for w in workdirs]
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [os.path.normpath(w) for w in workdirs]  # the same folder twice: its path, twice
