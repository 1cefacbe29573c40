"""RoPE + MSE + pos sub: configs/mse_pos_sub.py with rotary position embeddings (15,763,500 params).

Every self- and cross-attention turns its queries and keys by their positions; there is no table
added to the input, so the embedding loss pulls the encoder towards the running mean of the token
embeddings alone. Position subtraction subtracts a learned table of "next position" vectors (T rows,
initialised like the seed's table, not counted, as the seed's table is not). The cross-attention
heads of 15 features turn their first 14 (pairs); the self-attention heads of 30 all of theirs.
"""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    recipes.mse_pos_sub(m)
    recipes.cross_attention(m, 10)
    m.position_embedding_type = "ROPE"
    return c
