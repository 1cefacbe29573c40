"""AED at GPT-2 medium width: 1024 wide, 12 encoder + 12 decoder layers (the baseline's 24), 16 heads,
context 1024, MSE embedding loss + position subtraction as in mse_pos_sub.py (404,912,128 params).

The recipe, execution and mesh of gpt2_medium_baseline.py, the decoder-only model it is compared
with; the cross-attention adds its parameters and FLOPs on top of an equal depth, as the seed's
pairs do. Meant for a real corpus and one or more GPUs (see gpt2_medium_baseline.py).
"""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    recipes.gpt2(c, "medium")
    recipes.mse_pos_sub(c.model_config)
    return c
