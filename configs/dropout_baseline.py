"""Seed run "0.2 dropout baseline": the baseline with dropout_rate 0.2."""
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    c.model_config.n_embed = 160
    c.model_config.n_head = 10
    c.model_config.n_layer = 26
    c.model_config.dropout_rate = 0.2
    return c
