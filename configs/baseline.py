"""Seed run "baseline": decoder-only, 160 wide, 10 heads, 26 layers (16,036,800 params)."""
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    m = c.model_config
    m.n_embed = 160
    m.n_head = 10
    m.n_layer = 26
    return c
