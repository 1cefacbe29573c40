"""Next step "dropout for AED": MSE + pos sub with dropout_rate 0.2 (15,763,500 params).

The seed's "MSE + pos sub" run (configs/mse_pos_sub.py) with the rate of the seed's
"0.2 dropout baseline": dropout on the embeddings, the attention probabilities (self and cross)
and every residual output, in training mode only.
"""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    m.dropout_rate = 0.2
    m.sub_pos_embed_to_decoder = "YES_NO_LN"
    m.use_ln_on_encoder_out = True
    m.embedding_loss_type = "MSE"
    m.detach_type = "ENCODER_OUT"
    m.embedding_loss_coeff = 8.0
    m.embedding_ln_type = "INIT"
    m.cross_attn_config.n_head = 10
    m.cross_attn_config.use_bias = False
    return c
