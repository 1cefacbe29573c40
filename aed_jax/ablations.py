"""Eval-time ablations: a trained model with one of its parts taken out, to measure what that part is worth.

`aed_jax.analyze` reports each as the change in cross-entropy (and embedding loss) against the intact
model on the same windows. An ablation changes the model's parameters (`ablated_params`), its
config (`ablated_config`), or an intermediate value through flax's `perturb` (`perturbations`): the
models add a "perturbations" collection to their input embeddings ("embeddings") and, AED, to the
encoder output ("encoder_out") when one is given, and nothing in every other call (training,
evaluation, decoding).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from aed_jax import model as model_lib

ABLATIONS = {
    "no_input_positions": "input positions zeroed: pos_emb(0..T-1) taken out of the embeddings the first block "
                          "sees (the subtracted next positions stay)",
    "no_pos_sub": "position subtraction off: the output is ln(d), as with sub_pos_embed_to_decoder = NO",
    "encoder_out_running_mean": "the encoder output replaced by the running mean of the input embeddings "
                                "(what the embedding loss asks it to track, before its LayerNorms)",
    "no_cross_attention": "the decoder's cross-attention removed (its output projection zeroed in every block)",
    "unit_ln_scales": "the embedding-loss LayerNorms' scales reset to 1 (the cross-entropy does not pass through "
                      "them: only the embedding loss changes)",
}


DECODER_SIDE = ("no_pos_sub", "no_cross_attention")  # after the encoder: the embedding loss stays as it is


def applicable(cfg: model_lib.ModelConfig) -> tuple[str, ...]:
    """The ablations that take something out of a model of `cfg`."""
    aed = cfg.model_type == "aed"
    which = {"no_input_positions": cfg.position_embedding_type == "LEARNED",
             "no_pos_sub": cfg.sub_pos_embed_to_decoder != "NO",
             "encoder_out_running_mean": aed, "no_cross_attention": aed,
             "unit_ln_scales": aed and cfg.embedding_loss_type != "NONE" and (
                 bool(cfg.use_ln_on_encoder_out) or cfg.embedding_ln_type not in (None, "NONE"))}
    return tuple(name for name in ABLATIONS if which[name])


def ablated_config(name: str, cfg: model_lib.ModelConfig) -> model_lib.ModelConfig:
    """The config of the model with `name` taken out (only position subtraction is a config change)."""
    return dataclasses.replace(cfg, sub_pos_embed_to_decoder="NO") if name == "no_pos_sub" else cfg


def ablated_params(name: str, cfg: model_lib.ModelConfig, params) -> dict:
    """The parameters (per-layer layout, `model.unstack_layers`) of the model with `name` taken out,
    for `ablated_config(name, cfg)`; the perturbations are `perturbations`'."""
    params = dict(params)
    if name == "no_pos_sub" and "positional_embedding" in params:  # the extra "next" row goes with it
        rows = ablated_config(name, cfg).pos_rows
        params["positional_embedding"] = {"embedding": params["positional_embedding"]["embedding"][:rows]}
    elif name == "no_cross_attention":
        for i in range(cfg.decoder_layers):
            block = dict(params[f"decoder_transformer_blocks_{i}"])
            cross = dict(block["cross_multi_attn_head"])
            cross["residual_proj"] = jax.tree_util.tree_map(jnp.zeros_like, cross["residual_proj"])
            block["cross_multi_attn_head"] = cross
            params[f"decoder_transformer_blocks_{i}"] = block
    elif name == "unit_ln_scales":
        for ln in model_lib.EMBEDDING_LNS:
            if ln in params:
                params[ln] = {**params[ln], "scale": jnp.ones_like(params[ln]["scale"])}
    return params


def perturbations(name: str, cfg: model_lib.ModelConfig, emb_BxTxD, enc_BxTxD=None, positions_TxD=None) -> dict:
    """The "perturbations" collection of ablation `name` for one batch: what is added to the input
    embeddings and (AED) to the encoder output, given the intact model's `emb_BxTxD` and `enc_BxTxD`
    and the input positions' embeddings `positions_TxD`."""
    zero = jnp.zeros_like(emb_BxTxD)
    out = {"embeddings": zero}
    if name == "no_input_positions":
        out["embeddings"] = zero - positions_TxD[None].astype(zero.dtype)
    if cfg.model_type == "aed":
        out["encoder_out"] = jnp.zeros_like(enc_BxTxD)
        if name == "encoder_out_running_mean":
            out["encoder_out"] = (model_lib.running_mean(emb_BxTxD) - enc_BxTxD).astype(enc_BxTxD.dtype)
    return out
