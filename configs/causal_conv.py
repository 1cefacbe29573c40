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
    c.model_config.update(dict(
        n_embed=150, n_head=5, n_layer=13, context_size=200, use_bias=False, dropout_rate=0.0,
        order_type="ORIGINAL", add_pos_embed_to_decoder=False, add_ln_before_decoder_ff=False,
        sub_pos_embed_to_decoder="YES_NO_LN",
        embedding_loss_type="MSE", embedding_loss_coeff=8.0,
        use_ln_on_encoder_out=True, detach_type="ENCODER_OUT", embedding_ln_type="INIT",
        embedding_aggregation="CAUSAL_CONV", embedding_aggregation_kernel_size=16,
    ))
    c.model_config.cross_attn_config.update(dict(n_head=10, use_bias=False))
    return c
