"""Seed run "smaller baseline": decoder-only, 156 wide, 12 heads, 26 layers (15,441,192 params)."""
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    c.model_config.n_embed = 156
    c.model_config.n_head = 12
    c.model_config.n_layer = 26
    return c
