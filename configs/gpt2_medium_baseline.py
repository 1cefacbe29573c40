"""GPT-2 medium decoder-only baseline: 1024 wide, 24 layers, 16 heads, context 1024 (353,503,232 params).

The seed's "try bigger models, at least GPT-2 size", with nanoGPT's GPT-2 recipe (524,288 tokens a
step, lr 3e-4, 2,000 warmup steps) cut to 20,000 steps (10.5B tokens). Meant for a real corpus
(python -m aed_jax.prepare --hf ...; --config.dataset=NAME) and one or more GPUs: the layers are
scanned and rematerialised, and parameters and AdamW moments are sharded over every device (mesh_fsdp
-1); on a cluster, set --config.mesh_data to the number of hosts so that the shards stay within a host.
Compare with gpt2_medium.py, the AED of the same width and total depth.
"""
from aed_jax import recipes
from aed_jax.config import base_config


def get_config():
    c = base_config("baseline")
    recipes.gpt2(c, "medium")
    return c
