"""Seed run "smaller baseline": decoder-only, 156 wide, 12 heads, 26 layers (15,441,192 params)."""
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    m = c.model_config
    m.n_embed = 156
    m.n_head = 12
    m.n_layer = 26
    return c
