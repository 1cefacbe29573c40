"""`python -m experiments.profile_cpu --config=configs/<run>.py [--micro 8] [--repeats 5] [--thunks 25]`: where a train step's time goes.

The pieces it times and how it reads the thunks: `experiments/profiling.py`.
"""
if __name__ == "__main__":  # a signal, from the first line on: one line, exit 1
    from aed_jax import stopping
    stopping.exit_on_signals("error: profile_cpu was stopped by {signal}; nothing was written")

# Only what the flags need: jax and the libraries on it load in `main`, once the flags are parsed, so
# --help and a bad flag answer in a fraction of a second.
from absl import flags

from aed_jax import cli

FLAGS = flags.FLAGS


def main(argv):
    cli.no_extra_args(argv)
    c = cli.get_config()
    import jax
    from experiments import profiling
    # The thunks first: in a fresh process, as a trainer's step runs (the pieces' programs leave the
    # heap fragmented, and a step's block of temporaries may then need fresh pages again).
    inside = profiling.thunks(c.copy_and_resolve_references(), FLAGS.micro, FLAGS.repeats) if FLAGS.thunks else None
    r = profiling.profile(c, FLAGS.micro, FLAGS.repeats)
    step = r["step"]
    print(f"{c.model_type}, micro-batch {FLAGS.micro} x {c.model_config.context_size} tokens, "
          f"{jax.devices()[0].device_kind}, median of {FLAGS.repeats}")
    print("| piece | ms | share of the step |\n|---|---|---|")
    for name in ("step", "loss grad", "forward", "head + CE", "attention", "rest of the stack", "AdamW"):
        label = f"attention ({r['attention calls']} calls)" if name == "attention" else name
        print(f"| {label} | {1e3 * r[name]:,.0f} | {100 * r[name] / step:.0f}% |")
    if inside:
        top, faults = inside
        total = sum(ms for _, ms, _ in top)
        print(f"\nThunks of one step: {total:,.0f} ms in all; {faults:,.0f} minor page faults a step")
        print("| model operation [thunk] | ms a step | thunks a step |\n|---|---|---|")
        for op, ms, n in top[:FLAGS.thunks]:
            print(f"| {op} | {ms:,.1f} | {n} |")


if __name__ == "__main__":
    cli.define_config_flag()
    flags.DEFINE_integer("micro", 8, "Sequences in the micro-batch.")
    flags.DEFINE_integer("repeats", 5, "Timed calls of each piece.")
    flags.DEFINE_integer("thunks", 0, "Also list the N model operations whose XLA:CPU thunks take the most time.")
    cli.run(main)
