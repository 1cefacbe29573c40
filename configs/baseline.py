"""Seed run "baseline": decoder-only, 160 wide, 10 heads, 26 layers (16,036,800 params)."""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    recipes.seed_baseline(c.model_config)
    return c
