"""`python -m aed_jax.main --config=configs/<run>.py [--config.<key>=<value> ...] [--workdir DIR]`.

Trains a config end to end; re-running the same command resumes from the workdir's latest intact
checkpoint, and says so when the run is already finished. At the end it prints the final losses
and a greedy and a sampled continuation of a prompt. On a cluster, pass --distributed on every
host (jax.distributed.initialize reads the coordinator from SLURM or the
JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID variables). With `--members KEY=V1,V2,...`, the
runs that differ only in those keys train as one ensemble (`ensemble`), each in <workdir>/<its values>.
"""
import os
import signal
import sys
import threading
import time
import typing

STARTED = time.time()  # the process's start, near enough (before jax loads): its start-up phase begins here


def _stopped(signum, _):
    """SIGTERM or Ctrl-C while the libraries load (from then on, cluster.on_signals_outside_training):
    one line, exit 1, nothing to save.

    os._exit, not sys.exit: a SystemExit raised while the interpreter runs a gc callback or a
    __del__ is swallowed ("Exception ignored in ...") and the run would go on. Nothing is lost:
    every write of the run folder survives a kill -9, which is what this is.
    """
    try:
        sys.stdout.flush()
    except (OSError, RuntimeError):  # RuntimeError: the signal came in the middle of a print
        pass
    os.write(2, f"error: the run was stopped by {signal.Signals(signum).name} before training began; there was "
                "nothing to save\n".encode())
    os._exit(1)


if __name__ == "__main__":  # Ctrl-C or SIGTERM while the libraries load or the run is set up
    signal.signal(signal.SIGINT, _stopped)
    signal.signal(signal.SIGTERM, _stopped)


# Only what the flags need: jax and the libraries on it load in `main`, once the flags are parsed, so
# --help and a bad flag answer in a fraction of a second.
from absl import flags
from absl import logging
from ml_collections import config_flags

from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import errors
from aed_jax import tasks

if typing.TYPE_CHECKING:
    from aed_jax import train


def define_flags() -> None:
    """The command's flags; defined only when run as a command, so importing this module defines none."""
    cli.define_config_flag()
    flags.DEFINE_string("workdir", None, "Run folder (checkpoints, metrics.jsonl, TensorBoard events); "
                        "default: config.workdir, else runs/<config file name>, plus -<dataset> when the "
                        f"dataset is not {config_lib.DEFAULT_DATASET}.")
    flags.DEFINE_bool("fresh", False, "Delete the workdir's checkpoints (a linked checkpoints/ or best/ keeps "
                      "its link and loses the steps inside), metrics and TensorBoard events and start over.")
    flags.DEFINE_multi_string("members", None, "An ensemble: KEY=V1,V2,... (repeat for more keys, each with as "
                              "many values), member k the config with the k-th value of each; the members train as "
                              "one vmapped step, each in <workdir>/<KEY=V,...>, as it would alone. Keys: "
                              + ", ".join(k.rsplit(".", 1)[-1] for k in config_lib.ENSEMBLE_KEYS))
    flags.DEFINE_string("sample_prompt", "The history of", "Prompt of the continuations printed at the end.")
    flags.DEFINE_integer("sample_tokens", 40, "Tokens of the greedy and the sampled continuation printed when "
                         "training ends; 0 prints none.", lower_bound=0)
    flags.DEFINE_bool("distributed", False, "One process of a multi-process run: join the others first (from "
                      "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, else from SLURM); start "
                      "every process with the same command.")
    flags.DEFINE_integer("join_timeout", 300, "--distributed: seconds to wait for every process to join before "
                         "giving up with one line (a process that died while starting never joins).", lower_bound=1)
    flags.DEFINE_string("compilation_cache_dir", "~/.cache/aed_jax/jax",
                        "JAX's persistent compilation cache, so a resumed run loads its train step instead of "
                        "compiling it again, as does the run after micro_batch_size auto-sizing compiled it; "
                        "'' disables it. The JAX_COMPILATION_CACHE_DIR variable, when set, wins.")


def print_continuations(workdir: str, prompt: str, max_new_tokens: int) -> None:
    """A greedy and a sampled continuation of `prompt` by the latest checkpoint: what the model learnt."""
    from aed_jax import api, decoding
    model, params, _, encoding = api.load(workdir)
    prompt_1xL = decoding.encode_prompt(prompt, model.cfg.alphabet_size, encoding)[None]
    top_k = min(200, model.cfg.alphabet_size)  # a vocabulary smaller than 200 ids is cut nowhere, not refused
    for name, options in (("greedy", dict(greedy=True)), ("sampled", dict(temperature=0.8, top_k=top_k, seed=0))):
        tokens = decoding.generate(model, params, prompt_1xL, max_new_tokens, **options)[0]
        print(f"{name}: {encoding.decode(tokens.tolist())!r}")


