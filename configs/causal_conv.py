"""Next step "learned aggregation": MSE + pos sub with a causal depthwise convolution, kernel 16 (15,766,050 params).

The seed's "MSE + pos sub" run (configs/mse_pos_sub.py) with the cumulative mean of the
embeddings replaced by a learned causal depthwise convolution (`embedding_aggregation`, one
16-tap filter and a bias per feature, initialised to 1/16 and 0): position t is pulled towards
a learned mix of the embeddings at t-15..t (zeros before position 0). It adds 16*150 + 150 =
2,550 parameters to the seed's 15,763,500.
"""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    recipes.mse_pos_sub(m)
    recipes.cross_attention(m, 10)
    m.embedding_aggregation = "CAUSAL_CONV"
    return c
