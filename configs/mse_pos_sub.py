"""Seed run "MSE + pos sub": MSE embedding loss with coeff 8 and YES_NO_LN (15,763,500 params)."""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    recipes.mse_pos_sub(m)
    recipes.cross_attention(m, 10)
    return c
