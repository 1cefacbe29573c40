"""Next step "learned aggregation": MSE + pos sub with a causal depthwise convolution, kernel 16 (15,766,050 params).

The seed's "MSE + pos sub" run (configs/mse_pos_sub.py) with the cumulative mean of the
embeddings replaced by a learned causal depthwise convolution (`embedding_aggregation`, one
16-tap filter and a bias per feature, initialised to 1/16 and 0): position t is pulled towards
a learned mix of the embeddings at t-15..t (zeros before position 0). It adds 16*150 + 150 =
2,550 parameters to the seed's 15,763,500.
"""
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
    m.embedding_aggregation = "CAUSAL_CONV"
    return c
