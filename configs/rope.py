"""RoPE + MSE + pos sub: configs/mse_pos_sub.py with rotary position embeddings (15,763,500 params).

Every self- and cross-attention turns its queries and keys by their positions; there is no table
added to the input, so the embedding loss pulls the encoder towards the running mean of the token
embeddings alone. Position subtraction subtracts a learned table of "next position" vectors (T rows,
initialised like the seed's table, not counted, as the seed's table is not). The cross-attention
heads of 15 features turn their first 14 (pairs); the self-attention heads of 30 all of theirs.
"""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    m.sub_pos_embed_to_decoder = "YES_NO_LN"
    m.position_embedding_type = "ROPE"
    m.use_ln_on_encoder_out = True
    m.embedding_loss_type = "MSE"
    m.detach_type = "ENCODER_OUT"
    m.embedding_loss_coeff = 8.0
    m.embedding_ln_type = "INIT"
    m.cross_attn_config.n_head = 10
    m.cross_attn_config.use_bias = False
    return c
