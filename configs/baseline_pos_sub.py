"""Next step "positional-embedding subtraction for the baseline": the baseline with YES_NO_LN (16,036,800 params).

The seed's baseline (configs/baseline.py) with the AED's pos sub: the positional table gets
T+1 rows and the output is ln(x) - pos_emb(1..T) before the tied output layer. YES_NO_LN adds
no parameter to the count (the positional table is excluded from it).
"""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    m = c.model_config
    recipes.seed_baseline(m)
    m.sub_pos_embed_to_decoder = "YES_NO_LN"
    return c
