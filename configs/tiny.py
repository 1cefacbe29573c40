"""CPU quick start: the MSE + pos-sub AED model, shrunk to train in about two minutes on 2 cores.

The vocabulary stays GPT-2's, so the tied 50,257-row matrix dominates the parameters; the
stacks are shallow and the context short so a few hundred steps fit the budget.
"""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    c.model_config.update(dict(
        n_embed=64, n_head=4, n_layer=2, context_size=64, use_bias=False, dropout_rate=0.0,
        order_type="ORIGINAL", add_pos_embed_to_decoder=False, add_ln_before_decoder_ff=False,
        sub_pos_embed_to_decoder="YES_NO_LN",
        embedding_loss_type="MSE", embedding_loss_coeff=8.0,
        use_ln_on_encoder_out=True, detach_type="ENCODER_OUT", embedding_ln_type="INIT",
    ))
    c.model_config.cross_attn_config.update(dict(n_head=8, use_bias=False))
    c.batch_size = 8
    c.gradient_accumulation_steps = 1
    c.train_steps = 300
    c.lr = 3e-3
    c.min_lr = 3e-4
    c.warmup_iters = 30
    c.lr_decay_iters = 300
    c.est_interval = 100
    c.est_steps = 10
    return c
