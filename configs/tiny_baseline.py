"""CPU quick start's decoder-only baseline: configs/tiny.py's width, depth and recipe without the AED.

The baseline at tiny's size: 64 wide, 4 heads and 4 blocks (tiny's 2 encoder + 2 decoder blocks),
64 tokens a window, trained exactly as tiny is (1,200 steps of 8 sequences, lr 3e-3 to 3e-4, the
same estimates). It is the `baseline` run of `experiments.reproduce --suite tiny`, and the run to
compare configs/tiny.py with in `aed_jax.analyze` (README, "Analysis"). 3,413,632 parameters
against the AED's 3,451,008 (`python -m aed_jax.summary --config=configs/tiny_baseline.py`).
"""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    recipes.tiny(c)
    return c
