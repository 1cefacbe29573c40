"""Parameters to and from the reference PyTorch implementation (yiphei/yif-AI), both ways: what
`python -m aed_jax.interop export|import` runs.

The npz holds float32 arrays keyed by the reference's state-dict names (docs/model.md, "Reference
state-dict names"), in PyTorch layouts: Linear weights are [out, in] (the transpose of a flax
kernel), LayerNorm and Embedding weights are flax's `scale` and `embedding`. `output_layer.weight`
is there too, equal to `token_embedding.weight` (the reference ties them). model.json is the
reference's model_config, its enums as the integer codes of its YAML files. On the PyTorch side:

    state = {k: torch.from_numpy(v) for k, v in np.load("model.npz").items()}
    model = AutoregressiveEncoderDecoderTransformer(ModelConfig(**json.load(open("model.json"))))
    model.load_state_dict(state)   # (TransformerModel for a baseline)

and a reference state dict saved the same way imports here. Import writes checkpoint 0 of a new
workdir (fresh optimizer state), which training resumes from and evaluate/sample read. A
model.json beside the npz, when present, must describe the same model as --config.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile

import jax
import ml_collections
import numpy as np

from aed_jax import api
from aed_jax import config as config_lib
from aed_jax import errors
from aed_jax import model as model_lib
from aed_jax import rundir

# The reference's model_config, declared once: the keys each of its models has, and the names each
# of its enum keys has, in code order (its YAML files write code = index + 1; our names are its own,
# but COSINE*). Everything else in our model_config is an option of ours, a key or a value: export
# and import check a run against this declaration (`check_in_reference`), so an option added to
# config.py is refused by name, never sent to the reference, without an edit here. Only an option
# the reference has is added here, in the reference's own order.
_BASELINE_KEYS = ("context_size", "n_embed", "n_head", "n_layer", "use_bias", "dropout_rate", "alphabet_size")
REFERENCE_KEYS = {
    "baseline": _BASELINE_KEYS,
    "aed": _BASELINE_KEYS + ("sub_pos_embed_to_decoder", "order_type", "add_pos_embed_to_decoder",
                             "use_ln_on_encoder_out", "add_ln_before_decoder_ff", "embedding_loss_type",
                             "detach_type", "embedding_loss_coeff", "embedding_ln_type", "cross_attn_config"),
}
ENUMS = {
    "order_type": ("ORIGINAL", "ALT"),
    "sub_pos_embed_to_decoder": ("NO", "YES_NO_LN", "YES_LN"),
    "embedding_loss_type": ("NONE", "MSE", "COSINE", "LOG_COSINE"),
    "detach_type": ("NONE", "EMBEDDING", "ENCODER_OUT"),
    "embedding_ln_type": ("NONE", "INIT", "AVG_CUM_SUM"),
}
_ALIASES = {"COSINE_SIM": "COSINE", "CONSINE_SIM": "COSINE", "LOG_COSINE_SIM": "LOG_COSINE"}
_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


class InteropError(errors.UserError):
    """A bad npz or config: the message is one line naming every offending key."""


def reference_name(path) -> str:
    """The reference's state-dict name of a flax parameter path (`transformer_blocks_3` -> `transformer_blocks.3`)."""
    keys = [k.key for k in path]
    modules = [re.sub(r"^((?:encoder_|decoder_)?transformer_blocks)_(\d+)$", r"\1.\2", m) for m in keys[:-1]]
    return ".".join(modules + [_LEAVES[keys[-1]]])


def _relayout(path, array):
    """float32, kernels transposed: flax Dense [in, out] <-> PyTorch Linear [out, in] (its own inverse)."""
    return np.asarray(array, np.float32).T if path[-1].key == "kernel" else np.asarray(array, np.float32)


def to_reference(params) -> dict[str, np.ndarray]:
    """flax params -> {reference name: float32 array in PyTorch layout}, output_layer.weight included."""
    arrays = {reference_name(path): _relayout(path, leaf)
              for path, leaf in jax.tree_util.tree_flatten_with_path(model_lib.unstack_layers(params))[0]}
    arrays["output_layer.weight"] = arrays["token_embedding.weight"]
    return arrays


