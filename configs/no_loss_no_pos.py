"""Seed run "no loss, no pos sub": AED without the embedding loss (15,763,200 params)."""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    recipes.no_loss_no_pos(m)
    recipes.cross_attention(m, 10)
    return c
