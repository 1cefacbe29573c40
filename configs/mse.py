"""Seed run "MSE embedding loss": coeff 1, no pos sub (15,763,500 params)."""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    recipes.embedding_loss(m, "MSE", 1.0)
    recipes.cross_attention(m, 10)
    return c
