"""Seed run "pos sub": no embedding loss; the next positions' embeddings are subtracted before the output layer."""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    c.model_config.update(dict(
        n_embed=150, n_head=5, n_layer=13, context_size=200, use_bias=False, dropout_rate=0.0,
        order_type="ORIGINAL", add_pos_embed_to_decoder=False, add_ln_before_decoder_ff=False,
        sub_pos_embed_to_decoder="YES_NO_LN",
        embedding_loss_type="NONE", embedding_loss_coeff=None,
        use_ln_on_encoder_out=None, detach_type=None, embedding_ln_type=None,
    ))
    c.model_config.cross_attn_config.update(dict(n_head=10, use_bias=False))
    return c
