"""`python -m aed_jax.sample --workdir DIR --prompt "text"`: text from a checkpoint, with a KV cache.

The decoding itself, one compiled program for the whole generation, is `decoding.py`'s.
`--benchmark` times that program, the per-token loop and the uncached path, at batch 1 and 8, and
prints tokens/s.
"""
from __future__ import annotations

if __name__ == "__main__":  # a signal, from the first line on: one line, exit 1
    from aed_jax import stopping
    stopping.exit_on_signals("error: sample was stopped by {signal}; nothing was written")

# Only what the flags need: jax and the libraries on it load in `main`, once the flags are parsed, so
# --help and a bad flag answer in a fraction of a second.
from absl import flags

from aed_jax import cli


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("workdir", None, "Run folder holding checkpoints/ (and best/).", flag_values=fv)
    flags.DEFINE_string("checkpoint", "latest", "Which checkpoint: latest, best, or a step number.", flag_values=fv)
    flags.DEFINE_string("prompt", "\n", "Text to continue; <|endoftext|> is allowed.", flag_values=fv)
    flags.DEFINE_integer("max_new_tokens", 100, "Tokens to generate per sample.", flag_values=fv)
    flags.DEFINE_float("temperature", 0.8, "Softmax temperature when sampling; must be > 0.", flag_values=fv)
    flags.DEFINE_integer("top_k", 200, "Sample among the k most likely tokens; 0 keeps every token.", flag_values=fv)
    flags.DEFINE_integer("seed", 1337, "Random seed of the sampling.", flag_values=fv)
    flags.DEFINE_integer("num_samples", 1, "Samples to draw (one batch).", flag_values=fv)
    flags.DEFINE_bool("greedy", False, "Argmax decoding instead of sampling (ignores temperature and top_k).",
                      flag_values=fv)
    flags.DEFINE_bool("cache", True, "Use the KV cache; --nocache re-runs the window per token, as the reference.",
                      flag_values=fv)
    flags.DEFINE_bool("benchmark", False, "Print tokens/s with and without the cache instead of text.", flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    if not fv.workdir:
        cli.fail("--workdir is required")
    for name in ("max_new_tokens", "num_samples"):
        if fv[name].value < 1:
            cli.fail(f"--{name} must be at least 1, got {fv[name].value}")
    import numpy as np
    from aed_jax import api, decoding, tasks
    model, params, config, encoding = api.load(fv.workdir, fv.checkpoint)
    if tasks.task_name(config.get("dataset", "")) is not None:  # its defaults and any text prompt fail on its ids
        cli.fail(f"{fv.workdir} is a {config.dataset} run: its ids are no text, so sample has no prompt to continue; "
                 f"score its answers with python -m aed_jax.evaluate --workdir {fv.workdir}")
    decoding.check_sampling(model.cfg.alphabet_size, fv.temperature, fv.top_k, fv.greedy)
    prompt_L = decoding.encode_prompt(fv.prompt, model.cfg.alphabet_size, encoding)
    decoding.check_memory(model, params, fv.num_samples, len(prompt_L), fv.max_new_tokens, use_cache=fv.cache,
                 top_k=fv.top_k, greedy=fv.greedy)
    prompt_BxL = np.tile(prompt_L[None], (fv.num_samples, 1))
    options = dict(temperature=fv.temperature, top_k=fv.top_k, greedy=fv.greedy, seed=fv.seed)
    if fv.benchmark:
        print(decoding.benchmark(model, params, prompt_BxL, fv.max_new_tokens, **options))
        return
    tokens_BxN = decoding.generate(model, params, prompt_BxL, fv.max_new_tokens, use_cache=fv.cache, **options)
    for row in tokens_BxN:
        print(encoding.decode(row.tolist()))
        print("---------------")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
