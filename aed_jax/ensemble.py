"""Ensembles: K runs that share every shape (seeds, peak learning rates, weight decay, ...) trained as the
members of one vmapped step, in one compiled program and one process.

Each member is the run it would be alone: its parameters initialised from its own seed, its own data
stream, dropout keys and estimate batches (from its seed), its own learning-rate schedule (each step's
rate computed on the host, an argument of the step as for a single run) and, inside the step, its own
weight decay, Adam betas and embedding-loss coefficient as arrays over the members
(`config.ENSEMBLE_KEYS`; every other key is shared, so one program serves them all). `train.train_step`,
the single run's pure step, is vmapped over the members, `metrics.eval_step` likewise; the members'
arrays are stacked on a leading axis split over the `member` axis of the mesh (`mesh.ensemble_mesh`).

Each member writes its own run folder, `<root>/<name>` (`config.member_configs` names it by its values),
exactly as a single run does (config.json, metrics.jsonl, checkpoints/, best/), so every reader
(evaluate, sample, analyze, compare, `main` resuming it alone) takes a member for an ordinary run.

A member whose loss or parameters turn NaN or inf is frozen inside the step (its parameters and
optimizer state keep their last finite values, chosen per member with `jnp.where`), reported (a
`diverged` line in its metrics.jsonl, its own closing line) and never saved again; a NaN val loss
freezes it too; the others train on. A resumed ensemble restores every member from the newest step
they all have, and leaves out a member that diverged in an earlier run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from aed_jax import checkpoint
from aed_jax import config as config_lib
from aed_jax import data
from aed_jax import errors
from aed_jax import mesh as mesh_lib
from aed_jax import metrics
from aed_jax import model as model_lib
from aed_jax import optim
from aed_jax import preemption
from aed_jax import prepare
from aed_jax import progress
from aed_jax import rundir
from aed_jax import tasks
from aed_jax import train

DIVERGED = "diverged"  # the metrics.jsonl key of the line that says a member diverged at its step


class EnsembleError(errors.UserError):
    """An ensemble that cannot train as asked: one line."""


@dataclasses.dataclass
class Member:
    """How one member ended: what `main` reports, one line each."""
    name: str
    workdir: str
    step: int  # the step its latest checkpoint holds
    estimate: dict  # its last estimate ("step" included); {} before any
    diverged: str | None = None  # what froze it: "loss is nan at step 12", ...
    already_finished: bool = False


@dataclasses.dataclass
class Outcome:
    """How `train_ensemble` ended."""
    members: list[Member]
    stopped_by: str | None = None  # "SIGTERM" or "SIGINT" when a signal stopped the ensemble
    times: dict = dataclasses.field(default_factory=dict)  # progress.Phases.record of the whole ensemble


def step_hyper(configs: list[ml_collections.ConfigDict]) -> dict[str, np.ndarray]:
    """{key: float32 [K]} of the step's keys (`config.ENSEMBLE_STEP_KEYS`) in which the members differ; a key
    they share stays the config's Python number inside the step, as in a single run's program."""
    values = {key: [dict(config_lib.leaves(c)).get(key) for c in configs] for key in config_lib.ENSEMBLE_STEP_KEYS}
    return {key: np.asarray(v, np.float32) for key, v in values.items() if len(set(v)) > 1}


def member_step(c: ml_collections.ConfigDict, mesh: Mesh, abstract: dict, micro_batch_size: int):
    """The jitted ensemble step (params, opt_state, active [K], batch [K, N, T], dropout keys [K], lr [K],
    hyper {key: [K]}) -> (params, opt_state, active, metrics [K]): `train.train_step` vmapped over the
    members (over the mesh's member axis), each member's step keys (`hyper`) standing in for the config's.
    A member not active, or whose loss or new parameters are not finite, keeps its state; `active` comes
    back False for it. `abstract` is one member's state (`train.abstract_state` on this mesh)."""
    cfg = model_lib.ModelConfig.from_config(c)
    rows = c.batch_size * c.gradient_accumulation_steps
    data_sharding = NamedSharding(mesh, P(None, mesh_lib.AXES))

    def one(params, opt_state, batch, rng, lr, hyper):
        coeff = hyper.get("model_config.embedding_loss_coeff")
        model = model_lib.make_model(cfg if coeff is None else dataclasses.replace(cfg, embedding_loss_coeff=coeff))
        optimizer = optim.make_optimizer(c, **{k: v for k, v in hyper.items() if k in ("beta1", "beta2", "weight_decay")})
        return train.train_step(params, opt_state, batch, rng, lr, model=model, optimizer=optimizer,
                                accum_steps=rows // micro_batch_size, data_sharding=data_sharding)

    def step(params, opt_state, active_K, batch, rng_K, lr_K, hyper):
        new_params, new_opt_state, step_metrics = jax.vmap(one, spmd_axis_name=mesh_lib.MEMBER)(
            params, opt_state, batch, rng_K, lr_K, hyper)
        finite_K = jnp.isfinite(step_metrics["loss"]) & jax.vmap(_all_finite)(new_params)
        keep_K = active_K & finite_K

        def pick(new, old):
            return jnp.where(keep_K.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

        return (jax.tree_util.tree_map(pick, new_params, params), jax.tree_util.tree_map(pick, new_opt_state, opt_state),
                keep_K, step_metrics)

    shardings = jax.tree_util.tree_map(lambda a: mesh_lib.stacked(a.sharding), abstract)
    return jax.jit(step, out_shardings=(shardings["params"], shardings["opt_state"], mesh_lib.replicated(mesh),
                                        mesh_lib.replicated(mesh)), donate_argnums=(0, 1))


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


class _Stacked:
    """The members' host streams as one: each batch the members' batches stacked on a leading axis. Its
    position is every member's (one batch a step: {"next_index": k}, the same for all), so a member's
    checkpoint records the position its single run would."""

    def __init__(self, streams):
        self.streams = streams

    def __iter__(self):
        return self

    def __next__(self):
        batches = [next(s) for s in self.streams]
        return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

    def get_state(self) -> dict:
        return self.streams[0].get_state()

    def set_state(self, state: dict) -> None:
        for s in self.streams:
            s.set_state(state)


def diverged_before(workdir: str) -> int | None:
    """The step at which the run in `workdir` diverged as an ensemble's member (its metrics.jsonl says so);
    None when it did not."""
    path = os.path.join(workdir, rundir.METRICS)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and DIVERGED in row:
                return int(row["step"])
    return None


def train_ensemble(members: list[tuple[str, ml_collections.ConfigDict]], root: str, fresh: bool = False,
                   started: float | None = None, devices=None) -> Outcome:
    """Trains `members` (`config.member_configs`' (name, config) pairs) as one ensemble, member `name` in
    `<root>/<name>`, holding every member's lock, from the newest step every member has a checkpoint of,
    on `devices` (default: every device of this process)."""
    phases = progress.Phases(started)
    if jax.process_count() > 1:
        raise EnsembleError("an ensemble trains in one process (its members split over that host's devices); "
                            "train the members as separate runs on a cluster")
    configs = [c for _, c in members]
    for c in configs:
        config_lib.validate(c)
    c0 = configs[0]
    mesh = mesh_lib.ensemble_mesh(c0, len(members), devices)
    per_member = mesh.size // mesh.shape[mesh_lib.MEMBER]
    for key in ("batch_size", "micro_batch_size"):
        if c0[key] is not None and c0[key] % per_member:
            raise mesh_lib.MeshError(f"{key}={c0[key]} must be divisible by the {per_member} devices each member "
                                     f"gets ({len(members)} members on {mesh.size} devices)")
    workdirs = [os.path.join(root, name) for name, _ in members]
    with contextlib.ExitStack() as locks:
        for workdir in workdirs:
            locks.enter_context(rundir.locked(workdir))
            rundir.check_layout(workdir)
            rundir.tidy_for_training(workdir, fresh)
        if tasks.task_name(c0.dataset) is None:
            prepare.ensure_data(c0)
        outcome = _train(members, workdirs, mesh, phases)
    outcome.members.sort(key=lambda m: workdirs.index(m.workdir))  # in the order given, left-out members too
    return outcome


def _train(members, workdirs, mesh: Mesh, phases: progress.Phases) -> Outcome:
    out = []
    for (name, _), workdir in zip(members, workdirs):
        if (step := diverged_before(workdir)) is not None:
            logging.warning("member %s diverged at step %d in an earlier run (%s): left out", name, step, workdir)
            folder = os.path.join(workdir, rundir.CHECKPOINTS)
            saved = max((int(n) for n in os.listdir(folder) if n.isdigit()), default=0) if os.path.isdir(folder) else 0
            out.append(Member(name, workdir, saved, rundir.last_estimate(workdir),
                              f"diverged at step {step} in an earlier run, left out"))
    left_out = {m.workdir for m in out}
    live = [(name, c, w) for (name, c), w in zip(members, workdirs) if w not in left_out]
    if not live:
        return Outcome(out)
    names, configs, workdirs = [n for n, _, _ in live], [c for _, c, _ in live], [w for _, _, w in live]
    c0 = configs[0]
    T, rows = c0.model_config.context_size, c0.batch_size * c0.gradient_accumulation_steps
    task = tasks.task_name(c0.dataset)
    if task is None:
        train_path, val_path = data.split_paths(c0)
        data_record = rundir.data_record(train_path, val_path)
        tokens = {split: data.load_tokens(path, c0.model_config.alphabet_size, T + 2)
                  for split, path in (("train", train_path), ("val", val_path))}
        streams = [data.train_iterator(train_path, T, rows, c.random_seed) for c in configs]
    else:
        data_record, tokens = {}, None
        streams = [data.task_iterator(c, rows, c.random_seed) for c in configs]
    saves = [rundir.checkpoints(w, keep=c.keep_checkpoints) for c, w in zip(configs, workdirs)]
    bests = [rundir.best(w) for w in workdirs]
    for c, w, mngr in zip(configs, workdirs, saves):
        rundir.check_same_run(w, c, data_record, *rundir.saved_run(w, mngr))

    model, optimizer = model_lib.from_config(c0), optim.make_optimizer(c0)
    abstract = train.abstract_state(model, optimizer, mesh)  # one member's, on this mesh
    one_sharding = jax.tree_util.tree_map(lambda a: a.sharding, abstract)
    stacked_sharding = jax.tree_util.tree_map(mesh_lib.stacked, one_sharding)
    state, start = _restore(saves, workdirs, abstract, stacked_sharding, configs, model, optimizer)
    try:
        if start >= c0.train_steps:
            return Outcome(out + [Member(n, w, start, rundir.last_estimate(w), already_finished=True)
                                  for n, w in zip(names, workdirs)])
        for c, w in zip(configs, workdirs):
            rundir.accept(w, c, data_record)
        return _loop(names, configs, workdirs, mesh, phases, state, start, streams, tokens, (saves, bests),
                     abstract, one_sharding, stacked_sharding, model, out)
    finally:
        for mngr in saves + bests:
            mngr.close()


def _restore(saves, workdirs, abstract, stacked_sharding, configs, model, optimizer):
    """(the members' stacked state, the step it holds): each member's newest intact checkpoint at or before the
    oldest of them (the step they all have), or every member initialised from its seed where one has none."""
    found = [checkpoint.restore_latest(mngr, abstract, None, os.path.join(w, rundir.DAMAGED))
             for mngr, w in zip(saves, workdirs)]
    start = min(0 if f is None else f[1] for f in found)
    stack = jax.jit(lambda *trees: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees),
                    out_shardings=stacked_sharding)
    if start == 0:
        init = jax.jit(jax.vmap(functools.partial(train.init_state, model=model, optimizer=optimizer)),
                       out_shardings=stacked_sharding)
        with train.out_of_memory_line("the members' initialisation", train.INIT_REMEDY):
            return init(jnp.stack([jax.random.key(c.random_seed) for c in configs])), 0
    states = []
    for f, mngr, w in zip(found, saves, workdirs):
        if f[1] != start:
            f = checkpoint.restore_latest(mngr, abstract, None, os.path.join(w, rundir.DAMAGED), at_most=start)
            if f is None or f[1] != start:
                raise EnsembleError(f"{w} has no intact checkpoint at step {start}, where the other members resume: "
                                    "resume it alone with aed_jax.main, or pass --fresh")
        states.append(f[0])
    logging.info("resuming the ensemble from step %d", start)
    return stack(*states), start


def _loop(names, configs, workdirs, mesh, phases, state, start, streams, tokens, managers, abstract, one_sharding,
          stacked_sharding, model, out) -> Outcome:
    c0, K = configs[0], len(configs)
    T, rows = c0.model_config.context_size, c0.batch_size * c0.gradient_accumulation_steps
    replicated = mesh_lib.replicated(mesh)
    micro = c0.micro_batch_size or c0.batch_size
    hyper = jax.device_put(step_hyper(configs), replicated)
    step_fn = member_step(c0, mesh, abstract, micro)
    schedules = [optim.learning_rate(c) for c in configs]
    rates = jax.jit(lambda i: jnp.stack([jnp.asarray(s(i), jnp.float32) for s in schedules]))
    dropout_keys = jnp.stack([jax.random.key(c.random_seed + 1) for c in configs])
    fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))
    stream = _Stacked(streams)
    stream.set_state({"next_index": start})
    batches = data.DevicePrefetch(stream, lambda b: jax.device_put(b, mesh_lib.stacked(mesh_lib.batch_sharding(mesh))))
    eval_fn = jax.jit(jax.vmap(functools.partial(metrics.eval_step, model=model,
                                                 problems=tasks.problems_per_sequence(c0)),
                               spmd_axis_name=mesh_lib.MEMBER))
    evaluators = [metrics.Evaluator(c, model, mesh, tokens) for c in configs]
    take = jax.jit(lambda tree, m: jax.tree_util.tree_map(lambda a: a[m], tree),
                   out_shardings={"params": one_sharding["params"], "opt_state": one_sharding["opt_state"]})
    writers = [rundir.MetricsWriter(w, start) for w in workdirs]
    stopper = preemption.Preemption(mesh)
    shown = progress.Progress(start, c0.train_steps, _NoWriter(), lambda i: 0.0, c0.log_interval, K * rows * T,
                              model_lib.flops_per_token(abstract["params"], model.cfg), None)
    members = [Member(n, w, start, rundir.last_estimate(w)) for n, w in zip(names, workdirs)]
    active = np.ones(K, bool)
    active_dev = jax.device_put(active, replicated)
    params, opt_state, pending, stopped_by = state["params"], state["opt_state"], None, None

    def record(pending) -> None:
        i, step_metrics, keep, lr = jax.device_get(pending)
        logged = (i + 1) % c0.log_interval == 0
        timing = {}
        if active.any():
            shown.step(i + 1, timing := {"ce": float(np.mean(step_metrics["ce"][active]))})
        for m in np.flatnonzero(active):
            if not keep[m]:
                active[m] = False
                what = "loss" if not np.isfinite(step_metrics["loss"][m]) else "a parameter"
                members[m].diverged = f"{what} is {step_metrics['loss'][m] if what == 'loss' else 'not finite'} " \
                                      f"at step {i + 1}"
                writers[m].write(i + 1, {DIVERGED: 1.0})
                logging.warning("member %s: %s; frozen, nothing of it saved from now on (its last checkpoint is "
                                "step %d)", names[m], members[m].diverged, members[m].step)
            elif logged:
                writers[m].write(i + 1, {**{k: float(v[m]) for k, v in step_metrics.items()},
                                         "step_time_s": timing["step_time_s"],
                                         "tokens_per_s": timing["tokens_per_s"] / K, "lr": float(lr[m])})

    phases.enter("steps")
    try:
        with train.out_of_memory_line("the ensemble's step", train.STEP_REMEDY):
            for i in range(start, c0.train_steps):
                lr = rates(np.int32(i))
                params, opt_state, active_dev, step_metrics = step_fn(
                    params, opt_state, active_dev, next(batches), fold(dropout_keys, i), lr, hyper)
                if pending is not None:
                    record(pending)
                pending = (i, step_metrics, active_dev, lr)
                stop = stopper.agreed(None)
                boundary = (i + 1) % c0.est_interval == 0 or i + 1 == c0.train_steps
                save_now = (i + 1) % (c0.save_interval or c0.est_interval) == 0 or i + 1 == c0.train_steps
                if not (boundary or stop):
                    continue
                record(pending)
                pending, estimates = None, [None] * K
                if boundary and active.any():
                    phases.enter("estimates")
                    with train.out_of_memory_line("the estimate", train.ESTIMATE_REMEDY):
                        estimates = _estimate(eval_fn, evaluators, params, i + 1, mesh)
                    for m in np.flatnonzero(active):
                        est = estimates[m]
                        if not np.isfinite(est["val_loss"]):
                            active[m], estimates[m] = False, None
                            members[m].diverged = f"val loss is {est['val_loss']} at step {i + 1}"
                            writers[m].write(i + 1, {DIVERGED: 1.0})
                            logging.warning("member %s: %s; frozen", names[m], members[m].diverged)
                            continue
                        writers[m].write(i + 1, est)
                        members[m].estimate = {**est, "step": i + 1}
                    active_dev = jax.device_put(active, replicated)
                    shown.write(f"step {i + 1}: val loss " + ", ".join(
                        f"{names[m]} {estimates[m]['val_loss']:.4f}" for m in np.flatnonzero(active)))
                if save_now or stop:
                    phases.enter("saves")
                    step_array = jax.device_put(np.int32(i + 1), replicated)
                    for m in np.flatnonzero(active):
                        one = {"step": step_array, **take({"params": params, "opt_state": opt_state}, m)}
                        _save(configs[m], workdirs[m], (managers[0][m], managers[1][m]), i + 1, one, batches,
                              estimates[m])
                        members[m].step = i + 1
                    phases.enter("steps")
                if stop:
                    stopped_by = stopper.reason
                    logging.info("stopped by %s: the members' checkpoints saved at step %d, exiting", stopped_by, i + 1)
                    break
                if not active.any():
                    break
                shown.restart_clock()
        times = phases.record()
        for m, writer in enumerate(writers):
            writer.write(members[m].step, times)
    finally:
        try:
            shown.close()
            for writer in writers:
                writer.close()
        finally:
            stopper.restore()
    return Outcome(out + members, stopped_by, times)


