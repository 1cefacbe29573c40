"""Config schema: every default, the seed's key names, and validation with one-line errors.

The run configs in `configs/` start from `base_config(model_type)` and override what differs,
exactly as the seed's YAML files do. The dict is locked, so a misspelt key fails where it is set.
Enumerated options are the seed's enum names as strings (e.g. "YES_NO_LN").
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import re
import traceback

import ml_collections
from ml_collections import config_dict

from aed_jax import errors
from aed_jax import tasks

MODEL_TYPES = ("aed", "baseline")
ORDER_TYPES = ("ORIGINAL", "ALT")
SUB_POS_EMBED_TYPES = ("NO", "YES_NO_LN", "YES_LN")
POSITION_EMBEDDING_TYPES = ("LEARNED", "ROPE")
EMBEDDING_LOSS_TYPES = ("NONE", "MSE", "COSINE", "LOG_COSINE", "HUBER", "NORM_MSE", "CENTERED_COSINE")
PARAMETER_FREE_LOSSES = ("NORM_MSE", "CENTERED_COSINE")  # compare the sides before the LayerNorms (docs/model.md)
DETACH_TYPES = ("NONE", "EMBEDDING", "ENCODER_OUT")
EMBEDDING_LN_TYPES = ("NONE", "INIT", "AVG_CUM_SUM")
EMBEDDING_AGGREGATIONS = ("CUM_MEAN", "CAUSAL_CONV")
DTYPES = ("auto", "float32", "bfloat16")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
# The kinds of key, declared once: `rundir` (what a resume may change) and `model` (what ModelConfig
# takes) read them from here. What the reference implementation has is `reference`'s declaration.
MODEL_KEYS = ("model_type", "model_config", "scan_layers")  # what the parameters' names and shapes depend on
SCHEDULE_KEYS = ("train_steps", "stop_accuracy", "est_interval", "save_interval", "est_steps", "log_interval",
                 "keep_checkpoints")  # how long, how often
LOCATION_KEYS = ("workdir", "data_dir")  # where (the data's identity is checked by its size and hash instead)
EXECUTION_KEYS = ("dtype", "attention_impl", "ce_chunk_tokens", "remat", "micro_batch_size", "mesh_data",
                  "mesh_fsdp")  # how the same function is computed
MAY_CHANGE = SCHEDULE_KEYS + LOCATION_KEYS + EXECUTION_KEYS  # what a resumed run may change
MODEL_EXECUTION_KEYS = ("attention_impl", "ce_chunk_tokens", "scan_layers", "remat")  # ModelConfig's, with dtype
# The AED-only keys of model_config: absent from a baseline config.
AED_KEYS = (
    "order_type", "add_pos_embed_to_decoder", "use_ln_on_encoder_out", "add_ln_before_decoder_ff",
    "embedding_loss_type", "detach_type", "embedding_loss_coeff", "embedding_ln_type", "cross_attn_config",
    "n_layer_encoder", "n_layer_decoder", "embedding_aggregation", "embedding_aggregation_kernel_size",
    "embedding_var_coeff",
)


class ConfigError(errors.UserError):
    """A user error in a config: the message is one line naming the key."""


DEFAULT_DATASET = "wiki_vital"  # the built-in corpus: runs and suites on any other get its name in their folder


def base_config(model_type: str = "aed") -> ml_collections.ConfigDict:
    """Every default; the training recipe is the seed's (docs/model.md, "Training recipe").

    The comment closing each key's line is its meaning, as `--show_config` prints it (`meanings`).
    """
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type: {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    c = ml_collections.ConfigDict()
    c.model_type = model_type  # "aed" (encoder-decoder) or "baseline" (decoder-only GPT)

    m = c.model_config = ml_collections.ConfigDict()
    m.context_size = 200  # T: tokens per training window
    m.n_embed = 150  # D: embedding width
    m.n_head = 5  # self-attention heads (D must be divisible by it)
    m.n_layer = 13  # blocks per stack (AED has n_layer encoder + n_layer decoder blocks)
    m.use_bias = False  # biases in Linear and LayerNorm
    m.dropout_rate = 0.0  # dropout probability in training, in [0, 1)
    m.alphabet_size = 50257  # vocabulary size (GPT-2 BPE); the seed's name for it
    # pos_emb(1..T) are the embeddings of the positions being predicted. The seed has it for AED;
    # for the baseline it is one of the seed's "next steps".
    m.sub_pos_embed_to_decoder = "NO"  # NO | YES_NO_LN | YES_LN: subtract pos_emb(1..T) from the output
    # LEARNED is the seed's absolute table added to the input. ROPE rotates the queries and keys of
    # every attention instead; pos_emb(1..T) is then a learned table of "next position" vectors.
    m.position_embedding_type = "LEARNED"  # LEARNED (the seed's table) | ROPE (rotary, every attention)
    if model_type == "aed":
        m.order_type = "ORIGINAL"  # ORIGINAL: self-attn then cross-attn; ALT: the reverse
        m.add_pos_embed_to_decoder = False  # add pos_emb(1..T) to the decoder input
        m.use_ln_on_encoder_out = config_dict.placeholder(bool)  # LN on the encoder output in the embedding loss (unused by NORM_MSE, CENTERED_COSINE)
        m.add_ln_before_decoder_ff = False  # LN before the encoder->decoder Linear
        # NORM_MSE and CENTERED_COSINE compare the two sides before the LayerNorms, each standardised (centred)
        # over its features: no learnable scale or bias in their path, so shrinking a scale cannot meet them.
        m.embedding_loss_type = "NONE"  # encoder output vs mean embedding: NONE | MSE | COSINE | LOG_COSINE | HUBER | NORM_MSE | CENTERED_COSINE
        m.detach_type = config_dict.placeholder(str)  # embedding-loss gradient stop: NONE | EMBEDDING | ENCODER_OUT
        m.embedding_loss_coeff = config_dict.placeholder(float)  # scale of the embedding loss, > 0; None: 1
        m.embedding_ln_type = config_dict.placeholder(str)  # embedding LN: NONE | INIT | AVG_CUM_SUM (unused by NORM_MSE, CENTERED_COSINE)
        m.embedding_var_coeff = config_dict.placeholder(float)  # weight of a variance floor on the encoder side, >= 0; None/0: off
        m.cross_attn_config = ml_collections.ConfigDict()
        m.cross_attn_config.n_head = config_dict.placeholder(int)  # cross-attention heads; None: 2 * n_head
        m.cross_attn_config.use_bias = config_dict.placeholder(bool)  # cross-attention biases; None: use_bias
        # The seed's "next steps", all off by default:
        m.n_layer_encoder = config_dict.placeholder(int)  # encoder depth; default n_layer
        m.n_layer_decoder = config_dict.placeholder(int)  # decoder depth; default n_layer
        # CUM_MEAN is the seed's running mean of the embeddings; CAUSAL_CONV a learned causal
        # depthwise convolution over them.
        m.embedding_aggregation = "CUM_MEAN"  # what the encoder output is pulled towards: CUM_MEAN | CAUSAL_CONV
        m.embedding_aggregation_kernel_size = 16  # CAUSAL_CONV window

    # Optimisation (names as in the seed's train configs).
    c.batch_size = 50  # sequences per micro-batch
    c.gradient_accumulation_steps = 16  # micro-batches per optimizer step
    # The effective batch, batch_size * gradient_accumulation_steps sequences, can be computed in
    # splits of any size that divides it; the update is the same.
    c.micro_batch_size = config_dict.placeholder(int)  # sequences per split; None: most that fit on GPU, else batch_size
    c.train_steps = 9000  # optimizer steps
    c.lr = 9e-4  # peak learning rate, reached after warmup_iters
    c.min_lr = 9e-5  # learning rate at lr_decay_iters and after, in [0, lr]
    c.warmup_iters = 300  # steps of linear warmup from 0 to lr
    c.lr_decay_iters = 700000  # step where the cosine decay reaches min_lr
    c.decay_lr = True  # warmup then cosine decay; False: constant lr
    c.weight_decay = 0.1  # AdamW decoupled weight decay, on parameters with ndim >= 2 only
    c.beta1 = 0.9  # AdamW first-moment decay, in [0, 1)
    c.beta2 = 0.95  # AdamW second-moment decay, in [0, 1)
    c.random_seed = 1337  # seeds the initialisation, the batches and dropout, in [0, 2**32)
    c.dtype = "auto"  # compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU) | float32 | bfloat16

    # Execution: how the same function is computed.
    c.attention_impl = "auto"  # auto (cuDNN flash attention on GPU, written out on CPU, XLA elsewhere) | xla | cudnn
    c.ce_chunk_tokens = config_dict.placeholder(int)  # cross-entropy chunk; None: 8192 on GPU/TPU, 200 on CPU; 0: whole
    c.scan_layers = False  # stack each stack's blocks with nn.scan: compile time flat in depth (stacked params)
    c.remat = False  # recompute block activations in the backward pass
    # The device mesh: batch rows split over data x fsdp; parameters and AdamW moments split over fsdp.
    c.mesh_data = -1  # devices on the data-parallel axis; -1: every device the fsdp axis leaves
    c.mesh_fsdp = 1  # devices each parameter is sharded over (FSDP); -1: every device the data axis leaves

    # Estimation, as the seed does it; a checkpoint at each estimate, as in the seed, or at every k-th
    # (save_interval = k * est_interval), so that a curve of many estimates costs few saves.
    c.est_interval = 500  # estimate every est_interval steps and at the last step
    c.save_interval = config_dict.placeholder(int)  # checkpoint every save_interval steps and at the last; None: est_interval
    c.est_steps = 200  # batches of train and of val per estimate
    # A task run can end once it has learnt the task (steps to a level, and no compute spent after it).
    c.stop_accuracy = config_dict.placeholder(float)  # task runs: end at the first estimate of val token accuracy >= it, in (0, 1]; None: never

    # Data and outputs.
    c.dataset = DEFAULT_DATASET  # corpus name (wiki_vital is built in), or a synthetic task
    c.data_dir = config_dict.placeholder(str)  # folder of <dataset>_train.bin/_val.bin; default data/<dataset>
    c.workdir = config_dict.placeholder(str)  # run folder; default runs/<config file name>
    c.keep_checkpoints = 3  # most recent checkpoints kept (the best one, best/, is kept besides)
    c.log_interval = 10  # steps between training-metric log lines

    # Synthetic tasks (dataset "task:<name>"): sequences drawn on the fly, context_size tokens long over
    # alphabet_size ids, scored only on the answer positions. Every task's settings, as its entry in
    # aed_jax/tasks.py's registry declares them (their meanings too: `meanings`), so a new task needs no key here.
    c.task = ml_collections.ConfigDict({key: setting.default for key, (_, setting) in tasks.settings().items()})
    c.lock()
    return c


def check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def check_number(key: str, value, ok, rule: str) -> None:
    """ConfigError unless `value` is a finite number (never NaN or inf) for which `ok(value)` holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{key}: must be a finite number {rule}, got {value!r}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (one line, naming the key) for any bad value: a wrong choice, a size that is
    not a positive integer, a number that is not finite or out of its range, inconsistent keys."""
    check_choice("model_type", c.model_type, MODEL_TYPES)
    check_choice("dtype", c.dtype, DTYPES)
    check_choice("attention_impl", c.attention_impl, ATTENTION_IMPLS)
    if c.ce_chunk_tokens is not None and c.ce_chunk_tokens < 0:
        raise ConfigError(f"ce_chunk_tokens: must be >= 0, got {c.ce_chunk_tokens}")
    m = c.model_config
    for key in ("context_size", "n_embed", "n_head", "n_layer", "alphabet_size"):
        if not isinstance(m[key], int) or m[key] <= 0:
            raise ConfigError(f"model_config.{key}: must be a positive integer, got {m[key]!r}")
    if m.n_embed % m.n_head:
        raise ConfigError(f"model_config.n_head: n_embed={m.n_embed} is not divisible by n_head={m.n_head}")
    check_choice("model_config.sub_pos_embed_to_decoder", m.sub_pos_embed_to_decoder, SUB_POS_EMBED_TYPES)
    check_choice("model_config.position_embedding_type", m.position_embedding_type, POSITION_EMBEDDING_TYPES)
    if m.position_embedding_type == "ROPE" and m.n_embed // m.n_head < 2:
        raise ConfigError(f"model_config.n_head: ROPE turns pairs of features, so a head needs at least 2 "
                          f"(n_embed={m.n_embed} / n_head={m.n_head})")
    check_number("model_config.dropout_rate", m.dropout_rate, lambda v: 0 <= v < 1, "in [0, 1)")
    if c.model_type == "aed":
        _validate_aed(m)
    elif any(k in m for k in AED_KEYS):
        raise ConfigError(f"model_config: AED keys {[k for k in AED_KEYS if k in m]} set on a baseline config")
    for key in ("batch_size", "gradient_accumulation_steps", "train_steps", "est_interval", "est_steps",
                "keep_checkpoints", "log_interval"):
        if not isinstance(c[key], int) or c[key] <= 0:
            raise ConfigError(f"{key}: must be a positive integer, got {c[key]!r}")
    if c.save_interval is not None and (isinstance(c.save_interval, bool) or not isinstance(c.save_interval, int)
                                        or c.save_interval <= 0 or c.save_interval % c.est_interval):
        raise ConfigError(f"save_interval: must be a positive multiple of est_interval={c.est_interval} (best/ is "
                          f"chosen among the checkpoints' estimates), or None, got {c.save_interval!r}")
    for key in ("mesh_data", "mesh_fsdp"):
        if isinstance(c[key], bool) or not isinstance(c[key], int) or not (c[key] == -1 or c[key] > 0):
            raise ConfigError(f"{key}: must be a positive integer or -1 (every remaining device), got {c[key]!r}")
    if c.mesh_data == c.mesh_fsdp == -1:
        raise ConfigError("mesh_fsdp: at most one mesh axis can be -1 (mesh_data is -1 already)")
    rows = c.batch_size * c.gradient_accumulation_steps
    if c.micro_batch_size is not None and (c.micro_batch_size <= 0 or rows % c.micro_batch_size):
        raise ConfigError(f"micro_batch_size: {c.micro_batch_size} does not divide batch_size * "
                          f"gradient_accumulation_steps = {rows}")
    for key in ("warmup_iters", "lr_decay_iters"):  # each by its own name, so the message names the key set
        if isinstance(c[key], bool) or not isinstance(c[key], int) or c[key] < 0:
            raise ConfigError(f"{key}: must be an integer >= 0, got {c[key]!r}")
    if c.lr_decay_iters <= c.warmup_iters:
        raise ConfigError(f"lr_decay_iters: must exceed warmup_iters={c.warmup_iters} (the decay starts where the "
                          f"warmup ends), got {c.lr_decay_iters}")
    check_number("lr", c.lr, lambda v: v > 0, "> 0")
    check_number("min_lr", c.min_lr, lambda v: 0 <= v <= c.lr, f"in [0, lr={c.lr}]")
    check_number("weight_decay", c.weight_decay, lambda v: v >= 0, ">= 0")
    for key in ("beta1", "beta2"):
        check_number(key, c[key], lambda v: 0 <= v < 1, "in [0, 1)")
    if not 0 <= c.random_seed < 2**32:
        raise ConfigError(f"random_seed: must be in [0, 2**32), got {c.random_seed}")
    if not c.dataset or os.sep in c.dataset or (os.altsep and os.altsep in c.dataset):
        raise ConfigError(_dataset_is_not_a_name(c.dataset))
    if c.stop_accuracy is not None:
        check_number("stop_accuracy", c.stop_accuracy, lambda v: 0 < v <= 1, "in (0, 1], or None")
        if tasks.task_name(c.dataset) is None:
            raise ConfigError(f"stop_accuracy: a task run's key (its val token accuracy), and dataset {c.dataset!r} "
                              "is a corpus; unset it, or train on task:<name>")
    for key, (_, setting) in tasks.settings().items():  # each key's own range; how they fit: settings_problem
        problem = setting.problem(key, c.task[key])
        if problem:
            raise ConfigError(problem)
    problem = tasks.settings_problem(c)  # here, not in the trainer: a bad setting is told before jax loads
    if problem:
        raise ConfigError(problem)


def _dataset_is_not_a_name(dataset: str) -> str:
    """Why an empty or path-like `dataset` is refused, and the keys that say what was meant: a name's files
    are <data_dir>/<name>_train.bin and _val.bin, data_dir by default data/<name>."""
    if not dataset:
        return (f"dataset: must be a corpus name ({DEFAULT_DATASET} is built in; yours: the --name you gave "
                "prepare) or task:<name>, got ''")
    folder = dataset.rstrip("/" + (os.altsep or ""))
    name = os.path.basename(folder) or "NAME"
    return (f"dataset: {dataset!r} is a path, and dataset is a name: for the token files in {folder or dataset}, "
            f"pass --config.dataset={name} --config.data_dir={folder or dataset}")


def _validate_aed(m: ml_collections.ConfigDict) -> None:
    check_choice("model_config.order_type", m.order_type, ORDER_TYPES)
    check_choice("model_config.embedding_loss_type", m.embedding_loss_type, EMBEDDING_LOSS_TYPES)
    loss_keys = ("use_ln_on_encoder_out", "embedding_ln_type", "detach_type")
    if m.embedding_loss_type == "NONE":
        for key in loss_keys + ("embedding_loss_coeff", "embedding_var_coeff"):
            if m[key] is not None:
                raise ConfigError(f"model_config.{key}: must be unset (None) when embedding_loss_type is NONE")
        if m.embedding_aggregation != "CUM_MEAN":
            raise ConfigError("model_config.embedding_aggregation: only the embedding loss uses it; "
                              "it must stay CUM_MEAN when embedding_loss_type is NONE")
    else:
        for key in loss_keys:
            if m[key] is None:
                raise ConfigError(f"model_config.{key}: must be set when embedding_loss_type is {m.embedding_loss_type}")
        check_choice("model_config.detach_type", m.detach_type, DETACH_TYPES)
        check_choice("model_config.embedding_ln_type", m.embedding_ln_type, EMBEDDING_LN_TYPES)
        if m.embedding_loss_coeff is not None:
            check_number("model_config.embedding_loss_coeff", m.embedding_loss_coeff, lambda v: v > 0, "> 0")
        _validate_parameter_free(m)
    check_choice("model_config.embedding_aggregation", m.embedding_aggregation, EMBEDDING_AGGREGATIONS)
    for key in ("n_layer_encoder", "n_layer_decoder", "embedding_aggregation_kernel_size"):
        if m[key] is not None and m[key] <= 0:
            raise ConfigError(f"model_config.{key}: must be a positive integer, got {m[key]}")
    heads = m.cross_attn_config.n_head
    if heads is not None and (heads <= 0 or m.n_embed % heads):
        raise ConfigError(f"model_config.cross_attn_config.n_head: n_embed={m.n_embed} is not divisible by {heads}")
    if m.position_embedding_type == "ROPE" and m.n_embed // (heads or 2 * m.n_head) < 2:
        raise ConfigError(f"model_config.cross_attn_config.n_head: ROPE turns pairs of features, so a head needs at "
                          f"least 2 (n_embed={m.n_embed} / {heads or 2 * m.n_head} heads)")


def _validate_parameter_free(m: ml_collections.ConfigDict) -> None:
    """What a parameter-free loss (no learnable scale or bias in its path) cannot be combined with (a
    learned aggregation: its bias would be one), and the variance floor's weight, refused where the
    floor would train nothing (the encoder side detached, with no encoder_out_ln in the loss path)."""
    free = m.embedding_loss_type in PARAMETER_FREE_LOSSES
    if free and m.embedding_aggregation != "CUM_MEAN":
        raise ConfigError(f"model_config.embedding_aggregation: {m.embedding_loss_type} has no learnable scale or "
                          f"bias in its path, and {m.embedding_aggregation} would put one there; use CUM_MEAN")
    if m.embedding_var_coeff is None:
        return
    check_number("model_config.embedding_var_coeff", m.embedding_var_coeff, lambda v: v >= 0, ">= 0")
    if m.embedding_var_coeff and m.detach_type == "ENCODER_OUT" and (free or not m.use_ln_on_encoder_out):
        why = (f"{m.embedding_loss_type} reads the encoder output before encoder_out_ln" if free
               else "use_ln_on_encoder_out is False")
        raise ConfigError(f"model_config.embedding_var_coeff: with detach_type ENCODER_OUT no parameter reaches the "
                          f"encoder side ({why}), so the variance floor would train nothing; use detach_type NONE or "
                          "EMBEDDING")


def read(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file, or a run's saved config.json, locked, not yet validated
    (command-line overrides come first); anything wrong with the file itself is one ConfigError line
    naming it."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path or repr(path)}: no such file")
    if path.endswith(".json"):
        return _read_json(path)
    spec = importlib.util.spec_from_file_location("_aed_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise ConfigError("defines no get_config() function")
        c = module.get_config()
    except SyntaxError as e:
        raise ConfigError(f"{e.filename}, line {e.lineno}: syntax error: {e.msg}") from None
    except (Exception, SystemExit) as e:  # whatever the file's own code raised (or exit()): where, and what
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
                 if os.path.abspath(f.filename) == os.path.abspath(path)]
        where = f"{path}, line {lines[-1]}" if lines else path
        what = str(e) if isinstance(e, ConfigError) else \
            f"called sys.exit({e.code!r}) while loading" if isinstance(e, SystemExit) else \
            f"{type(e).__name__}: {errors.one_line(e)}"
        raise ConfigError(f"{where}: {what}") from None
    if not isinstance(c, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() returned a {type(c).__name__}, not a ConfigDict")
    c.lock()
    return c


def _read_json(path: str) -> ml_collections.ConfigDict:
    """A run's config.json (rundir writes it) on its model type's defaults: a key added since the run
    was recorded keeps its default; a key no config has is one line, as on the command line. Data, not
    code: nothing in it runs."""
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({errors.one_line(e)})") from None
    if not isinstance(saved, dict) or saved.get("model_type") not in MODEL_TYPES:
        raise ConfigError(f"{path}: not a run's config.json (a JSON object with model_type "
                          f"{' or '.join(map(repr, MODEL_TYPES))})")
    c = base_config(saved["model_type"])
    defaults = dict(leaves(c))
    for key, value in _flat(saved):
        if key not in defaults:
            raise ConfigError(f"{path}: unknown config key {key}")
        try:
            *parents, name = key.split(".")
            node = c
            for parent in parents:
                node = node[parent]
            node[name] = tuple(value) if isinstance(defaults[key], tuple) and isinstance(value, list) else value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: {key}: {errors.one_line(e)}") from None
    c.lock()
    return c


def _flat(d: dict, prefix: str = ""):
    """(dotted key, value) of every non-dict entry of a plain nested dict."""
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def load(path: str) -> ml_collections.ConfigDict:
    """`read(path)`, validated; any user error is one ConfigError line naming the file."""
    c = read(path)
    try:
        validate(c)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return c


def meanings() -> dict[str, str]:
    """Each key's meaning, e.g. {"model_config.n_embed": "D: embedding width"}: the comment closing
    its line in `base_config`, so a default and its meaning are written once, side by side; the task
    settings' from the task registry, which declares them with their defaults (aed_jax/tasks.py)."""
    prefixes = {"c": "", "m": "model_config.", "m.cross_attn_config": "model_config.cross_attn_config."}
    found = (re.match(r"\s*(c|m|m\.cross_attn_config)\.(\w+) = .*?  # (.*)", line)
             for line in inspect.getsource(base_config).splitlines())
    out = {prefixes[f[1]] + f[2]: f[3] for f in found if f}
    out["dataset"] += ": " + " | ".join(tasks.PREFIX + name for name in tasks.TASKS)  # a new task is listed too
    return out | {f"task.{key}": f"{name}: {setting.meaning}" for key, (name, setting) in tasks.settings().items()}


