"""`python -m aed_jax.evaluate --workdir DIR`: the losses of a checkpoint on a token split.

Reports what the seed's estimates report, in eval mode (no dropout): mean next-token CE, its
perplexity, the "accuracy loss" (fraction of positions where argmax(logits) != target) and, for an
AED model with an embedding loss, that loss (computed without dropout; the reference computes it
only in training). `--full` runs every non-overlapping window of the split in order (offsets 0, T,
2T, ... while i + T + 1 <= N), so the result is deterministic; `--batches N` draws N random batches
as the seed's estimate does. Every mean is over all evaluated positions; `--json` also gives
`ce_by_position`, the mean CE at each window position t = 0..T-1 (and `embedding_loss_by_position`).
A run on a synthetic task (`dataset` "task:<name>") is evaluated on `--batches` fresh sequences of
its task, drawn from `--seed`: CE and accuracy loss over the answers alone, and the exact-match
`token_accuracy` (answers right), `sequence_accuracy` (problems with every answer right; sort packs
several a sequence) and `packed_sequence_accuracy` (sequences with every answer right).

Only the parameters are restored (host arrays), then placed on a mesh of this machine's devices,
so a checkpoint written on any number of devices evaluates here: the run config's mesh where it fits
these devices (an FSDP config keeps its parameters sharded), else every device on `data`; each
batch's rows are split over every device, the batch padded to a multiple of the device count.
SIGTERM or Ctrl-C at any point ends it with one line: it writes no file, and prints its numbers at
the end.
"""
from __future__ import annotations

if __name__ == "__main__":  # from the start: while the libraries load, as while it evaluates
    from aed_jax import stopping
    stopping.exit_on_signals("error: evaluate was stopped by {signal} before it printed its numbers; it writes no "
                             "file, run it again")

import json  # noqa: E402  (after the handlers)
import os  # noqa: E402

from absl import flags  # noqa: E402  (after the handlers)

from aed_jax import cli  # noqa: E402
from aed_jax import data as data_lib  # noqa: E402
from aed_jax import tasks  # noqa: E402


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("workdir", None, "Run folder holding checkpoints/ (and best/).", flag_values=fv)
    flags.DEFINE_string("checkpoint", "latest", "Which checkpoint: latest, best, or a step number.", flag_values=fv)
    flags.DEFINE_string("data", None, "A token folder (<name>_<split>.bin or <split>.bin) or one .bin file; "
                        "default: the run config's data.", flag_values=fv)
    flags.DEFINE_enum("split", "val", ["val", "train"], "Split to evaluate (ignored when --data is a file).",
                      flag_values=fv)
    flags.DEFINE_integer("batches", None, "Random batches to draw, as the seed's estimate does "
                         "(default: the config's est_steps).", flag_values=fv)
    flags.DEFINE_bool("full", False, "Evaluate every non-overlapping window of the split, in order.", flag_values=fv)
    flags.DEFINE_integer("batch_size", None, "Sequences per batch (default: the config's batch_size).",
                         flag_values=fv)
    flags.DEFINE_integer("seed", None, "Seed of the random batches (default: the config's random_seed).",
                         flag_values=fv)
    flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.", flag_values=fv)


def format_table(results: dict) -> str:
    """One line a number, the names in a column as wide as the longest; a curve by position (a list)
    summarised as its length, first counted value, mean and last counted value, each labelled with
    its own position (--json gives every value). A position no window counts is None: a task's
    curve holds answers only at some positions (sort: from its separator at t = sort_length on), so
    its first and last numbers are not t=0 and t=T-1, and the line says how many positions count."""
    width, lines = max(map(len, results), default=0) + 2, []
    for key, value in results.items():
        if isinstance(value, list):
            counted = [(t, v) for t, v in enumerate(value) if v is not None]
            if counted:
                (first, v_first), (last, v_last) = counted[0], counted[-1]
                mean, of = sum(v for _, v in counted) / len(counted), f"{len(value)} positions"
                of += "" if len(counted) == len(value) else f" ({len(counted)} counted)"
                text = f"{of}: t={first} {v_first:.4f}, mean {mean:.4f}, t={last} {v_last:.4f}"
            else:
                text = f"{len(value)} positions, none counted"
        else:
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}{text}")
    return "\n".join(lines)


def main(argv, fv: flags.FlagValues = flags.FLAGS):
    cli.no_extra_args(argv)
    if not fv.workdir:
        cli.fail("--workdir is required")
    if fv.full and fv.batches is not None:
        cli.fail("--full and --batches exclude each other: evaluate every window, or N random batches")
    for name in ("batches", "batch_size"):
        if fv[name].value is not None and fv[name].value < 1:
            cli.fail(f"--{name} must be at least 1, got {fv[name].value}")
    if fv.seed is not None and fv.seed < 0:
        cli.fail(f"--seed must be >= 0, got {fv.seed}")
    import jax  # here, once the flags are parsed: --help and a bad flag answer without loading it
    from aed_jax import memory, mesh as mesh_lib, metrics, model as model_lib, rundir
    with cli.out_of_memory_is_one_line("evaluate", "pass a smaller --batch_size"):  # host or device
        params, config, step = rundir.restore_params(fv.workdir, fv.checkpoint)
        cfg = model_lib.ModelConfig.from_config(config)
        task = tasks.task_name(config.get("dataset", ""))
        if task is not None and (fv.full or fv.data):
            cli.fail(f"--{'full' if fv.full else 'data'}: {config.dataset} draws its sequences afresh, it has no "
                     "split to read; evaluate it with --batches N [--seed S]")
        context = cfg.context_size
        if task is None:
            path = data_lib.split_file(config, fv.data, fv.split)
            tokens = data_lib.load_tokens(path, cfg.alphabet_size, context + (1 if fv.full else 2))
        else:
            path = config.dataset
        batch_size = fv.batch_size or config.batch_size
        mesh = mesh_lib.reading_mesh(config)
        params, padded = mesh_lib.place(params, mesh), mesh_lib.padded_size(batch_size, mesh)
        problems = None if task is None else tasks.problems_per_sequence(config)
        need = memory.eval_batch_bytes(cfg, params, padded, mesh, problems)
        free, what = memory.device_free(jax.local_devices()[0])
        if need > free:  # refused before any batch runs, with the batch that fits (need grows about linearly)
            cli.fail(f"a batch of {batch_size} sequences needs {memory.gib(need)} in the eval step (XLA's buffer "
                     f"assignment), more than the {memory.gib(free)} of {what}; pass --batch_size "
                     f"{max(1, batch_size * free // need)} or less")
        seed, n_batches = config.random_seed if fv.seed is None else fv.seed, fv.batches or config.est_steps
        if fv.full:
            batches = data_lib.eval_windows(tokens, context, batch_size)
        elif task is None:
            batches = data_lib.random_batches(tokens, context, batch_size, n_batches, seed)
        else:
            batches = data_lib.task_batches(config, batch_size, n_batches, seed)
        results = metrics.evaluate(model_lib.make_model(cfg), params, batches, padded, mesh, problems or 1)
    where = {"workdir": fv.workdir, "checkpoint": fv.checkpoint, "step": step, "data": path,
             "mode": "full" if fv.full else f"{fv.batches or config.est_steps} random batches",
             "mesh": f"{mesh.shape['data']}x{mesh.shape['fsdp']}"}
    if fv.json:
        print(json.dumps({**results, **where}))
    else:
        print(f"{cfg.model_type} model, step {step} of {fv.workdir} ({fv.checkpoint}); {path}, {where['mode']}")
        print(format_table(results))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
