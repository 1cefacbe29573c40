"""Seed run "0.2 dropout baseline": the baseline with dropout_rate 0.2."""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    m = c.model_config
    recipes.seed_baseline(m)
    m.dropout_rate = 0.2
    return c
