"""The training loop: sharded init, a jitted step with gradient accumulation, estimation, checkpoints.

SPMD the JAX way: one `Mesh` over every device (of every host), the batch's rows split over all of
them, parameters and optimizer state placed by `mesh`'s rules (replicated by default, sharded over
the fsdp axis when asked); XLA inserts the collectives. The same code runs on one CPU, N GPUs, or
several hosts after `jax.distributed.initialize()`. Where each array lives is `mesh`'s business;
the run's folder (its lock, the same-run checks of a resume, its metrics) is `rundir`'s; the
estimate is `metrics.Evaluator`'s; what the run shows is `progress`'s; a signal is `preemption`'s.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from aed_jax import checkpoint
from aed_jax import config as config_lib
from aed_jax import data
from aed_jax import errors
from aed_jax import memory
from aed_jax import mesh as mesh_lib
from aed_jax import metrics
from aed_jax import model as model_lib
from aed_jax import optim
from aed_jax import preemption
from aed_jax import prepare
from aed_jax import progress
from aed_jax import rundir
from aed_jax import tasks


class TrainError(errors.UserError):
    """The run cannot go on (bad setup, mismatched checkpoint, NaN loss): one line for the user."""


def train_step(params, opt_state, batch, rng, lr, *, model, optimizer, accum_steps, data_sharding):
    """One optimizer step over `accum_steps` micro-batches at learning rate `lr` (the step's, from the
    schedule: an argument, so that one program serves every schedule): (params, opt_state, metrics).

    The global batch [accum * micro, T] is viewed as [micro, accum, T], so each micro-batch keeps
    the batch sharding without moving data; gradients and losses are averaged over micro-batches,
    as the seed's accumulation does. Each micro-batch gets its own dropout key. A batch with a
    "weight" [N, T] (a task's loss mask) counts only its weighted targets; one without it (language
    modelling) traces exactly the program it always did.
    """
    def micro_batches(a_NxT):
        a_AxBxT = a_NxT.reshape(-1, accum_steps, a_NxT.shape[-1]).transpose(1, 0, 2)
        return jax.lax.with_sharding_constraint(a_AxBxT, data_sharding)

    def loss_fn(p, x_BxT, y_BxT, key, weights_BxT=None):
        _, losses = model.apply({"params": p}, x_BxT, y_BxT, train=True, rngs={"dropout": key},
                                **({} if weights_BxT is None else {"weights_BxT": weights_BxT}))
        return losses["total"], losses

    def accumulate(carry, inputs):
        grads, losses = jax.grad(loss_fn, has_aux=True)(params, *inputs)
        return jax.tree_util.tree_map(jnp.add, carry, (grads, losses)), None

    zeros = (jax.tree_util.tree_map(jnp.zeros_like, params), {k: jnp.zeros((), jnp.float32) for k in model_lib.LOSS_KEYS})
    inputs = (micro_batches(batch["x"]), micro_batches(batch["y"]), jax.random.split(rng, accum_steps))
    if "weight" in batch:
        inputs += (micro_batches(batch["weight"]),)
    (grads, losses), _ = jax.lax.scan(accumulate, zeros, inputs, unroll=accum_steps == 1)
    grads, losses = jax.tree_util.tree_map(lambda a: a / accum_steps, (grads, losses))
    updates, opt_state = optimizer.update(grads, opt_state, params, learning_rate=lr)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": losses["total"], **{k: v for k, v in losses.items() if k != "total"},
               "grad_norm": optax.tree_utils.tree_norm(grads)}
    return params, opt_state, metrics


def init_state(rng, *, model, optimizer) -> dict:
    params = model_lib.init_params(model, rng)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}


def abstract_state(model, optimizer, mesh: Mesh) -> dict:
    """The train state's shapes, dtypes and shardings (by `mesh`'s rules), without computing it."""
    shapes = jax.eval_shape(functools.partial(init_state, model=model, optimizer=optimizer), jax.random.key(0))
    return jax.tree_util.tree_map(lambda a, sharding: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                                  shapes, mesh_lib.state_shardings(mesh, shapes))


def init_on_mesh(rng, abstract: dict, *, model, optimizer) -> dict:
    """A fresh train state, each array created where `abstract` (abstract_state's) places it."""
    return jax.jit(functools.partial(init_state, model=model, optimizer=optimizer),
                   out_shardings=jax.tree_util.tree_map(lambda a: a.sharding, abstract))(rng)


def compile_train_step(c: ml_collections.ConfigDict, model, optimizer, mesh: Mesh, micro_batch_size: int | None = None):
    """The jitted `train_step` for `c` on `mesh`, `micro_batch_size` sequences a micro-batch
    (default: batch_size, the seed's split); params and optimizer state are donated, and come out
    sharded as they went in (`mesh`'s rules), whatever XLA's propagation would have chosen."""
    rows = c.batch_size * c.gradient_accumulation_steps
    shardings = jax.tree_util.tree_map(lambda a: a.sharding, abstract_state(model, optimizer, mesh))
    return jax.jit(functools.partial(
        train_step, model=model, optimizer=optimizer, accum_steps=rows // (micro_batch_size or c.batch_size),
        data_sharding=NamedSharding(mesh, P(None, mesh_lib.AXES))),
        out_shardings=(shardings["params"], shardings["opt_state"], mesh_lib.replicated(mesh)), donate_argnums=(0, 1))


def lower_train_step(c: ml_collections.ConfigDict, model, optimizer, mesh: Mesh, abstract: dict, micro_batch_size: int):
    """`compile_train_step`'s step compiled for `abstract` (abstract_state's) and the batch it takes (a
    task's with its loss mask), without running it: what `memory` measures and `bench` times."""
    rows, T = c.batch_size * c.gradient_accumulation_steps, c.model_config.context_size
    batch = {k: jax.ShapeDtypeStruct((rows, T), jnp.int32, sharding=mesh_lib.batch_sharding(mesh)) for k in "xy"}
    if tasks.task_name(c.dataset) is not None:
        batch["weight"] = jax.ShapeDtypeStruct((rows, T), jnp.float32, sharding=mesh_lib.batch_sharding(mesh))
    return compile_train_step(c, model, optimizer, mesh, micro_batch_size).lower(
        abstract["params"], abstract["opt_state"], batch, jax.random.key(0),
        jax.ShapeDtypeStruct((), jnp.float32)).compile()


@dataclasses.dataclass
class Outcome:
    """How train_and_evaluate ended: what main reports."""
    step: int  # the step the workdir's latest checkpoint now holds
    estimate: dict  # the last estimate (train_loss, val_loss, accuracy losses, "step"); {} before any
    stopped_by: str | None = None  # "SIGTERM" or "SIGINT" when a signal stopped the run
    signalled_after: str | None = None  # a signal that came once the last step was done: the run is complete
    already_finished: bool = False  # the workdir's run had already reached train_steps: nothing trained
    stopped_early: bool = False  # stop_accuracy ended the run at `step` (in this call, or already before it)
    times: dict = dataclasses.field(default_factory=dict)  # progress.Phases.record: where the time went; {} untrained


# What to make smaller when a program of the run does not fit (host or device memory), for its line.
STEP_REMEDY = ("use a smaller batch_size or micro_batch_size (a larger gradient_accumulation_steps keeps the "
               "effective batch), or a smaller model")
ESTIMATE_REMEDY = ("use a smaller batch_size, which the estimate runs at once (a larger gradient_accumulation_steps "
                   "keeps the effective batch)")
INIT_REMEDY = "use a smaller model (n_embed, n_layer, alphabet_size), or shard it over more devices (mesh_fsdp)"


@contextlib.contextmanager
def out_of_memory_line(program: str, remedy: str):
    """An out-of-memory error of `program` in the block (host or device: jax's RESOURCE_EXHAUSTED, numpy's
    MemoryError) as one TrainError line naming it, the size that failed and `remedy`, not jax's 50-line
    traceback; any other error passes unchanged."""
    try:
        yield
    except (MemoryError, jax.errors.JaxRuntimeError) as e:
        message = errors.out_of_memory(e, program, remedy)
        if message is None:
            raise
        raise TrainError(message) from None


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def train_and_evaluate(c: ml_collections.ConfigDict, workdir: str, fresh: bool = False,
                       started: float | None = None) -> Outcome:
    """Trains `c` in `workdir`, holding its lock, from its newest intact checkpoint if it has one.
    `started` (time.time() when the process began; main's) adds the start-up to the run's phase times."""
    phases = progress.Phases(started)
    config_lib.validate(c)
    mesh = mesh_lib.make_mesh(c)
    mesh_lib.check_rows("batch_size", c.batch_size, mesh)
    if tasks.task_name(c.dataset) is None and c.dataset != config_lib.DEFAULT_DATASET:
        data.split_paths(c)  # a corpus that is not there (a typo): said before the workdir is made and left empty
    with rundir.locked(workdir):
        rundir.check_layout(workdir)
        if jax.process_index() == 0:
            rundir.tidy_for_training(workdir, fresh)
            if tasks.task_name(c.dataset) is None:
                prepare.ensure_data(c)  # the built-in corpus, prepared on first use
        if jax.process_count() > 1:  # the workdir is clean and the data there before anyone reads them
            multihost_utils.sync_global_devices("workdir and data ready")
        return _train(c, workdir, mesh, phases)


def reached_stop_accuracy(c: ml_collections.ConfigDict, estimate: dict) -> bool:
    """Whether `estimate` (an estimate's numbers) ends a task run of `c`: its val token accuracy is at least
    stop_accuracy (None: no estimate does)."""
    return c.stop_accuracy is not None and estimate.get("val_token_accuracy", -np.inf) >= c.stop_accuracy


def stopped_early(c: ml_collections.ConfigDict, workdir: str, step: int | None) -> bool:
    """Whether the run of `c` in `workdir`, its latest checkpoint at `step`, is finished short of train_steps:
    the estimate it logged at that step reached stop_accuracy. metrics.jsonl says it: a step's estimate is
    logged before its checkpoint is saved, so a checkpoint's step has its line, and a run's config decides
    (a resume may raise or unset stop_accuracy, as it may raise train_steps, to train on)."""
    if c.stop_accuracy is None or step is None:
        return False
    return any(e["step"] == step and reached_stop_accuracy(c, e) for e in rundir.read_metrics(workdir)[1])


def _last_good(saves) -> str:
    """Where the run can resume from, for the line that stops it."""
    step = saves.latest_step()
    return f"the last finite checkpoint is step {step} in {saves.directory}" if step is not None else \
        "no checkpoint was saved"


def _save(c: ml_collections.ConfigDict, workdir: str, managers: tuple, step: int, state: dict, train_iter,
          est: dict | None, mesh: Mesh) -> None:
    """best/ first, then checkpoints/: a kill between them leaves checkpoints/ one interval behind,
    and the re-run recomputes this step's best. Never a non-finite state."""
    saves, best_saves = managers
    state["step"] = jax.device_put(np.int32(step), mesh_lib.replicated(mesh))  # a global array, as on every host
    try:
        if est is not None:
            checkpoint.save_best(best_saves, step, state, c, est)
        checkpoint.save(saves, step, state, c, train_iter)
    except OSError as e:  # the last good checkpoint stays; the re-run resumes from it
        raise TrainError(errors.write_failed(e, f"saving step {step} in {workdir}",
                                             f"run the same command to resume ({_last_good(saves)})")) from None
    logging.info("saved checkpoint at step %d", step)


def _record(pending: tuple, shown: progress.Progress, stopper: preemption.Preemption, saves) -> bool:
    """Fetches step i's metrics (the next step is already dispatched), stops on NaN/inf, shows and
    logs them; whether the processes agreed to stop (Preemption)."""
    i, step_metrics, vote = pending
    step_metrics, vote = jax.device_get((step_metrics, vote))
    step_metrics = {k: float(v) for k, v in step_metrics.items()}
    if not np.isfinite(step_metrics["loss"]):
        raise TrainError(f"loss is {step_metrics['loss']} at step {i + 1}; stopped without saving it; "
                         f"{_last_good(saves)}")
    shown.step(i + 1, step_metrics)
    return stopper.agreed(vote)


def _train(c: ml_collections.ConfigDict, workdir: str, mesh: Mesh, phases: progress.Phases) -> Outcome:
    """The run's setup (data, the same-run check, the state restored or made), then its loop, timed by
    `phases` and logged at the last step as a metrics.jsonl line of its own (`Phases.record`)."""
    T, rows = c.model_config.context_size, c.batch_size * c.gradient_accumulation_steps
    logging.info("mesh: data %d x fsdp %d", mesh.shape["data"], mesh.shape["fsdp"])
    task = tasks.task_name(c.dataset)
    if task is None:
        train_path, val_path = data.split_paths(c)
        data_record = rundir.data_record(train_path, val_path)
        tokens = {split: data.load_tokens(path, c.model_config.alphabet_size, T + 2)
                  for split, path in (("train", train_path), ("val", val_path))}
        stream = data.train_iterator(train_path, T, rows, c.random_seed, mesh_lib.process_slice(rows))
    else:  # generated on the fly: no files to record
        data_record, tokens = {}, None
        stream = data.task_iterator(c, rows, c.random_seed, mesh_lib.process_slice(rows))
    saves, best_saves = rundir.checkpoints(workdir, keep=c.keep_checkpoints), rundir.best(workdir)
    rundir.check_same_run(workdir, c, data_record, *rundir.saved_run(workdir, saves))

    train_iter = data.DevicePrefetch(stream, functools.partial(mesh_lib.to_global, mesh))
    model, optimizer = model_lib.from_config(c), optim.make_optimizer(c)
    abstract = abstract_state(model, optimizer, mesh)
    restored = checkpoint.restore_latest(saves, abstract, train_iter, os.path.join(workdir, rundir.DAMAGED))
    if restored is None:
        with out_of_memory_line("the model's initialisation", INIT_REMEDY):
            state, start = init_on_mesh(jax.random.key(c.random_seed), abstract, model=model, optimizer=optimizer), 0
    else:
        state, start = restored
        logging.info("resuming from step %d in %s", start, workdir)
    early = start < c.train_steps and stopped_early(c, workdir, start)
    if jax.process_count() > 1:  # process 0's reading for all: no process trains on while the others stop
        early = bool(multihost_utils.broadcast_one_to_all(np.bool_(early)))
    if start >= c.train_steps or early:
        saves.close()
        best_saves.close()
        return Outcome(start, rundir.last_estimate(workdir), already_finished=True, stopped_early=early)
    if jax.process_index() == 0:
        rundir.accept(workdir, c, data_record)

    micro = memory.pick_micro_batch_size(
        c, mesh, functools.partial(lower_train_step, c, model, optimizer, mesh, abstract))
    mesh_lib.check_rows("micro_batch_size", micro, mesh)
    step_fn = compile_train_step(c, model, optimizer, mesh, micro)
    evaluator, finite_fn = metrics.Evaluator(c, model, mesh, tokens), jax.jit(_all_finite)
    dropout_key, rate = jax.random.key(c.random_seed + 1), optim.step_learning_rate(c)
    writer, stopper = rundir.MetricsWriter(workdir, start), preemption.Preemption(mesh)
    peak = mesh_lib.peak_flops()
    shown = progress.Progress(start, c.train_steps, writer, rate, c.log_interval, rows * T,
                              model_lib.flops_per_token(abstract["params"], model.cfg), peak and peak * mesh.size)
    outcome, pending = Outcome(start, rundir.last_estimate(workdir)), None
    phases.enter("steps")
    try:
        with out_of_memory_line("the train step", STEP_REMEDY):  # its error shows where a step's result is read
            for i in range(start, c.train_steps):
                params, opt_state, step_metrics = step_fn(state["params"], state["opt_state"], next(train_iter),
                                                          jax.random.fold_in(dropout_key, i), rate(i))
                state = {"step": state["step"], "params": params, "opt_state": opt_state}
                stop = _record(pending, shown, stopper, saves) if pending is not None else stopper.agreed(None)
                pending = (i, step_metrics, stopper.vote())
                boundary = (i + 1) % c.est_interval == 0 or i + 1 == c.train_steps
                save_now = (i + 1) % (c.save_interval or c.est_interval) == 0 or i + 1 == c.train_steps  # a boundary too
                if not (boundary or stop):
                    continue
                stop = _record(pending, shown, stopper, saves) or stop
                pending, est, early = None, None, False
                if not bool(finite_fn(state)):
                    raise TrainError(f"step {i + 1} produced non-finite parameters; stopped without saving them; "
                                     f"{_last_good(saves)}")
                if boundary:
                    phases.enter("estimates")
                    with out_of_memory_line("the estimate", ESTIMATE_REMEDY):
                        est = evaluator(state["params"], i + 1)
                    if not np.isfinite(est["val_loss"]):
                        raise TrainError(f"val loss is {est['val_loss']} at step {i + 1}; stopped without saving it; "
                                         f"{_last_good(saves)}")
                    writer.write(i + 1, est)
                    outcome.estimate = {**est, "step": i + 1}
                    shown.write(f"step {i + 1}: train loss {est['train_loss']:.4f}, val loss {est['val_loss']:.4f}")
                    early = i + 1 < c.train_steps and reached_stop_accuracy(c, est)  # every process: the same numbers
                if save_now or stop or early:  # best/ is chosen among the checkpoints' estimates (save_interval)
                    phases.enter("saves")
                    _save(c, workdir, (saves, best_saves), i + 1, state, train_iter, est, mesh)
                    outcome.step = i + 1
                phases.enter("steps")  # also after an estimate with no save (save_interval > est_interval)
                if early:  # the run is complete: a signal that came with it changes nothing (signalled_after)
                    logging.info("stopped early at step %d: val token accuracy %.4f >= stop_accuracy %g", i + 1,
                                 est["val_token_accuracy"], c.stop_accuracy)
                    outcome.stopped_early = True
                    break
                if stop:
                    logging.info("stopped by %s: checkpoint saved at step %d, exiting", stopper.reason, i + 1)
                    outcome.stopped_by = stopper.reason
                    break
                shown.restart_clock()
        outcome.times = phases.record()  # the closing line; an early stop's names the level it reached
        writer.write(outcome.step, {**outcome.times, **({"stop_accuracy": c.stop_accuracy} if outcome.stopped_early
                                                         else {})})
    finally:
        try:
            shown.close()
            writer.close()
            saves.close()
            best_saves.close()
        finally:  # last: a signal while the saves finish sets the flag, never ends them midway
            stopper.restore()
    if stopper.signal and not outcome.stopped_by:
        outcome.signalled_after = stopper.signal
    return outcome
