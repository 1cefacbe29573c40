"""Next step "Huber embedding loss": MSE + pos sub with the HUBER embedding loss (15,763,500 params).

The seed's "MSE + pos sub" run (configs/mse_pos_sub.py) with the squared error replaced by the
Huber loss (delta 1.0; mean over every element): quadratic for small differences, linear for
large ones. Same coefficient (8) and parameters.
"""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    recipes.mse_pos_sub(m)
    recipes.cross_attention(m, 10)
    m.embedding_loss_type = "HUBER"
    return c
