"""`python -m aed_jax.analyze --workdir A [--workdir B ...] --out DIR`: what a run's embeddings and
attention look like, for the seed's open questions (does position subtraction change the positional
embeddings, does the encoder track the running mean of its input, where in the window a model wins).

One deterministic pass over every non-overlapping window of the val split (or `--data`) per run,
then `DIR/report.md`, one PNG per figure (several runs side by side, a legend entry per run) and
`DIR/metrics.json` with every number:

- validation cross-entropy by position t = 0..T-1 (`metrics.loss_sums`, evaluate's numbers);
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
import json
import os

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.ticker
import numpy as np
import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from aed_jax import cli  # noqa: E402
from aed_jax import data as data_lib  # noqa: E402
from aed_jax import metrics  # noqa: E402
from aed_jax import model as model_lib  # noqa: E402
from aed_jax import rundir  # noqa: E402

KS = (1, 2, 4, 8, 16, 32, 64)  # subspace dimensions of the overlap, those below D and the table's rows
_ATTENTION_DENSE = ("batch_attn_weights", "q_weights", "k_v_weights")
ATTENTION_KINDS = ("self", "encoder self", "decoder self", "decoder cross")  # baseline; AED


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_multi_string("workdir", None, "A run folder; repeat it to compare runs side by side.", flag_values=fv)
    flags.DEFINE_string("checkpoint", "latest", "Which checkpoint of each run: latest, best, or a step number.",
                        flag_values=fv)
    flags.DEFINE_string("data", None, "A token folder or one .bin file to pass over; default: each run's val split.",
                        flag_values=fv)
    flags.DEFINE_integer("windows", None, "Only the first N windows (default: every window of the split).",
                         flag_values=fv)
    flags.DEFINE_integer("batch_size", None, "Sequences per batch (default: the run config's batch_size).",
                         flag_values=fv)
    flags.DEFINE_string("out", None, "Folder for report.md, the PNGs and metrics.json.", flag_values=fv)


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


def alignment_sums(layer_BxTxD, emb_BxTxD, weight_B):
    """[T]: cos(layer output at t, mean of the input embeddings 0..t), summed over weighted rows."""
    layer_BxTxD, emb_BxTxD = layer_BxTxD.astype(jnp.float32), emb_BxTxD.astype(jnp.float32)
    mean_BxTxD = jnp.cumsum(emb_BxTxD, axis=1) / jnp.arange(1, emb_BxTxD.shape[1] + 1)[None, :, None]
    norms_BxT = (jnp.maximum(jnp.linalg.norm(layer_BxTxD, axis=-1), 1e-8)
                 * jnp.maximum(jnp.linalg.norm(mean_BxTxD, axis=-1), 1e-8))
    return jnp.einsum("bt,b->t", jnp.sum(layer_BxTxD * mean_BxTxD, axis=-1) / norms_BxT, weight_B)


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


@functools.lru_cache(maxsize=8)
def _pass(cfg: model_lib.ModelConfig):
    """A jitted (params, x_BxT, y_BxT, weight_B) -> the evaluator's sums and the activation sums."""
    model = model_lib.make_model(cfg)
    with_embedding_loss = metrics.has_embedding_loss(cfg)
    stack, depth = (("encoder_transformer_blocks", cfg.encoder_layers) if cfg.model_type == "aed"
                    else ("transformer_blocks", cfg.n_layer))

    @jax.jit
    def sums(params, x_BxT, y_BxT, weight_B):
        (logits_BxTxV, _), state = model.apply({"params": params}, x_BxT, with_embedding_loss=with_embedding_loss,
                                               capture_intermediates=_capture, mutable=["intermediates"])
        captured = state["intermediates"]
        terms_BxT = captured["embedding_loss_BxT"][0] if with_embedding_loss else None
        out = metrics.loss_sums(logits_BxTxV, y_BxT, weight_B, terms_BxT)
        emb_BxTxD = input_embeddings(cfg, params, x_BxT)
        layers = [emb_BxTxD] + [captured[f"{stack}_{i}"]["__call__"][0] for i in range(depth)]
        out["alignment_LxT"] = jnp.stack([alignment_sums(layer, emb_BxTxD, weight_B) for layer in layers])
        for name, pairs in attentions(cfg, captured).items():
            probs = [model_lib.causal_probs(q, k) for q, k in pairs]
            out[f"entropy/{name}"] = jnp.stack([entropy_sums(p, weight_B) for p in probs])
            out[f"distance/{name}"] = jnp.stack([distance_sums(p, weight_B) for p in probs])
        return out

    return sums


