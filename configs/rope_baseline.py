"""RoPE baseline: configs/baseline.py (decoder-only, 160 wide, 10 heads, 26 layers) with rotary
position embeddings instead of the learned table (16,036,800 params; no positional parameters)."""
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    m = c.model_config
    m.n_embed = 160
    m.n_head = 10
    m.n_layer = 26
    m.position_embedding_type = "ROPE"
    return c
