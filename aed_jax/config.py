"""Config schema: every default, the seed's key names, and validation with one-line errors.

The run configs in `configs/` start from `base_config(model_type)` and override what differs,
exactly as the seed's YAML files do. The dict is locked, so a misspelt key fails where it is set.
Enumerated options are the seed's enum names as strings (e.g. "YES_NO_LN").
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

MODEL_TYPES = ("aed", "baseline")
ORDER_TYPES = ("ORIGINAL", "ALT")
SUB_POS_EMBED_TYPES = ("NO", "YES_NO_LN", "YES_LN")
EMBEDDING_LOSS_TYPES = ("NONE", "MSE", "COSINE", "LOG_COSINE", "HUBER")
DETACH_TYPES = ("NONE", "EMBEDDING", "ENCODER_OUT")
EMBEDDING_LN_TYPES = ("NONE", "INIT", "AVG_CUM_SUM")
EMBEDDING_AGGREGATIONS = ("CUM_MEAN", "CAUSAL_CONV")
DTYPES = ("auto", "float32", "bfloat16")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
# The AED-only keys of model_config: absent from a baseline config.
AED_KEYS = (
    "order_type", "add_pos_embed_to_decoder", "use_ln_on_encoder_out", "add_ln_before_decoder_ff",
    "embedding_loss_type", "detach_type", "embedding_loss_coeff", "embedding_ln_type", "cross_attn_config",
    "n_layer_encoder", "n_layer_decoder", "embedding_aggregation", "embedding_aggregation_kernel_size",
)


class ConfigError(ValueError):
    """A user error in a config: the message is one line naming the key."""


def base_config(model_type: str = "aed") -> ml_collections.ConfigDict:
    """Every default; the training recipe is the seed's (SPEC.md, "Training recipe")."""
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type: {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    c = ml_collections.ConfigDict()
    c.model_type = model_type  # "aed" (encoder-decoder) or "baseline" (decoder-only GPT)

    m = c.model_config = ml_collections.ConfigDict()
    m.context_size = 200  # T: tokens per training window
    m.n_embed = 150  # D
    m.n_head = 5
    m.n_layer = 13  # blocks per stack (AED has n_layer encoder + n_layer decoder blocks)
    m.use_bias = False  # biases in Linear and LayerNorm
    m.dropout_rate = 0.0
    m.alphabet_size = 50257  # vocabulary size (GPT-2 BPE); the seed's name for it
    # NO | YES_NO_LN | YES_LN: subtract pos_emb(1..T) (the next positions) before the output layer.
    # The seed has it for AED; for the baseline it is one of the seed's "next steps".
    m.sub_pos_embed_to_decoder = "NO"
    if model_type == "aed":
        m.order_type = "ORIGINAL"  # ORIGINAL: self-attn then cross-attn; ALT: the reverse
        m.add_pos_embed_to_decoder = False  # add pos_emb(1..T) to the decoder input
        m.use_ln_on_encoder_out = config_dict.placeholder(bool)  # LN on enc before the embedding loss
        m.add_ln_before_decoder_ff = False  # LN before the encoder->decoder Linear
        m.embedding_loss_type = "NONE"  # NONE | MSE | COSINE | LOG_COSINE | HUBER
        m.detach_type = config_dict.placeholder(str)  # NONE | EMBEDDING | ENCODER_OUT
        m.embedding_loss_coeff = config_dict.placeholder(float)  # scale of the embedding loss
        m.embedding_ln_type = config_dict.placeholder(str)  # NONE | INIT | AVG_CUM_SUM
        m.cross_attn_config = ml_collections.ConfigDict()
        m.cross_attn_config.n_head = config_dict.placeholder(int)  # default 2 * n_head
        m.cross_attn_config.use_bias = config_dict.placeholder(bool)  # default use_bias
        # The seed's "next steps", all off by default:
        m.n_layer_encoder = config_dict.placeholder(int)  # encoder depth; default n_layer
        m.n_layer_decoder = config_dict.placeholder(int)  # decoder depth; default n_layer
        # What the encoder output is pulled towards: CUM_MEAN (the seed: running mean of the
        # embeddings) or CAUSAL_CONV (a learned causal depthwise convolution over them).
        m.embedding_aggregation = "CUM_MEAN"
        m.embedding_aggregation_kernel_size = 16  # CAUSAL_CONV window

    # Optimisation (names as in the seed's train configs).
    c.batch_size = 50  # sequences per micro-batch
    c.gradient_accumulation_steps = 16  # micro-batches per optimizer step
    # How the effective batch (batch_size * gradient_accumulation_steps sequences) is split for
    # compute; the update is the same. None: as large as fits on GPU, batch_size elsewhere.
    c.micro_batch_size = config_dict.placeholder(int)
    c.train_steps = 9000
    c.lr = 9e-4
    c.min_lr = 9e-5
    c.warmup_iters = 300
    c.lr_decay_iters = 700000
    c.decay_lr = True  # False: constant lr
    c.weight_decay = 0.1  # on parameters with ndim >= 2 only
    c.beta1 = 0.9
    c.beta2 = 0.95
    c.random_seed = 1337
    c.dtype = "auto"  # compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU) | float32 | bfloat16

    # Execution: how the same function is computed.
    c.attention_impl = "auto"  # auto (cuDNN flash attention on GPU, XLA elsewhere) | xla | cudnn
    c.ce_chunk_tokens = config_dict.placeholder(int)  # cross-entropy chunk; None: 8192 on GPU/TPU, whole on CPU; 0: whole
    c.scan_layers = False  # stack each stack's blocks with nn.scan: compile time flat in depth (stacked params)
    c.remat = False  # recompute block activations in the backward pass

    # Estimation, as the seed does it.
    c.est_interval = 500  # estimate every est_interval steps and at the last step
    c.est_steps = 200  # batches of train and of val per estimate

    # Data and outputs.
    c.dataset = "wiki_vital"  # the built-in corpus; prepared on first use if missing
    c.data_dir = config_dict.placeholder(str)  # folder of <dataset>_train.bin/_val.bin; default data/<dataset>
    c.workdir = config_dict.placeholder(str)  # default runs/<config file name>
    c.keep_checkpoints = 3  # most recent checkpoints kept (the best-val one is kept besides)
    c.log_interval = 10  # steps between training-metric log lines
    c.lock()
    return c


def check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (one line, naming the key) for any bad value; SPEC.md item 8."""
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
    if not 0.0 <= m.dropout_rate < 1.0:
        raise ConfigError(f"model_config.dropout_rate: must be in [0, 1), got {m.dropout_rate}")
    if c.model_type == "aed":
        _validate_aed(m)
    elif any(k in m for k in AED_KEYS):
        raise ConfigError(f"model_config: AED keys {[k for k in AED_KEYS if k in m]} set on a baseline config")
    for key in ("batch_size", "gradient_accumulation_steps", "train_steps", "est_interval", "est_steps",
                "keep_checkpoints", "log_interval"):
        if not isinstance(c[key], int) or c[key] <= 0:
            raise ConfigError(f"{key}: must be a positive integer, got {c[key]!r}")
    rows = c.batch_size * c.gradient_accumulation_steps
    if c.micro_batch_size is not None and (c.micro_batch_size <= 0 or rows % c.micro_batch_size):
        raise ConfigError(f"micro_batch_size: {c.micro_batch_size} does not divide batch_size * "
                          f"gradient_accumulation_steps = {rows}")
    if c.warmup_iters < 0 or c.lr_decay_iters <= c.warmup_iters:
        raise ConfigError(f"lr_decay_iters: must exceed warmup_iters >= 0, got {c.lr_decay_iters} <= {c.warmup_iters}")
    if c.lr <= 0 or c.min_lr < 0:
        raise ConfigError(f"lr: lr must be > 0 and min_lr >= 0, got lr={c.lr} min_lr={c.min_lr}")


def _validate_aed(m: ml_collections.ConfigDict) -> None:
    check_choice("model_config.order_type", m.order_type, ORDER_TYPES)
    check_choice("model_config.embedding_loss_type", m.embedding_loss_type, EMBEDDING_LOSS_TYPES)
    loss_keys = ("use_ln_on_encoder_out", "embedding_ln_type", "detach_type")
    if m.embedding_loss_type == "NONE":
        for key in loss_keys + ("embedding_loss_coeff",):
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
        if m.embedding_loss_coeff is not None and not m.embedding_loss_coeff > 0:
            raise ConfigError(f"model_config.embedding_loss_coeff: must be > 0, got {m.embedding_loss_coeff}")
    check_choice("model_config.embedding_aggregation", m.embedding_aggregation, EMBEDDING_AGGREGATIONS)
    for key in ("n_layer_encoder", "n_layer_decoder", "embedding_aggregation_kernel_size"):
        if m[key] is not None and m[key] <= 0:
            raise ConfigError(f"model_config.{key}: must be a positive integer, got {m[key]}")
    heads = m.cross_attn_config.n_head
    if heads is not None and (heads <= 0 or m.n_embed % heads):
        raise ConfigError(f"model_config.cross_attn_config.n_head: n_embed={m.n_embed} is not divisible by {heads}")


def load(path: str) -> ml_collections.ConfigDict:
    """Loads `get_config()` from a config file; any user error becomes one ConfigError line."""
    if not os.path.isfile(path):
        raise ConfigError(f"config: no such file {path!r}")
    spec = importlib.util.spec_from_file_location("_aed_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        c = module.get_config()
    except (AttributeError, TypeError, KeyError, ValueError) as e:
        raise ConfigError(f"{path}: {one_line(e)}") from None
    validate(c)
    return c


def one_line(e: BaseException) -> str:
    """An exception as one short line (ml_collections lists every other field; drop that)."""
    text = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
    text = text.split(" Other fields present")[0]
    return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text
