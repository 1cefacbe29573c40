"""Next step "Huber embedding loss": MSE + pos sub with the HUBER embedding loss (15,763,500 params).

The seed's "MSE + pos sub" run (configs/mse_pos_sub.py) with the squared error replaced by the
Huber loss (delta 1.0; mean over every element): quadratic for small differences, linear for
large ones. Same coefficient (8) and parameters.
"""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    c.model_config.update(dict(
        n_embed=150, n_head=5, n_layer=13, context_size=200, use_bias=False, dropout_rate=0.0,
        order_type="ORIGINAL", add_pos_embed_to_decoder=False, add_ln_before_decoder_ff=False,
        sub_pos_embed_to_decoder="YES_NO_LN",
        embedding_loss_type="HUBER", embedding_loss_coeff=8.0,
        use_ln_on_encoder_out=True, detach_type="ENCODER_OUT", embedding_ln_type="INIT",
    ))
    c.model_config.cross_attn_config.update(dict(n_head=10, use_bias=False))
    return c
