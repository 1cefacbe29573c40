"""Orbax checkpoints of a run: `<workdir>/checkpoints` keeps the latest few, `<workdir>/best` the lowest val loss.

A checkpoint holds three items: `state` (params, opt_state, step), `data` (the grain iterator's
state, so a resumed run continues the same stream) and `config` (the run config as JSON). Orbax
writes each step to a temporary folder and renames it when complete, so a run killed mid-save
leaves the previous checkpoint as the latest one.
"""
from __future__ import annotations

import os

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

LATEST, BEST = "checkpoints", "best"


class CheckpointError(ValueError):
    """A missing or unusable checkpoint: the message is one line naming the workdir or step."""


def manager(workdir: str, kind: str = LATEST, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
    """The manager of `<workdir>/<kind>`; `best` keeps one step, chosen by the lowest `val_loss`."""
    best = kind == BEST
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1 if best else keep, best_fn=(lambda m: m["val_loss"]) if best else None, best_mode="min",
        enable_async_checkpointing=False, create=create)
    handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler()}
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, kind)), options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, state, config: ml_collections.ConfigDict,
         data_iter=None, metrics: dict | None = None) -> None:
    """Saves `state`, the config and (when given) the data iterator at `step`, synchronously."""
    items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config.to_dict())}
    if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iter=None):
    """Restores the state into `abstract_state`'s shapes and shardings, and the data iterator in place.

    A checkpoint without a data item (written by `interop import`) leaves the iterator at its start.
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None and os.path.isdir(os.path.join(str(mngr.directory), str(step), "data")):
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return mngr.restore(step, args=ocp.args.Composite(**items))["state"]


def saved_config(mngr: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
    config = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    return ml_collections.ConfigDict(config)


def resolve_step(workdir: str, which: str | int = "latest") -> tuple[ocp.CheckpointManager, int]:
    """The manager and step for `which`: "latest", "best" or a step number; CheckpointError if absent."""
    if not os.path.isdir(workdir):
        raise CheckpointError(f"workdir {workdir!r} does not exist")
    kind = BEST if which == "best" else LATEST
    if not os.path.isdir(os.path.join(workdir, kind)):
        raise CheckpointError(f"workdir {workdir!r} has no {kind}/ checkpoints")
    mngr = manager(workdir, kind, create=False)
    steps = mngr.all_steps()
    if not steps:
        raise CheckpointError(f"workdir {workdir!r} has no checkpoints in {kind}/")
    if which in ("latest", "best"):
        return mngr, max(steps) if which == "latest" else (mngr.best_step() or max(steps))
    if str(which).isdigit() and int(which) in steps:
        return mngr, int(which)
    raise CheckpointError(f"workdir {workdir!r} has no checkpoint {which!r}; saved steps: {sorted(steps)}")


def restore_params(workdir: str, which: str | int = "latest"):
    """(params, config, step) from a run's checkpoint, without the optimizer state.

    Every array comes back as host numpy, so a checkpoint written on N devices loads on any other
    device count.
    """
    mngr, step = resolve_step(workdir, which)
    params_metadata = dict(mngr.item_metadata(step)["state"])["params"]
    abstract = {"params": jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), params_metadata)}
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
    with ocp.PyTreeCheckpointer() as checkpointer:  # a partial restore reads the params alone
        state = checkpointer.restore(os.path.join(str(mngr.directory), str(step), "state"),
                                     args=ocp.args.PyTreeRestore(abstract, as_numpy, partial_restore=True))
    return state["params"], saved_config(mngr, step), step