def from_reference(arrays: dict[str, np.ndarray], cfg: model_lib.ModelConfig, source: str = "npz"):
    """{reference name: array} -> flax params for `cfg`; InteropError naming every missing, extra,
    mis-shaped or non-float key, or an output layer that is not the token embedding."""
    arrays = {k.removeprefix("_orig_mod."): v for k, v in arrays.items()}  # torch.compile's prefix
    arrays = {k: v for k, v in arrays.items() if not k.endswith(".tril")}  # the non-flash causal-mask buffer
    per_layer = dataclasses.replace(cfg, scan_layers=False)  # the reference's layout; stacked at the end
    template = per_layer.abstract_params()
    expected = {reference_name(path): (path, leaf.shape[::-1] if path[-1].key == "kernel" else leaf.shape)
                for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]}
    expected["output_layer.weight"] = (None, expected["token_embedding.weight"][1])
    problems = []
    if missing := sorted(set(expected) - set(arrays)):
        problems.append(f"missing keys {missing}")
    if extra := sorted(set(arrays) - set(expected)):
        problems.append(f"unexpected keys {extra}")
    if shapes := [f"{k} {tuple(arrays[k].shape)} (expected {tuple(expected[k][1])})" for k in sorted(expected)
                  if k in arrays and tuple(arrays[k].shape) != tuple(expected[k][1])]:
        problems.append(f"wrong shapes: {', '.join(shapes)}")
    if dtypes := [f"{k} {arrays[k].dtype}" for k in sorted(set(expected) & set(arrays)) if arrays[k].dtype.kind != "f"]:
        problems.append(f"not floating point: {', '.join(dtypes)}")
    if problems:
        raise InteropError(f"{source}: {'; '.join(problems)}")
    if not np.array_equal(arrays["output_layer.weight"], arrays["token_embedding.weight"]):
        raise InteropError(f"{source}: output_layer.weight differs from token_embedding.weight; the model ties them")
    params = jax.tree_util.tree_map_with_path(lambda path, _: _relayout(path, arrays[reference_name(path)]), template)
    return model_lib.stack_layers(params, cfg)


def check_in_reference(config: ml_collections.ConfigDict, use: str) -> None:
    """InteropError, one line naming every key and value, when the run's model uses an option the
    reference lacks by its declaration (REFERENCE_KEYS, ENUMS): a key of ours away from its default
    (the reference computes the default's model), or a value of an enum key that the reference has
    no code for. `use` ("export", "import") says what needs it."""
    theirs = REFERENCE_KEYS[config.model_type]
    defaults = dict(config_lib.leaves(config_lib.base_config(config.model_type).model_config))
    lacks = []
    for key, value in config_lib.leaves(config.model_config):
        if key.split(".")[0] not in theirs and value != defaults.get(key):
            lacks.append(f"no model_config.{key} {value!r} (an option of ours: {use} needs its default "
                         f"{defaults.get(key)!r})")
        elif key in ENUMS and value is not None and value not in ENUMS[key]:
            lacks.append(f"no model_config.{key} {value!r} ({use} needs one of {', '.join(ENUMS[key])})")
    if lacks:
        raise InteropError(f"the reference implementation has {'; '.join(lacks)}")


def reference_config(config: ml_collections.ConfigDict) -> dict:
    """The run's model_config under the reference's key names, enums as integer codes, and the
    cross-attention defaults made explicit; InteropError (`check_in_reference`) for an option it lacks."""
    check_in_reference(config, "export")
    cfg = model_lib.ModelConfig.from_config(config)
    out = {k: v for k, v in config.model_config.to_dict().items() if k in REFERENCE_KEYS[cfg.model_type]}
    for key, names in ENUMS.items():
        if out.get(key) is not None:
            out[key] = names.index(out[key]) + 1
    if cfg.model_type == "aed":
        out["cross_attn_config"] = {"n_head": cfg.cross_heads, "use_bias": cfg.cross_bias}
    return out


