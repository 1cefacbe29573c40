"""Seed run "no loss, no pos sub": AED without the embedding loss (15,763,200 params)."""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    c.model_config.update(dict(
        n_embed=150, n_head=5, n_layer=13, context_size=200, use_bias=False, dropout_rate=0.0,
        order_type="ORIGINAL", add_pos_embed_to_decoder=False, add_ln_before_decoder_ff=False,
        sub_pos_embed_to_decoder="NO",
        embedding_loss_type="NONE", embedding_loss_coeff=None,
        use_ln_on_encoder_out=None, detach_type=None, embedding_ln_type=None,
    ))
    c.model_config.cross_attn_config.update(dict(n_head=10, use_bias=False))
    return c
