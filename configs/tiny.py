"""CPU quick start: the MSE + pos-sub AED model, shrunk to train in about 4 minutes on 2 cores (4 min 2 s
on the project's 2-vCPU Xeon VM with nothing else running, 2026-12-04: the corpus prepared, the step
compiled and 1,200 steps trained, from an empty data folder and compilation cache).

What to expect: 1,200 steps of 8 x 64 tokens (614k tokens, two thirds of an epoch of the
built-in corpus) take val loss from 10.8 to 6.4360 at seed 1337 (6.4360-6.7109 over seeds 1337-1339,
an estimate over 10 batches; the whole val split 6.5224-6.5554: results/tiny-2026-12-04). A unigram
model scores about 7.4 there (not committed), so this is past word frequencies and
into word order: the greedy continuation is real words, repetitive ("the most city of the ...").

Why it looks like this: the tied 50,257 x 64 output layer and its softmax are nearly all of a
step, so the stacks cost little, and what is short is steps: a wider model (n_embed 128) gets
fewer of them and ends higher. Chunked cross-entropy (128 rows) keeps the softmax's buffers small
and is ~20% faster than the whole [512, V] logits on CPU. Learning rate 1.5e-3..3e-3 (higher ends
worse), batch 4..16 sequences at equal time, beta2 0.99 and embedding_loss_coeff 1 all land within
the seed-to-seed spread (about 0.1), so the seed's recipe stays.
"""
from aed_jax.config import base_config


def get_config():
    c = base_config("aed")
    m = c.model_config
    m.context_size = 64
    m.n_embed = 64
    m.n_head = 4
    m.n_layer = 2
    m.sub_pos_embed_to_decoder = "YES_NO_LN"
    m.use_ln_on_encoder_out = True
    m.embedding_loss_type = "MSE"
    m.detach_type = "ENCODER_OUT"
    m.embedding_loss_coeff = 8.0
    m.embedding_ln_type = "INIT"
    m.cross_attn_config.n_head = 8
    m.cross_attn_config.use_bias = False
    c.batch_size = 8
    c.gradient_accumulation_steps = 1
    c.train_steps = 1200
    c.lr = 0.003
    c.min_lr = 0.0003
    c.warmup_iters = 30
    c.lr_decay_iters = 1200
    c.ce_chunk_tokens = 128
    c.est_interval = 300
    c.est_steps = 10
    return c
