"""The parameter table of `python -m aed_jax.summary`: its row order."""
import os

from aed_jax import config as config_lib
from aed_jax import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_numbered_blocks_are_listed_in_numeric_order():
    text = summary.summarize(config_lib.load(os.path.join(ROOT, "configs", "unequal_depth.py")))
    names = [line.split()[0] for line in text.splitlines()[2:-1]]
    encoder = [n for n in names if n.startswith("encoder_transformer_blocks_")]
    assert encoder == [f"encoder_transformer_blocks_{i}" for i in range(16)]  # as text, _10 would follow _1
    assert names.index("decoder_transformer_blocks_9") < names.index("embeddings_ln")
