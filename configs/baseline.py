"""Seed run "baseline": decoder-only, 160 wide, 10 heads, 26 layers (16,036,800 params)."""
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    c.model_config.n_embed = 160
    c.model_config.n_head = 10
    c.model_config.n_layer = 26
    return c