def describe(c: ml_collections.ConfigDict) -> str:
    """Every key of `c`, its value and its meaning, one a line in `base_config`'s order: what
    `--show_config` prints."""
    values = dict(leaves(c))
    rows = [("key", "value", "meaning")] + [(key, repr(values[key]), meaning)
                                            for key, meaning in meanings().items() if key in values]
    width = [max(len(row[i]) for row in rows) for i in (0, 1)]
    return "\n".join(f"{key:<{width[0]}}  {value:<{width[1]}}  {meaning}" for key, value, meaning in rows)


def leaves(c: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted key, value) of every non-dict entry of `c`."""
    for key, value in c.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


# An ensemble's members (`aed_jax.ensemble`) share every other key: their shapes, and so one compiled step.
# The host's keys seed each member's own initialisation, data stream and dropout, or set its schedule's
# rate, given to the step each step; the step's keys are per-member arrays inside the vmapped step.
ENSEMBLE_HOST_KEYS = ("random_seed", "lr", "min_lr", "warmup_iters", "lr_decay_iters", "decay_lr")
ENSEMBLE_STEP_KEYS = ("weight_decay", "beta1", "beta2", "model_config.embedding_loss_coeff")
ENSEMBLE_KEYS = ENSEMBLE_HOST_KEYS + ENSEMBLE_STEP_KEYS


def parse_members(items: list[str]) -> list[tuple[str, list[str]]]:
    """--members KEY=V1,V2,... (each flag one key, every key the same number of values, member k taking the
    k-th of each): [(dotted key, [value texts])]. A key is its dotted name or its last part
    (embedding_loss_coeff); only ENSEMBLE_KEYS. ConfigError (one line) for anything else."""
    by_leaf = {key.rsplit(".", 1)[-1]: key for key in ENSEMBLE_KEYS}
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = by_leaf.get(key.strip(), key.strip())
        texts = [t.strip() for t in text.split(",")]
        if not sep or not all(texts):
            raise ConfigError(f"--members {item}: give KEY=V1,V2,..., e.g. --members random_seed=1337,1338,1339")
        if key not in ENSEMBLE_KEYS:
            raise ConfigError(f"--members {item}: {key} is not a key an ensemble's members may differ in "
                              f"(one of {', '.join(by_leaf)}; every other key shapes the shared step)")
        if key in (k for k, _ in out):
            raise ConfigError(f"--members {item}: {key} is given twice")
        if out and len(texts) != len(out[0][1]):
            raise ConfigError(f"--members {item}: {len(texts)} values, but --members {out[0][0]} has "
                              f"{len(out[0][1])}: member k takes the k-th value of each key")
        out.append((key, texts))
    return out


def member_configs(c: ml_collections.ConfigDict, members: list[tuple[str, list[str]]]
                   ) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, config) of each member of `parse_members`' `members` on `c`, each validated. The name is the
    member's values, "random_seed=1338" or "lr=0.001,random_seed=1338": its folder under the ensemble's.
    ConfigError (one line) for a value of the wrong type, a bad member or two alike."""
    out = []
    for k in range(len(members[0][1])):
        m = c.copy_and_resolve_references()
        for key, texts in members:
            *parents, leaf = key.split(".")
            node = m
            for parent in parents:
                node = node[parent]
            if leaf not in node:
                raise ConfigError(f"--members {key}: a {c.model_type} config has no such key")
            node[leaf] = _parse_value(f"--members {key}", texts[k], node.get_type(leaf))
        name = ",".join(f"{key.rsplit('.', 1)[-1]}={texts[k]}" for key, texts in members)
        try:
            validate(m)
        except ConfigError as e:
            raise ConfigError(f"member {name}: {e}") from None
        if any(dict(leaves(m)) == dict(leaves(other)) for _, other in out):
            raise ConfigError(f"member {name}: the same run as another member")
        out.append((name.replace(os.sep, "_"), m))
    return out


def _parse_value(where: str, text: str, kind: type):
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ConfigError(f"{where}: {text!r} is not true or false")
        return text.lower() == "true"
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
