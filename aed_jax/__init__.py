"""aed_jax: the Auto-regressive Encoder-Decoder Transformer (Yan, 2024) in JAX/Flax."""
