import numpy as np
from aed_jax import tasks
from aed_jax.config import base_config

def cfg(T=16, N=4, V=32, model_type="baseline", D=64, H=1, L=2):
    c = base_config(model_type)
    c.dataset = "task:mqar"
    m = c.model_config
    m.context_size, m.alphabet_size, m.n_embed, m.n_head, m.n_layer = T, V, D, H, L
    c.task.num_kv_pairs = N
    c.task.random_non_queries = 0
    return c
