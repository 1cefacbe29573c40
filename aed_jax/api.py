"""For notebooks: one call loads a run's checkpoint.

    from aed_jax import api, decoding
    model, params, config, enc = api.load("runs/tiny")           # or api.load(dir, "best") / step
    logits_BxTxV, _ = model.apply({"params": params}, tokens_BxT)
    out = decoding.generate(model, params, decoding.encode_prompt("Paris is", 50257)[None], 20, greedy=True)
    print(enc.decode(out[0].tolist()))
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import tiktoken

from aed_jax import checkpoint as checkpoint_lib
from aed_jax import model as model_lib
from aed_jax import rundir
from aed_jax import tokenizer as tokenizer_lib


def load(workdir: str, checkpoint: str | int = "latest", dtype=None
         ) -> tuple[model_lib.AED | model_lib.GPT, dict, ml_collections.ConfigDict, tiktoken.Encoding]:
    """(model, params, config, tokenizer) from `<workdir>`'s "latest", "best" or numbered checkpoint.

    Only the parameters are used (no optimizer), put on the default device, so a checkpoint saved
    on any number of devices loads here. `dtype` is the model's compute dtype (default: the run
config's, as the trainer resolves it). Raises
    checkpoint.CheckpointError (one line) for a missing workdir, checkpoint or step, and for a
    damaged checkpoint (naming the intact steps).
    """
    params, config, _ = rundir.restore_params(workdir, checkpoint)
    cfg = model_lib.ModelConfig.from_config(config).for_inference()
    model = model_lib.make_model(cfg if dtype is None else dataclasses.replace(cfg, dtype=dtype))
    return model, jax.device_put(params), config, tokenizer_lib.get_encoding()


def save_params(workdir: str, params, config: ml_collections.ConfigDict, step: int = 0) -> None:
    """Writes `params` as checkpoint `step` of `<workdir>`, with a fresh optimizer state, in the
    trainer's layout: the trainer resumes from it, and load(), evaluate and sample read it."""
    from aed_jax import optim  # only writing needs the optimizer

    params = jax.tree_util.tree_map(jnp.asarray, params)
    opt_state = optim.make_optimizer(config).init(params)
    state = {"step": jnp.asarray(step, jnp.int32), "params": params, "opt_state": opt_state}
    checkpoint_lib.save(rundir.checkpoints(workdir), step, state, config)
