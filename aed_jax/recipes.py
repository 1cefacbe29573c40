"""The config families: each block of keys that several run configs share, written once.

A config file in `configs/` is `base_config(model_type)` plus what differs; where several of them
differ from it in the same way (the seed's MSE + pos sub, its AED's cross-attention, the GPT-2 pair's
recipe), the file calls the function here that sets that block, then writes its own keys. Each
function sets keys by the seed's names on the dict it is given, adds none (the dict is locked) and
validates nothing: `config.load` validates the whole config, as for any file.
`experiments/suites.py` builds its variants with the same functions, so a suite's run and the file
it stands for cannot drift apart.
"""
from __future__ import annotations

import ml_collections

ConfigDict = ml_collections.ConfigDict


def embedding_loss(m: ConfigDict, loss_type: str, coeff: float) -> None:
    """The seed's embedding loss of type `loss_type` at weight `coeff`: the encoder output, after its
    LayerNorm, against the LayerNorm'd running mean of the embeddings (INIT), the encoder side detached."""
    m.use_ln_on_encoder_out = True
    m.embedding_loss_type = loss_type
    m.detach_type = "ENCODER_OUT"
    m.embedding_loss_coeff = coeff
    m.embedding_ln_type = "INIT"


def mse_pos_sub(m: ConfigDict) -> None:
    """The seed's "MSE + pos sub" (configs/mse_pos_sub.py): the MSE embedding loss with coeff 8 and the
    next positions' embeddings subtracted before the output layer (YES_NO_LN). Its variants change
    a key after it (huber.py: the loss type)."""
    m.sub_pos_embed_to_decoder = "YES_NO_LN"
    embedding_loss(m, "MSE", 8.0)


def no_loss_no_pos(m: ConfigDict) -> None:
    """The seed's "no loss, no pos sub" (configs/no_loss_no_pos.py): no embedding loss and no position
    subtraction, their keys back at base_config's defaults (unset), so it undoes `mse_pos_sub`."""
    m.sub_pos_embed_to_decoder = "NO"
    m.embedding_loss_type = "NONE"
    m.embedding_loss_coeff = None
    m.use_ln_on_encoder_out = None
    m.detach_type = None
    m.embedding_ln_type = None


def cross_attention(m: ConfigDict, n_head: int) -> None:
    """The seed's AED cross-attention: `n_head` heads, no biases (the seed's AEDs: 10 heads of 15 at width 150)."""
    m.cross_attn_config.n_head = n_head
    m.cross_attn_config.use_bias = False


def seed_baseline(m: ConfigDict) -> None:
    """The seed's decoder-only baseline shape: 160 wide, 10 heads, 26 layers (16,036,800 params), a little
    above the AED's 15,763,500."""
    m.n_embed = 160
    m.n_head = 10
    m.n_layer = 26


def tiny(c: ConfigDict) -> None:
    """The CPU quick start's size and recipe (configs/tiny.py, whose docstring says why): 64 wide, 4 heads,
    64-token windows, 4 blocks in all (the AED's 2 encoder + 2 decoder, the baseline's 4); 1,200 steps of 8
    sequences, lr 3e-3 to 3e-4 after 30 steps of warmup, an estimate of 10 batches every 300 steps."""
    m = c.model_config
    m.context_size = 64
    m.n_embed = 64
    m.n_head = 4
    m.n_layer = 2 if c.model_type == "aed" else 4
    c.update(dict(batch_size=8, gradient_accumulation_steps=1, train_steps=1200, lr=0.003, min_lr=0.0003,
                  warmup_iters=30, lr_decay_iters=1200, est_interval=300, est_steps=10))


# GPT-2's sizes: width, heads, the decoder-only model's depth, and nanoGPT's peak and final rates for it.
GPT2_SIZES = {
    "small": dict(n_embed=768, n_head=12, depth=12, lr=0.0006, min_lr=6e-05),
    "medium": dict(n_embed=1024, n_head=16, depth=24, lr=0.0003, min_lr=3e-05),
}


def gpt2(c: ConfigDict, size: str) -> None:
    """GPT-2 `size` ("small" or "medium", GPT2_SIZES) with nanoGPT's recipe cut to 20,000 steps: context
    1024, 524,288 tokens a step (16 x 32 x 1024), 2,000 warmup steps, an estimate of 50 batches every
    1,000 steps; layers scanned and rematerialised, parameters and AdamW moments sharded over every device
    (mesh_fsdp -1). The decoder-only model has GPT-2's depth; the AED the same total depth, half of it in
    each stack, so that the cross-attention adds its parameters on top of an equal depth, as in the seed's
    pairs."""
    s = GPT2_SIZES[size]
    m = c.model_config
    m.context_size = 1024
    m.n_embed = s["n_embed"]
    m.n_head = s["n_head"]
    m.n_layer = s["depth"] // 2 if c.model_type == "aed" else s["depth"]
    c.update(dict(batch_size=16, gradient_accumulation_steps=32, train_steps=20000, lr=s["lr"], min_lr=s["min_lr"],
                  warmup_iters=2000, lr_decay_iters=20000, scan_layers=True, remat=True, mesh_data=1, mesh_fsdp=-1,
                  est_interval=1000, est_steps=50))
