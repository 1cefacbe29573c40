"""AED at GPT-2 small width: 768 wide, 6 encoder + 6 decoder layers (the baseline's 12), 12 heads,
context 1024, MSE embedding loss + position subtraction as in mse_pos_sub.py (138,309,120 params).

The recipe, execution and mesh of gpt2_small_baseline.py, the decoder-only model it is compared
with; the cross-attention adds its parameters and FLOPs on top of an equal depth, as the seed's
pairs do. Meant for a real corpus and one or more GPUs (see gpt2_small_baseline.py).
"""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    c.model_config.update(dict(
        n_embed=768, n_head=12, n_layer=6, context_size=1024, sub_pos_embed_to_decoder="YES_NO_LN",
        embedding_loss_type="MSE", embedding_loss_coeff=8.0, use_ln_on_encoder_out=True, detach_type="ENCODER_OUT",
        embedding_ln_type="INIT"))
    c.update(dict(batch_size=16, gradient_accumulation_steps=32, train_steps=20000, lr=6e-4, min_lr=6e-5,
                  warmup_iters=2000, lr_decay_iters=20000, est_interval=1000, est_steps=50, scan_layers=True,
                  remat=True, mesh_data=1, mesh_fsdp=-1))
    return c
