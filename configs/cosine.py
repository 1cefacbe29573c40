"""Seed run "cosine embedding loss": coeff 1, no pos sub (15,763,500 params)."""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    m.use_ln_on_encoder_out = True
    m.embedding_loss_type = "COSINE"
    m.detach_type = "ENCODER_OUT"
    m.embedding_loss_coeff = 1.0
    m.embedding_ln_type = "INIT"
    m.cross_attn_config.n_head = 10
    m.cross_attn_config.use_bias = False
    return c
