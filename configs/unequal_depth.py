"""Next step "unequal encoder and decoder depth": MSE + pos sub with 16 encoder and 10 decoder blocks (15,492,600 params).

The seed's "MSE + pos sub" run (configs/mse_pos_sub.py) with the same 26 blocks split 16/10
instead of 13/13. A decoder block (self-attention, cross-attention, feed-forward: 16*D^2 + 4*D)
is heavier than an encoder block (12*D^2 + 2*D), so moving three blocks to the encoder saves
3 * (360,600 - 270,300) = 270,900 parameters.

n_layer stays 13 and still sets the init of every residual_proj weight, N(0, 0.02/sqrt(2*13)), as
in the reference (docs/model.md, "Initialisation"): the depths change, the init scale does not.
"""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    recipes.mse_pos_sub(m)
    recipes.cross_attention(m, 10)
    m.n_layer_encoder = 16
    m.n_layer_decoder = 10
    return c