def summarise(totals: dict) -> dict:
    """Means of the pass's accumulated sums: the evaluator's, then per layer, head and position."""
    out = metrics.means(totals)
    rows, t = float(totals["rows"]), len(totals["ce_T"])
    out["alignment_by_layer_position"] = (totals["alignment_LxT"] / rows).tolist()
    out["alignment_by_layer"] = (totals["alignment_LxT"].sum(-1) / (rows * t)).tolist()
    out["attention"] = {key.split("/")[1]: {"entropy": (totals[key] / (rows * t)).tolist(),
                                            "distance": (totals["distance/" + key.split("/")[1]] / (rows * t)).tolist()}
                        for key in sorted(totals) if key.startswith("entropy/")}
    out["uniform_attention"] = {"entropy": float(np.mean(np.log(np.arange(1, t + 1)))),
                                "distance": float(np.mean(np.arange(t) / 2))}
    return out


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


def analyze_run(workdir: str, checkpoint: str = "latest", data: str | None = None, windows: int | None = None,
                batch_size: int | None = None, label: str = "") -> dict:
    """Every number of one run's checkpoint; CheckpointError / DataError (one line) for bad input."""
    params, config, step = rundir.restore_params(workdir, checkpoint)
    # float32 whatever the run trained in: these are measurements, compared with numpy's.
    cfg = model_lib.ModelConfig.from_config(config, dtype=jnp.float32, scan_layers=False).for_inference()
    params = model_lib.unstack_layers(params)
    path = data_lib.split_file(config, data, "val")
    context = cfg.context_size
    tokens = data_lib.load_tokens(path, cfg.alphabet_size, context + 1)
    if windows:
        tokens = tokens[:windows * context + 1]
    counts_V, counted = token_counts(config, data, path, tokens, cfg.alphabet_size)
    batch_size = batch_size or config.batch_size
    sums_fn, totals, device_params = _pass(cfg), {}, jax.device_put(params)
    batches = -(-((len(tokens) - 1) // context) // batch_size)
    for batch in tqdm.tqdm(data_lib.eval_windows(tokens, context, batch_size), total=batches, unit="batch",
                           desc=f"analyze {label or workdir}", disable=None):
        metrics.accumulate(totals, sums_fn(device_params, *metrics.pad_batch(batch, batch_size)))
    return {"workdir": workdir, "checkpoint": checkpoint, "step": step, "data": path, "frequencies_from": counted,
            "model_type": cfg.model_type, "position_embedding_type": cfg.position_embedding_type,
            "context_size": context, "n_embed": cfg.n_embed,
            "sub_pos_embed_to_decoder": cfg.sub_pos_embed_to_decoder,
            "embedding_loss_type": cfg.embedding_loss_type if cfg.model_type == "aed" else None,
            **summarise(totals), **table_metrics(params, counts_V)}


# Figures: one PNG each, every run in the same axes (a heatmap per run), a legend entry per run.

def _colors(runs: dict) -> dict:
    return {label: f"C{i % 10}" for i, label in enumerate(runs)}


def _save(fig, out: str, name: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)
    return name


def plot_ce_by_position(runs: dict, out: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, m), color in zip(runs.items(), _colors(runs).values()):
        ax.plot(m["ce_by_position"], color=color, label=f"{label} (mean {m['ce_loss']:.3f})")
    ax.set(title="Validation cross-entropy by position in the window", xlabel="position t",
           ylabel="mean cross-entropy (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out, "ce_by_position.png")


def plot_positional_cosine(runs: dict, out: str) -> str | None:
    tables = {label: m for label, m in runs.items() if m["positional_table"]}
    if not tables:
        return None
    fig, axes = plt.subplots(1, len(tables), figsize=(4.6 * len(tables), 4.2), squeeze=False)
    for ax, (label, m) in zip(axes[0], tables.items()):
        image = ax.imshow(np.asarray(m["positional_cosine"]), vmin=-1, vmax=1, cmap="RdBu_r", origin="lower")
        ax.set(title=f"{label} ({m['positional_table']})", xlabel="row (position)", ylabel="row (position)")
        fig.colorbar(image, ax=ax, fraction=0.046, label="cosine")
    fig.suptitle("Cosine similarity between positional embeddings")
    return _save(fig, out, "positional_cosine.png")


def plot_norms(runs: dict, out: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, m), color in zip(runs.items(), _colors(runs).values()):
        if m["positional_table"]:
            ax.plot(m["positional_norms"], color=color, label=f"{label}: positional embedding norm")
        ax.axhline(m["token_norm_weighted"], color=color, linestyle="--",
                   label=f"{label}: token embedding norm, frequency-weighted")
    ax.set(title="Embedding norms: positional by position, tokens weighted by frequency", xlabel="position",
           ylabel="L2 norm")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out, "norms.png")


def plot_overlap(runs: dict, out: str) -> str | None:
    tables = {label: m for label, m in runs.items() if m.get("overlap")}
    if not tables:
        return None
    colors = _colors(runs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, m in tables.items():
        ks = [int(k) for k in m["overlap"]]
        left.plot(ks, [m["overlap"][str(k)]["positional_variance_in_token_subspace"] for k in ks], "o-",
                  color=colors[label], label=label)
        left.plot(ks, [m["overlap"][str(k)]["random_subspace_expectation"] for k in ks], ":", color=colors[label],
                  label=f"{label}: random subspace (k/D)")
        k = max(ks)
        right.plot(range(1, k + 1), m["overlap"][str(k)]["principal_angles_deg"], "o-", color=colors[label],
                   label=f"{label} (k={k})")
    left.set(title="Positional variance inside the token top-k subspace", xlabel="k", ylabel="fraction of variance",
             xscale="log", ylim=(0, 1.02))
    left.set_xscale("log", base=2)
    right.set(title="Principal angles between the top-k subspaces", xlabel="angle index",
              ylabel="angle (degrees)", ylim=(0, 92))
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, out, "overlap.png")


def plot_embedding_loss(runs: dict, out: str) -> str | None:
    with_loss = {label: m for label, m in runs.items() if "embedding_loss_by_position" in m}
    if not with_loss:
        return None
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, m in with_loss.items():
        ax.plot(m["embedding_loss_by_position"], color=colors[label],
                label=f"{label} ({m['embedding_loss_type']}, mean {m['embedding_loss']:.4f})")
    ax.set(title="Embedding-loss terms by position (eval mode)", xlabel="position t", ylabel="loss term")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out, "embedding_loss_by_position.png")


def plot_alignment(runs: dict, out: str) -> str:
    colors = _colors(runs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, m in runs.items():
        what = "encoder blocks" if m["model_type"] == "aed" else "blocks"
        left.plot(m["alignment_by_layer"], "o-", color=colors[label], label=f"{label} ({what})")
        right.plot(m["alignment_by_layer_position"][-1], color=colors[label], label=f"{label}: last of its {what}")
    left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    left.set(title="cos(layer output, running mean of input embeddings)", xlabel="layer (0: the input embeddings)",
             ylabel="mean cosine")
    right.set(title="The same for the last layer, by position", xlabel="position t", ylabel="mean cosine")
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, out, "alignment.png")


def plot_attention(runs: dict, out: str, stat: str) -> str:
    """stat "entropy" or "distance": every head of every layer (dots) and their mean (line), per attention kind."""
    kinds = [kind for kind in ATTENTION_KINDS if any(kind in m["attention"] for m in runs.values())]
    colors = _colors(runs)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for label, m in runs.items():
            if kind not in m["attention"]:
                continue
            values_LxN = np.asarray(m["attention"][kind][stat])
            layers = np.arange(len(values_LxN))
            ax.plot(np.repeat(layers, values_LxN.shape[1]), values_LxN.ravel(), ".", color=colors[label], alpha=0.5)
            ax.plot(layers, values_LxN.mean(1), "-", color=colors[label], label=f"{label} (dots: heads)")
        for t, uniform in sorted({(m["context_size"], m["uniform_attention"][stat]) for m in runs.values()}):
            ax.axhline(uniform, color="gray", linestyle="--", label=f"uniform over the visible keys (T={t})")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(title=f"{kind}-attention", xlabel="layer",
               ylabel="entropy (nats)" if stat == "entropy" else "mean attended distance (positions)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Attention entropy per layer and head" if stat == "entropy"
                 else "Mean attended distance (query position - key position) per layer and head")
    return _save(fig, out, f"attention_{stat}.png")


FIGURES = (  # (function, what the report says of it)
    (plot_ce_by_position, "Where in the window each model gains or loses: mean validation cross-entropy at each "
                          "position t over the deterministic pass."),
    (plot_positional_cosine, "How similar the positional embeddings are to each other."),
    (plot_norms, "Positional embedding norms by position, against the token embeddings' norm weighted by "
                 "token frequency in the training split (dashed)."),
    (plot_overlap, "How much the positional and token embeddings share directions: the fraction of the positional "
                   "variance inside the token table's top-k principal subspace (dotted: a random subspace), and "
                   "the principal angles between the two top-k subspaces (0: shared, 90: orthogonal)."),
    (plot_embedding_loss, "The AED embedding-loss terms at each position, without dropout."),
    (plot_alignment, "What the embedding loss asks of the last encoder layer: the cosine between each layer's "
                     "output and the running mean of the input embeddings (does it hold there, and where does "
                     "it start)."),
    (functools.partial(plot_attention, stat="entropy"),
     "Attention entropy of every head (dots) and the layer's mean (line); dashed: uniform attention over the "
     "visible keys."),
    (functools.partial(plot_attention, stat="distance"), "How far back each head looks, on average."),
)


def write_report(runs: dict, out: str, command: str) -> list[str]:
    """DIR/report.md, the PNGs and metrics.json for `runs` ({label: analyze_run's dict}); the PNG names."""
    os.makedirs(out, exist_ok=True)
    written = [(f(runs, out), text) for f, text in FIGURES]
    written = [(name, text) for name, text in written if name]
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump({"runs": runs}, f)
    lines = ["# Analysis", "", f"`{command}`", "",
             "| run | model | step | tokens | val CE | perplexity | accuracy loss | embedding loss | "
             "token norm (weighted) | mean positional norm |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, m in runs.items():
        emb = f"{m['embedding_loss']:.4f}" if "embedding_loss" in m else "-"
        pos = f"{np.mean(m['positional_norms']):.3f}" if m["positional_table"] else "-"
        lines.append(f"| {label} | {m['model_type']} | {m['step']} | {m['tokens']:,} | {m['ce_loss']:.4f} | "
                     f"{m['perplexity']:.2f} | {m['accuracy_loss']:.4f} | {emb} | "
                     f"{m['token_norm_weighted']:.3f} | {pos} |")
    lines += ["", "Runs: " + "; ".join(f"{label} = `{m['workdir']}` ({m['checkpoint']}), data `{m['data']}`"
                                       for label, m in runs.items()), ""]
    lines += ["## Overlap of positional and token embeddings", "",
              "| run | k | principal angles (deg) min / mean / max | positional variance in token top-k | random k/D |",
              "|---|---|---|---|---|"]
    for label, m in runs.items():
        for k, o in (m.get("overlap") or {}).items():
            a = o["principal_angles_deg"]
            lines.append(f"| {label} | {k} | {min(a):.1f} / {np.mean(a):.1f} / {max(a):.1f} | "
                         f"{o['positional_variance_in_token_subspace']:.3f} | {o['random_subspace_expectation']:.3f} |")
    lines += ["", "## Alignment with the running mean of the input embeddings", "",
              "Mean cosine by layer (layer 0: the input embeddings; then each encoder block, or each block of a "
              "baseline).", ""]
    lines += [f"- {label}: " + ", ".join(f"{v:.3f}" for v in m["alignment_by_layer"]) for label, m in runs.items()]
    lines += ["", "## Attention", "", "| run | attention | layer | entropy by head (nats) | distance by head |",
              "|---|---|---|---|---|"]
    for label, m in runs.items():
        for kind, stats in m["attention"].items():
            for i, (entropy, distance) in enumerate(zip(stats["entropy"], stats["distance"])):
                lines.append(f"| {label} | {kind} | {i} | {' '.join(f'{v:.2f}' for v in entropy)} | "
                             f"{' '.join(f'{v:.1f}' for v in distance)} |")
    lines += ["", "## Figures", ""]
    for name, text in written:
        lines += [f"![{name}]({name})", "", text, ""]
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return [name for name, _ in written]


def labels(workdirs: list[str]) -> list[str]:
    """Each run's name in the legends: its folder's name, or its path where two names clash."""
    names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    return [n if names.count(n) == 1 else os.path.normpath(w) for n, w in zip(names, workdirs)]


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    if not fv.workdir:
        cli.fail("--workdir is required (repeat it to compare runs)")
    if not fv.out:
        cli.fail("--out is required: the folder for report.md, the figures and metrics.json")
    for name in ("windows", "batch_size"):
        if fv[name].value is not None and fv[name].value < 1:
            cli.fail(f"--{name} must be at least 1, got {fv[name].value}")
    runs = {label: analyze_run(workdir, fv.checkpoint, fv.data, fv.windows, fv.batch_size, label)
            for workdir, label in zip(fv.workdir, labels(fv.workdir))}
    command = "python -m aed_jax.analyze " + " ".join(argv_ for argv_ in _flag_args(fv))
    try:
        figures = write_report(runs, fv.out, command)
    except OSError as e:
        cli.fail(f"--out {fv.out}: cannot write the report ({e.strerror or e})")
    print(f"wrote {os.path.join(fv.out, 'report.md')}, metrics.json and {len(figures)} figures: {', '.join(figures)}")


def _flag_args(fv: flags.FlagValues) -> list[str]:
    args = [f"--workdir {w}" for w in fv.workdir] + [f"--checkpoint {fv.checkpoint}"]
    args += [f"--{name} {fv[name].value}" for name in ("data", "windows", "batch_size") if fv[name].value is not None]
    return args + [f"--out {fv.out}"]


if __name__ == "__main__":
    define_flags()
    cli.run(main)
