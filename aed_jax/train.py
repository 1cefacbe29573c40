"""The training loop: sharded init, a jitted step with gradient accumulation, estimation, checkpoints.

SPMD the JAX way: one `Mesh` over every device (of every host), the batch's rows split over all of
them, parameters and optimizer state placed by `mesh`'s rules (replicated by default, sharded over
the fsdp axis when asked); XLA inserts the collectives. The same code runs on one CPU, N GPUs, or
several hosts after `jax.distributed.initialize()`. Where each array lives is `mesh`'s business;
the run's folder (its lock, the same-run checks of a resume, its metrics) is `rundir`'s.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import os
import signal
import sys
import time

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import tqdm

from aed_jax import checkpoint
from aed_jax import config as config_lib
from aed_jax import data
from aed_jax import errors
from aed_jax import losses as losses_lib
from aed_jax import mesh as mesh_lib
from aed_jax import model as model_lib
from aed_jax import optim
from aed_jax import prepare
from aed_jax import rundir
from aed_jax import tasks


class TrainError(errors.UserError):
    """The run cannot go on (bad setup, mismatched checkpoint, NaN loss): one line for the user."""


def train_step(params, opt_state, batch, rng, *, model, optimizer, accum_steps, data_sharding):
    """One optimizer step over `accum_steps` micro-batches: (params, opt_state, metrics).

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
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": losses["total"], **{k: v for k, v in losses.items() if k != "total"},
               "grad_norm": optax.tree_utils.tree_norm(grads)}
    return params, opt_state, metrics


def eval_step(params, batch, *, model):
    """Eval-mode CE and the seed's "accuracy loss": the fraction of wrong argmax predictions. With a
    task's "weight", both over the answers alone, and the sums of `losses.exact_match_sums`."""
    if "weight" not in batch:
        logits, losses = model.apply({"params": params}, batch["x"], batch["y"])
        return {"loss": losses["ce"], "accuracy_loss": jnp.mean(jnp.argmax(logits, -1) != batch["y"])}
    logits, losses = model.apply({"params": params}, batch["x"], batch["y"], weights_BxT=batch["weight"])
    sums = losses_lib.exact_match_sums(logits, batch["y"], batch["weight"])
    return {"loss": losses["ce"], "accuracy_loss": 1.0 - sums["answers_right"] / jnp.maximum(sums["answers"], 1.0),
            **sums}


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


def compiled_memory_bytes(compiled) -> int:
    """Device memory a compiled step needs by XLA's own buffer assignment, on any backend: its
    arguments, outputs and temporaries, less the outputs written into donated arguments."""
    mem = compiled.memory_analysis()
    return mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes


