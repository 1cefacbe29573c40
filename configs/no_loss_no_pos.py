"""Seed run "no loss, no pos sub": AED without the embedding loss (15,763,200 params)."""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    m.cross_attn_config.n_head = 10
    m.cross_attn_config.use_bias = False
    return c