def main(argv):
    cli.no_extra_args(argv)
    c = cli.get_config()
    fv = flags.FLAGS
    if fv.members:
        if fv.distributed:
            cli.fail("--members trains in one process: an ensemble's members split over its host's devices")
        try:
            members = config_lib.member_configs(c, config_lib.parse_members(fv.members))
        except config_lib.ConfigError as e:
            cli.fail(str(e))
        return train_ensemble(c, members)
    import jax
    from aed_jax import cluster, rundir, train
    finished = threading.Event()  # training has ended: a signal or a lost process costs no training now
    liveness = cluster.join(fv.join_timeout, finished) if fv.distributed else None
    cluster.on_signals_outside_training(liveness, finished)
    if fv.compilation_cache_dir and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(fv.compilation_cache_dir))
    workdir = fv.workdir or c.workdir or rundir.default_workdir(c, config_flags.get_config_filename(flags.FLAGS["config"]))
    logging.info("devices: %d x %s (%d processes); workdir %s", jax.device_count(), jax.devices()[0].device_kind,
                 jax.process_count(), workdir)
    try:
        outcome = train.train_and_evaluate(c, workdir, fresh=fv.fresh, started=STARTED)
    except OSError as e:  # writing the run folder (metrics.jsonl, TensorBoard, config.json): its last checkpoint stays
        cli.fail(errors.write_failed(e, e.filename or workdir, "run the same command to resume"))
    except Exception as e:
        # Out of memory where the trainer names no program (restoring, compiling, saving): still one line.
        if (message := errors.out_of_memory(e, "the trainer", train.STEP_REMEDY)) is not None:
            cli.fail(message)
        if not cluster.lost_peer(e):
            raise
        liveness.exit_lost(e)
    finished.set()
    if outcome.signalled_after:  # while the last saves finished
        cluster.end_after_training(liveness, outcome.signalled_after)
    if jax.process_index() == 0:
        is_task = tasks.task_name(c.dataset) is not None  # no text to continue: its accuracies instead
        report(outcome, workdir, c.train_steps, fv.sample_prompt, 0 if is_task else fv.sample_tokens, c.stop_accuracy)
    if liveness is not None:
        liveness.finish()


def train_ensemble(c, members) -> None:
    """--members: the ensemble trained (`ensemble`) in <workdir>/<member>, default runs/<config name>-ensemble
    (plus -<dataset> as a single run's); one closing line a member. Exit 1 when every member diverged."""
    import jax
    from aed_jax import cluster, ensemble, rundir
    fv = flags.FLAGS
    finished = threading.Event()  # a signal outside the ensemble's loop: one line, as for a single run
    cluster.on_signals_outside_training(None, finished)
    if fv.compilation_cache_dir and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(fv.compilation_cache_dir))
    root = fv.workdir or c.workdir or \
        rundir.default_workdir(c, config_flags.get_config_filename(flags.FLAGS["config"])) + "-ensemble"
    try:
        outcome = ensemble.train_ensemble(members, root, fresh=fv.fresh, started=STARTED)
    except OSError as e:
        cli.fail(errors.write_failed(e, e.filename or root, "run the same command to resume"))
    finished.set()
    for m in outcome.members:
        est = m.estimate
        losses = (f"train loss {est['train_loss']:.4f}, val loss {est['val_loss']:.4f}"
                  + (f", val accuracy {est['val_token_accuracy']:.4f} a token" if "val_token_accuracy" in est else "")
                  + f" (estimated at step {est['step']})") if est else "no estimate yet"
        if m.diverged:
            print(f"{m.name}: {m.diverged}: frozen; its last checkpoint is step {m.step}; last {losses} ({m.workdir})")
        elif m.already_finished:
            print(f"{m.name}: already finished at step {m.step}: {losses} ({m.workdir})")
        elif outcome.stopped_by:
            print(f"{m.name}: stopped by {outcome.stopped_by} at step {m.step}, checkpoint saved; last {losses} "
                  f"({m.workdir})")
        else:
            print(f"{m.name}: final: {losses} ({m.workdir})")
    if outcome.times:
        from aed_jax import progress
        print(f"{len(members)} members in {progress.phases_line(outcome.times)}"
              + ("; run the same command to resume" if outcome.stopped_by else ""))
    if all(m.diverged for m in outcome.members):
        sys.exit(1)


def report(outcome: "train.Outcome", workdir: str, train_steps: int, prompt: str, sample_tokens: int,
           stop_accuracy: float | None = None) -> None:
    from aed_jax import decoding, progress, rundir
    est = outcome.estimate
    accuracies = (f", val accuracy {est['val_token_accuracy']:.4f} a token, {est['val_sequence_accuracy']:.4f} a "
                  "problem" if "val_token_accuracy" in est else "")
    losses = (f"train loss {est['train_loss']:.4f}, val loss {est['val_loss']:.4f}{accuracies} (estimated at step "
              f"{est['step']})" if est else "no estimate yet")
    if outcome.stopped_by:
        print(f"stopped by {outcome.stopped_by} at step {outcome.step} of {train_steps}, checkpoint saved; run the "
              f"same command to resume. Last {losses}")
        return
    early = f"stopped early at step {outcome.step} of {train_steps}, its val token accuracy at least stop_accuracy " \
            f"{stop_accuracy:g}" if outcome.stopped_early else ""
    if outcome.already_finished:
        print(f"{workdir} is already finished at step {outcome.step} ({early or f'train_steps {train_steps}'}): "
              f"{losses}. Checkpoints in {os.path.join(workdir, rundir.CHECKPOINTS)}, the best in "
              f"{os.path.join(workdir, rundir.BEST)}. Raise --config." + ("stop_accuracy (or unset it)" if early else
                                                                            "train_steps")
              + " to train on, or pass --fresh to start over")
        return
    print(f"final: {early + ': ' if early else ''}{losses}, in {progress.phases_line(outcome.times)} ({workdir})")
    if sample_tokens:
        try:
            print_continuations(workdir, prompt, sample_tokens)
        except decoding.SampleError as e:  # e.g. a model whose vocabulary is not GPT-2's
            logging.info("no continuations printed: %s", e)
        except Exception as e:  # the run is complete and saved: a sample that does not fit costs only its line
            message = errors.out_of_memory(e, "the closing samples", "pass a smaller --sample_tokens, or 0")
            if message is None:
                raise
            logging.warning("no continuations printed: %s", message)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
