"""Seed run "pos sub": no embedding loss; the next positions' embeddings are subtracted before the output layer."""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    m.sub_pos_embed_to_decoder = "YES_NO_LN"
    recipes.cross_attention(m, 10)
    return c
