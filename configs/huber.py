"""Next step "Huber embedding loss": MSE + pos sub with the HUBER embedding loss (15,763,500 params).

The seed's "MSE + pos sub" run (configs/mse_pos_sub.py) with the squared error replaced by the
Huber loss (delta 1.0; mean over every element): quadratic for small differences, linear for
large ones. Same coefficient (8) and parameters.
"""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    m.sub_pos_embed_to_decoder = "YES_NO_LN"
    m.use_ln_on_encoder_out = True
    m.embedding_loss_type = "HUBER"
    m.detach_type = "ENCODER_OUT"
    m.embedding_loss_coeff = 8.0
    m.embedding_ln_type = "INIT"
    m.cross_attn_config.n_head = 10
    m.cross_attn_config.use_bias = False
    return c
