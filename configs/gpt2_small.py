"""AED at GPT-2 small width: 768 wide, 6 encoder + 6 decoder layers (the baseline's 12), 12 heads,
context 1024, MSE embedding loss + position subtraction as in mse_pos_sub.py (138,309,120 params).

The recipe, execution and mesh of gpt2_small_baseline.py, the decoder-only model it is compared
with; the cross-attention adds its parameters and FLOPs on top of an equal depth, as the seed's
pairs do. Meant for a real corpus and one or more GPUs (see gpt2_small_baseline.py).
"""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    m.context_size = 1024
    m.n_embed = 768
    m.n_head = 12
    m.n_layer = 6
    m.sub_pos_embed_to_decoder = "YES_NO_LN"
    m.use_ln_on_encoder_out = True
    m.embedding_loss_type = "MSE"
    m.detach_type = "ENCODER_OUT"
    m.embedding_loss_coeff = 8.0
    m.embedding_ln_type = "INIT"
    c.batch_size = 16
    c.gradient_accumulation_steps = 32
    c.train_steps = 20000
    c.lr = 0.0006
    c.min_lr = 6e-05
    c.warmup_iters = 2000
    c.lr_decay_iters = 20000
    c.scan_layers = True
    c.remat = True
    c.mesh_data = 1
    c.mesh_fsdp = -1
    c.est_interval = 1000
    c.est_steps = 50
    return c
