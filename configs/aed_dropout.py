"""Next step "dropout for AED": MSE + pos sub with dropout_rate 0.2 (15,763,500 params).

The seed's "MSE + pos sub" run (configs/mse_pos_sub.py) with the rate of the seed's
"0.2 dropout baseline": dropout on the embeddings, the attention probabilities (self and cross)
and every residual output, in training mode only.
"""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    c.model_config.update(dict(
        n_embed=150, n_head=5, n_layer=13, context_size=200, use_bias=False, dropout_rate=0.2,
        order_type="ORIGINAL", add_pos_embed_to_decoder=False, add_ln_before_decoder_ff=False,
        sub_pos_embed_to_decoder="YES_NO_LN",
        embedding_loss_type="MSE", embedding_loss_coeff=8.0,
        use_ln_on_encoder_out=True, detach_type="ENCODER_OUT", embedding_ln_type="INIT",
    ))
    c.model_config.cross_attn_config.update(dict(n_head=10, use_bias=False))
    return c
