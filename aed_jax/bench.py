"""`python -m aed_jax.bench --config=configs/<run>.py [--steps N] [--json] [--memory_only] [--noeval]
[--ensemble 1,2,4,8,16]`: training throughput (of one run, or of K runs as an ensemble's one program).

What it measures and how (FLOPs per token, MFU against a known or a measured peak, memory): `benchmark.py`.
"""
if __name__ == "__main__":  # a signal, from the first line on: one line, exit 1
    from aed_jax import stopping
    stopping.exit_on_signals("error: bench was stopped by {signal}; nothing was written")

# Only what the flags need: jax and the libraries on it load in `main`, once the flags are parsed, so
# --help and a bad flag answer in a fraction of a second.
import json

from absl import flags
from ml_collections import config_flags

from aed_jax import cli


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command's flags; defined only when run as a command, so importing this module defines none."""
    cli.define_config_flag(flag_values)
    flags.DEFINE_integer("steps", 10, "Timed train steps (after 2 warm-up steps).", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.", flag_values=flag_values)
    flags.DEFINE_bool("input_pipeline", False, "Also time steps fed by the config's dataset through grain, with and "
                      "without host-to-device prefetch (prepares the built-in corpus on first use).",
                      flag_values=flag_values)
    flags.DEFINE_bool("memory_only", False, "Compile the train step on the config's mesh and report its per-device "
                      "memory without running it.", flag_values=flag_values)
    flags.DEFINE_bool("eval", True, "Also time the eval forward (one more compilation; --noeval keeps a row to the "
                      "train step, as experiments/lease.py's GPU rows do).", flag_values=flag_values)
    flags.DEFINE_list("ensemble", None, "Time an ensemble's step instead (K members of the config, seeds 0..K-1, "
                      "one vmapped program; aed_jax.ensemble) at each K of the list, e.g. 1,2,4,8,16: aggregate "
                      "tokens/s and the gain over K = 1.", flag_values=flag_values)
    flags.DEFINE_integer("generate_tokens", 32, "New tokens for the cached-generation timing (0: skip).", lower_bound=0,
                         flag_values=flag_values)


def main(argv):
    cli.no_extra_args(argv)
    fv = flags.FLAGS
    if fv.ensemble and not all(k.isascii() and k.isdigit() and int(k) > 0 for k in fv.ensemble):
        cli.fail(f"--ensemble {','.join(fv.ensemble)}: give member counts, positive integers (1,2,4,8,16)")
    import jax
    from aed_jax import benchmark
    jax.config.update("jax_enable_compilation_cache", False)  # compile_s times a compile, never a cache load
    config = cli.get_config()
    # The config file as given on the command line: which run was measured, not only which model type.
    name = config_flags.get_config_filename(fv["config"])
    if fv.ensemble:
        rows = benchmark.run_ensemble(config, [int(k) for k in fv.ensemble], fv.steps)
        device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
        print(json.dumps({"config": name, "device": device, "rows": rows}) if fv.json else
              benchmark.format_ensemble_table(name, device, rows))
        return
    if fv.memory_only:
        result = {"config": name, **benchmark.step_memory(config)}
        print(json.dumps(result) if fv.json else "\n".join(f"{k:<22} {v}" for k, v in result.items()))
        return
    result = {"config": name, **benchmark.run(config, fv.steps, fv.generate_tokens, fv.input_pipeline, fv.eval)}
    print(json.dumps(result) if fv.json else benchmark.format_table(result))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
