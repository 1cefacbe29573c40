"""AED at GPT-2 small width: 768 wide, 6 encoder + 6 decoder layers (the baseline's 12), 12 heads,
context 1024, MSE embedding loss + position subtraction as in mse_pos_sub.py (138,309,120 params).

The recipe, execution and mesh of gpt2_small_baseline.py, the decoder-only model it is compared
with; the cross-attention adds its parameters and FLOPs on top of an equal depth, as the seed's
pairs do. Meant for a real corpus and one or more GPUs (see gpt2_small_baseline.py).
"""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    recipes.gpt2(c, "small")
    recipes.mse_pos_sub(c.model_config)
    return c