def pick_micro_batch_size(c: ml_collections.ConfigDict, model, optimizer, mesh: Mesh, abstract_state) -> int:
    """`c.micro_batch_size` if set; on GPU, the largest split of the effective batch whose compiled
    step fits in 90% of device memory (XLA's own memory analysis); elsewhere batch_size."""
    if c.micro_batch_size is not None or jax.default_backend() != "gpu":
        return c.micro_batch_size or c.batch_size
    rows, n_dev, T = c.batch_size * c.gradient_accumulation_steps, mesh.size, c.model_config.context_size
    limit = 0.9 * (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit", float("inf"))
    batch = {k: jax.ShapeDtypeStruct((rows, T), jnp.int32, sharding=mesh_lib.rows(mesh)) for k in "xy"}
    if tasks.task_name(c.dataset) is not None:  # the step a task runs: with its loss mask
        batch["weight"] = jax.ShapeDtypeStruct((rows, T), jnp.float32, sharding=mesh_lib.rows(mesh))
    for micro in sorted((m for m in range(n_dev, rows + 1, n_dev) if rows % m == 0), reverse=True):
        step = compile_train_step(c, model, optimizer, mesh, micro)
        need = compiled_memory_bytes(
            step.lower(abstract_state["params"], abstract_state["opt_state"], batch, jax.random.key(0)).compile())
        if need < limit:
            logging.info("micro_batch_size %d (%d micro-batches a step): %.1f GiB of %.1f", micro, rows // micro,
                         need / 2**30, limit / 0.9 / 2**30)
            return micro
    return n_dev


class DevicePrefetch:
    """Keeps `size` batches already sent to their devices (transfers are asynchronous), so a step
    never waits on a host-to-device copy. Its checkpointable state (what the checkpoint
    saves) is the state before the next batch it will yield, not after the ones it holds ahead, so
    a resumed run sees exactly the stream a straight run sees."""

    def __init__(self, iterator, to_device, size: int = 2):
        self.iterator, self.to_device, self.size, self.queue = iterator, to_device, size, collections.deque()

    def __iter__(self):
        return self

    def __next__(self):
        while len(self.queue) < self.size:
            state = self.iterator.get_state()
            self.queue.append((state, self.to_device(next(self.iterator))))
        return self.queue.popleft()[1]

    def get_state(self) -> dict:
        return dict(self.queue[0][0] if self.queue else self.iterator.get_state())

    def set_state(self, state: dict) -> None:
        self.iterator.set_state(state)
        self.queue.clear()


class Preemption:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint and exits cleanly.

    With several processes the signal may reach one of them, or all at different steps; a process
    that stopped alone would leave the others waiting in a collective for good. So each step also
    dispatches a vote, the global max of every process's flag (asynchronous, like the step), and
    every process reads step i's vote at the same point of step i + 1: they stop after the same step.
    """

    def __init__(self, mesh: Mesh):
        self.signal, self.mesh = None, mesh
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        self._max = jax.jit(jnp.max, out_shardings=mesh_lib.replicated(mesh)) if jax.process_count() > 1 else None

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def vote(self) -> jax.Array | None:
        """This step's vote: whether any process was signalled (None on one process, where the flag is enough)."""
        if self._max is None:
            return None
        flags = np.full(self.mesh.local_mesh.size, self.signal is not None, np.int32)
        return self._max(jax.make_array_from_process_local_data(mesh_lib.rows(self.mesh), flags))

    def agreed(self, vote) -> bool:
        """Whether to stop now: the fetched `vote` of an earlier step (every process reads the same one),
        or on one process the flag itself."""
        return self.signal is not None if self._max is None else bool(vote is not None and vote)

    @property
    def reason(self) -> str:
        """What stopped the run, for the log and main's last line."""
        return self.signal or "a signal to another process"

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Progress:
    """A tqdm bar on a terminal; in a log file (stderr not a tty), a plain line at most every
    `every_s` seconds instead of a bar's hundreds of carriage-return updates. Process 0 only."""

    def __init__(self, start: int, total: int, every_s: float = 30.0):
        self.enabled, self.tty = jax.process_index() == 0, sys.stderr.isatty()
        self.total, self.every_s, self.last_line = total, every_s, time.perf_counter()
        self.bar = tqdm.tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                             disable=not (self.enabled and self.tty))

    def update(self, step: int, metrics: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(ce=f"{metrics['ce']:.3f}", tok_s=f"{metrics['tokens_per_s']:,.0f}", refresh=False)
        now = time.perf_counter()
        if self.enabled and not self.tty and now - self.last_line >= self.every_s:
            self.last_line = now
            self.write(f"step {step}/{self.total}: ce {metrics['ce']:.4f}, {metrics['tokens_per_s']:,.0f} tokens/s")

    def write(self, line: str) -> None:
        if self.enabled:
            self.bar.write(line, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


@dataclasses.dataclass
class Outcome:
    """How train_and_evaluate ended: what main reports."""
    step: int  # the step the workdir's latest checkpoint now holds
    estimate: dict  # the last estimate (train_loss, val_loss, accuracy losses, "step"); {} before any
    stopped_by: str | None = None  # "SIGTERM" or "SIGINT" when a signal stopped the run
    already_finished: bool = False  # the workdir's run had already reached train_steps: nothing trained


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _data_files(c: ml_collections.ConfigDict) -> tuple[str, str]:
    """The train and val token files; process 0 prepares the built-in corpus before the others look."""
    if jax.process_index() == 0:
        prepare.ensure_data(c)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("data ready")
    return data.split_paths(c)


def train_and_evaluate(c: ml_collections.ConfigDict, workdir: str, fresh: bool = False) -> Outcome:
    """Trains `c` in `workdir`, holding its lock, from its newest intact checkpoint if it has one."""
    config_lib.validate(c)
    tasks.check(c)
    mesh = mesh_lib.make_mesh(c)
    mesh_lib.check_rows("batch_size", c.batch_size, mesh)
    with rundir.locked(workdir):
        if jax.process_index() == 0:
            if fresh:
                rundir.start_over(workdir)
            for path in rundir.clean_interrupted(workdir):
                logging.warning("removed %s, left by an interrupted save", path)
            rundir.set_aside_damaged_best(workdir)
        return _train(c, workdir, mesh)


def _train(c: ml_collections.ConfigDict, workdir: str, mesh: Mesh) -> Outcome:
    replicated, T = mesh_lib.replicated(mesh), c.model_config.context_size
    rows = c.batch_size * c.gradient_accumulation_steps
    is_main = jax.process_index() == 0
    logging.info("mesh: data %d x fsdp %d", mesh.shape["data"], mesh.shape["fsdp"])

    task = tasks.task_name(c.dataset)
    if task is None:
        train_path, val_path = _data_files(c)
        data_record = rundir.data_record(train_path, val_path)
    else:  # generated on the fly: no files to record
        data_record = {}
        if jax.process_count() > 1:  # as _data_files does: the workdir is clean before anyone reads it
            multihost_utils.sync_global_devices("workdir ready")
    latest, best = rundir.checkpoints(workdir, keep=c.keep_checkpoints), rundir.best(workdir)
    rundir.check_same_run(workdir, c, data_record, *rundir.saved_run(workdir, latest))

    to_global = functools.partial(mesh_lib.to_global, mesh)
    if task is None:
        vocab = c.model_config.alphabet_size
        tokens = {"train": data.load_tokens(train_path, vocab, T + 2), "val": data.load_tokens(val_path, vocab, T + 2)}
        stream = data.train_iterator(train_path, T, rows, c.random_seed, mesh_lib.process_rows(rows))
    else:
        stream = data.task_iterator(c, rows, c.random_seed, mesh_lib.process_rows(rows))
    train_iter = DevicePrefetch(stream, to_global)
    model, optimizer, schedule = model_lib.from_config(c), optim.make_optimizer(c), optim.learning_rate(c)

    abstract = abstract_state(model, optimizer, mesh)
    restored = checkpoint.restore_latest(latest, abstract, train_iter, os.path.join(workdir, rundir.DAMAGED))
    if restored is None:
        state, start = init_on_mesh(jax.random.key(c.random_seed), abstract, model=model, optimizer=optimizer), 0
    else:
        state, start = restored
        logging.info("resuming from step %d in %s", start, workdir)
    if start >= c.train_steps:
        latest.close()
        best.close()
        return Outcome(start, rundir.last_estimate(workdir), already_finished=True)
    if is_main:
        rundir.accept(workdir, c, data_record)

    micro = pick_micro_batch_size(c, model, optimizer, mesh, abstract)
    mesh_lib.check_rows("micro_batch_size", micro, mesh)
    step_fn = compile_train_step(c, model, optimizer, mesh, micro)
    eval_fn = jax.jit(functools.partial(eval_step, model=model))
    finite_fn = jax.jit(_all_finite)
    dropout_key = jax.random.key(c.random_seed + 1)

    def last_good() -> str:
        step = latest.latest_step()
        return f"the last finite checkpoint is step {step} in {latest.directory}" if step is not None else \
            "no checkpoint was saved"

    def estimate(step: int) -> dict:
        """The seed's estimate: est_steps random batches of each split (of a task: fresh sequences);
        a task's also gives its exact-match accuracies, from the batches' summed counts."""
        out = {}
        for split in ("train", "val"):
            seed, process_rows = (c.random_seed, step, int(split == "val")), mesh_lib.process_rows(c.batch_size)
            batches = data.random_batches(tokens[split], T, c.batch_size, c.est_steps, seed, process_rows) \
                if task is None else data.task_batches(c, c.batch_size, c.est_steps, seed, process_rows)
            sums = [jax.device_get(eval_fn(state["params"], to_global(b))) for b in batches]
            out[f"{split}_loss"] = float(np.mean([s["loss"] for s in sums]))
            out[f"{split}_accuracy_loss"] = float(np.mean([s["accuracy_loss"] for s in sums]))
            if task is not None:
                totals = {k: sum(float(s[k]) for s in sums) for k in sums[0] if k not in ("loss", "accuracy_loss")}
                out.update({f"{split}_{k}": v for k, v in losses_lib.exact_match(totals).items()})
        return out

    def save(step: int, est: dict | None) -> None:
        """best/ first, then checkpoints/: a kill between them leaves checkpoints/ one interval behind,
        and the re-run recomputes this step's best. Never a non-finite state."""
        state["step"] = jax.device_put(np.int32(step), replicated)  # a global array, as on every host
        try:
            if est is not None:
                checkpoint.save_best(best, step, state, c, est["val_loss"])
            checkpoint.save(latest, step, state, c, train_iter)
        except OSError as e:
            raise TrainError(f"saving step {step} in {workdir} failed ({e.strerror or e}); {last_good()}") from None
        logging.info("saved checkpoint at step %d", step)

    writer, preemption, progress = rundir.MetricsWriter(workdir, start), Preemption(mesh), Progress(start, c.train_steps)
    outcome, pending, t_last = Outcome(start, rundir.last_estimate(workdir)), None, time.perf_counter()

    def record(i: int, metrics, vote) -> bool:
        """Fetches step i's metrics (the next step is already dispatched), stops on NaN/inf, logs;
        whether the processes agreed to stop (Preemption)."""
        nonlocal t_last
        metrics, vote = jax.device_get((metrics, vote))
        metrics = {k: float(v) for k, v in metrics.items()}
        if not np.isfinite(metrics["loss"]):
            raise TrainError(f"loss is {metrics['loss']} at step {i + 1}; stopped without saving it; {last_good()}")
        now = time.perf_counter()
        metrics.update(step_time_s=now - t_last, tokens_per_s=rows * T / (now - t_last))
        t_last = now
        progress.update(i + 1, metrics)
        if (i + 1) % c.log_interval == 0:
            writer.write(i + 1, {**metrics, "lr": schedule(i)})
        return preemption.agreed(vote)

    try:
        for i in range(start, c.train_steps):
            params, opt_state, metrics = step_fn(state["params"], state["opt_state"], next(train_iter),
                                                 jax.random.fold_in(dropout_key, i))
            state = {"step": state["step"], "params": params, "opt_state": opt_state}
            stop = record(*pending) if pending is not None else preemption.agreed(None)
            pending = (i, metrics, preemption.vote())
            boundary = (i + 1) % c.est_interval == 0 or i + 1 == c.train_steps
            if not (boundary or stop):
                continue
            stop = record(*pending) or stop
            pending, est = None, None
            if not bool(finite_fn(state)):
                raise TrainError(f"step {i + 1} produced non-finite parameters; stopped without saving them; "
                                 f"{last_good()}")
            if boundary:
                est = estimate(i + 1)
                if not np.isfinite(est["val_loss"]):
                    raise TrainError(f"val loss is {est['val_loss']} at step {i + 1}; stopped without saving it; "
                                     f"{last_good()}")
                writer.write(i + 1, est)
                outcome.estimate = {**est, "step": i + 1}
                progress.write(f"step {i + 1}: train loss {est['train_loss']:.4f}, val loss {est['val_loss']:.4f}")
            save(i + 1, est)
            outcome.step = i + 1
            if stop:
                logging.info("stopped by %s: checkpoint saved at step %d, exiting", preemption.reason, i + 1)
                outcome.stopped_by = preemption.reason
                break
            t_last = time.perf_counter()
    finally:
        progress.close()
        writer.close()
        preemption.restore()
        latest.close()
        best.close()
    return outcome
