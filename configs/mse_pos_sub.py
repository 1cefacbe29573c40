"""Seed run "MSE + pos sub": MSE embedding loss with coeff 8 and YES_NO_LN (15,763,500 params)."""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    m.sub_pos_embed_to_decoder = "YES_NO_LN"
    m.use_ln_on_encoder_out = True
    m.embedding_loss_type = "MSE"
    m.detach_type = "ENCODER_OUT"
    m.embedding_loss_coeff = 8.0
    m.embedding_ln_type = "INIT"
    m.cross_attn_config.n_head = 10
    m.cross_attn_config.use_bias = False
    return c
