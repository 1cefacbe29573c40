"""Next step "dropout for AED": MSE + pos sub with dropout_rate 0.2 (15,763,500 params).

The seed's "MSE + pos sub" run (configs/mse_pos_sub.py) with the rate of the seed's
"0.2 dropout baseline": dropout on the embeddings, the attention probabilities (self and cross)
and every residual output, in training mode only.
"""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    recipes.mse_pos_sub(m)
    recipes.cross_attention(m, 10)
    m.dropout_rate = 0.2
    return c
