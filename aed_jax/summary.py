"""`python -m aed_jax.summary --config=configs/<run>.py`: a per-module parameter table.

The last line is `params: N` (thousands commas), counted as the seed counts: the positional
table excluded, the tied embedding/output matrix once.
"""
if __name__ == "__main__":  # a signal, from the first line on: one line, exit 1
    from aed_jax import stopping
    stopping.exit_on_signals("error: summary was stopped by {signal}; nothing was written")

import re

from aed_jax import cli


def _natural(name: str) -> list:
    """Sort key that orders numbered modules by number: blocks_2 before blocks_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def summarize(config) -> str:
    """The table as text; parameters are shapes only (jax.eval_shape), so nothing is allocated."""
    import jax  # here, not at the top: --help and a bad flag answer without loading it
    from aed_jax import model as model_lib
    cfg = model_lib.ModelConfig.from_config(config)
    params = cfg.abstract_params()
    named = sorted(params.items(), key=lambda item: _natural(item[0]))
    rows = [(name, sum(x.size for x in jax.tree_util.tree_leaves(sub))) for name, sub in named]
    width = max(len(name) for name, _ in rows)
    depth = (f"n_layer={cfg.n_layer}" if cfg.model_type == "baseline" else
             f"n_layer={cfg.encoder_layers} encoder + {cfg.decoder_layers} decoder")
    lines = [f"{cfg.model_type} model: n_embed={cfg.n_embed} n_head={cfg.n_head} {depth} "
             f"context_size={cfg.context_size} vocab={cfg.alphabet_size}", f"{'module':<{width}}  {'params':>12}"]
    lines += [f"{name:<{width}}  {n:>12,}" + ("  (excluded)" if name in model_lib.POSITIONAL_TABLES else "")
              for name, n in rows]
    lines.append(f"params: {model_lib.count_params(params):,}")
    return "\n".join(lines)


def main(argv):
    cli.no_extra_args(argv)
    print(summarize(cli.get_config()))


if __name__ == "__main__":
    cli.define_config_flag()
    cli.run(main)
