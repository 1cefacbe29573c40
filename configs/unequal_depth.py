"""Next step "unequal encoder and decoder depth": MSE + pos sub with 16 encoder and 10 decoder blocks (15,492,600 params).

The seed's "MSE + pos sub" run (configs/mse_pos_sub.py) with the same 26 blocks split 16/10
instead of 13/13. A decoder block (self-attention, cross-attention, feed-forward: 16*D^2 + 4*D)
is heavier than an encoder block (12*D^2 + 2*D), so moving three blocks to the encoder saves
3 * (360,600 - 270,300) = 270,900 parameters.

n_layer stays 13 and still sets the init of every residual_proj weight, N(0, 0.02/sqrt(2*13)), as
in the reference (docs/model.md, "Initialisation"): the depths change, the init scale does not.
"""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    c.model_config.update(dict(
        n_embed=150, n_head=5, n_layer=13, context_size=200, use_bias=False, dropout_rate=0.0,
        n_layer_encoder=16, n_layer_decoder=10,
        order_type="ORIGINAL", add_pos_embed_to_decoder=False, add_ln_before_decoder_ff=False,
        sub_pos_embed_to_decoder="YES_NO_LN",
        embedding_loss_type="MSE", embedding_loss_coeff=8.0,
        use_ln_on_encoder_out=True, detach_type="ENCODER_OUT", embedding_ln_type="INIT",
        embedding_aggregation="CUM_MEAN",
    ))
    c.model_config.cross_attn_config.update(dict(n_head=10, use_bias=False))
    return c