class _NoWriter:
    """The ensemble's progress bar logs nothing itself: each member's lines go to its own metrics.jsonl."""

    def write(self, step: int, values: dict) -> None:
        pass


def _estimate(eval_fn, evaluators, params, step: int, mesh: Mesh) -> list[dict]:
    """Each member's estimate at `step`, on the batches its single run draws (`metrics.Evaluator.batches`),
    the members' batches stacked and evaluated together."""
    sharding = mesh_lib.stacked(mesh_lib.batch_sharding(mesh))
    sums = [{} for _ in evaluators]
    for split in ("train", "val"):
        for m in range(len(evaluators)):
            sums[m][split] = []
        for group in zip(*(e.batches(split, step) for e in evaluators)):
            batch = jax.device_put({k: np.stack([b[k] for b in group]) for k in group[0]}, sharding)
            result = jax.device_get(eval_fn(params, batch))
            for m in range(len(evaluators)):
                sums[m][split].append({k: v[m] for k, v in result.items()})
    return [metrics.estimate(s) for s in sums]


def _save(c, workdir: str, managers: tuple, step: int, state: dict, stream, est: dict | None) -> None:
    """A member's best/ (when its estimate ranks first) then its checkpoints/, as a single run saves them."""
    saves, best_saves = managers
    try:
        if est is not None:
            checkpoint.save_best(best_saves, step, state, c, est)
        checkpoint.save(saves, step, state, c, stream)
    except OSError as e:
        raise EnsembleError(errors.write_failed(e, f"saving step {step} in {workdir}",
                                                "run the same command to resume")) from None