def model_config_from_reference(ref: dict, model_type: str) -> model_lib.ModelConfig:
    """The ModelConfig a reference model_config describes; enums as codes or names."""
    theirs = REFERENCE_KEYS[model_type]
    if unknown := sorted(set(ref) - set(theirs) - {"use_flash"}):  # use_flash changes no parameter
        raise InteropError(f"model_config keys {unknown} are not keys of the reference's {model_type} model")
    m = {}
    for key, value in ((k, v) for k, v in ref.items() if k in theirs):
        if key in ENUMS and value is not None:
            names = ENUMS[key]
            value = _ALIASES.get(value, value)
            if isinstance(value, int) and 1 <= value <= len(names):
                value = names[value - 1]
            elif value not in names:
                raise InteropError(f"model_config.{key}: {value!r} is neither a code 1..{len(names)} "
                                   f"nor one of {names}")
        m[key] = value
    cross = m.pop("cross_attn_config", None) or {}
    return model_lib.ModelConfig(model_type=model_type, cross_n_head=cross.get("n_head"),
                                 cross_use_bias=cross.get("use_bias"), **m)


def _architecture(cfg: model_lib.ModelConfig) -> dict:
    """What defines the model, with the defaults of cross_attn_config and the loss coefficient resolved."""
    skip = ("dtype", *config_lib.MODEL_EXECUTION_KEYS, "cross_n_head", "cross_use_bias", "embedding_loss_coeff")
    out = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k not in skip}
    if cfg.model_type == "aed":
        out.update(cross_heads=cfg.cross_heads, cross_bias=cfg.cross_bias,
                   loss_coeff=cfg.loss_coeff if cfg.embedding_loss_type != "NONE" else None)
    return out


def export(workdir: str, out: str, checkpoint: str = "latest") -> tuple[str, str]:
    """Writes `out` (the npz) and the model_config JSON beside it; returns both paths."""
    params, config, _ = rundir.restore_params(workdir, checkpoint)
    reference = reference_config(config)  # refuses options the reference lacks before writing anything
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with rundir.atomic_file(out, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
        np.savez(f, **to_reference(params))
    json_path = os.path.splitext(out)[0] + ".json"
    rundir.write_atomic(json_path, json.dumps(reference, indent=2))
    return out, json_path


def load_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise InteropError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, ValueError, AttributeError, OSError) as e:
        raise InteropError(f"{path}: not an npz archive of arrays ({errors.one_line(e)})") from None


def import_npz(npz: str, config: ml_collections.ConfigDict, workdir: str) -> None:
    """Checks the npz (and the JSON beside it, if any) against `config`, then writes checkpoint 0 of `workdir`."""
    check_in_reference(config, "import")
    cfg = model_lib.ModelConfig.from_config(config)
    json_path = os.path.splitext(npz)[0] + ".json"
    if os.path.isfile(json_path):
        try:
            with open(json_path, encoding="utf-8") as f:
                ref = json.load(f)
        except (OSError, ValueError) as e:
            raise InteropError(f"{json_path}: unreadable ({errors.one_line(e)}); fix or remove it (it only checks "
                               "that the npz is the config's model)") from None
        if not isinstance(ref, dict):
            raise InteropError(f"{json_path}: not a JSON object of model_config keys")
        theirs = model_config_from_reference(ref, cfg.model_type)
        ours = _architecture(cfg)
        if differ := [f"{k} ({v!r} there, {ours[k]!r} here)" for k, v in _architecture(theirs).items() if ours[k] != v]:
            raise InteropError(f"{json_path} and the config disagree on {', '.join(differ)}")
    params = from_reference(load_npz(npz), cfg, npz)
    latest = os.path.join(workdir, rundir.CHECKPOINTS)
    if os.path.isdir(latest) and os.listdir(latest):
        raise InteropError(f"workdir {workdir!r} already has checkpoints; import into a new folder")
    config = ml_collections.ConfigDict(config.to_dict())
    config.workdir = workdir
    api.save_params(workdir, params, config, step=0)
