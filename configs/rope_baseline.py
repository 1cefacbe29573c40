"""RoPE baseline: configs/baseline.py (decoder-only, 160 wide, 10 heads, 26 layers) with rotary
position embeddings instead of the learned table (16,036,800 params; no positional parameters)."""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    m = c.model_config
    recipes.seed_baseline(m)
    m.position_embedding_type = "ROPE"
    return c
