"""Orbax I/O of a run's checkpoints: one folder of steps a manager (the run's folder layout is `rundir`'s).

A checkpoint holds four items: `state` (params, opt_state, step; each process writes its own
shards, and a restore reshards to whatever mesh asks), `checksums` (the crc32 of every array of the
state as written), `stream` (the data stream's position, {"next_index": k}: global, so a resumed
run continues the same stream on any number of processes) and `config` (the run config as JSON).
Orbax writes each step to a temporary folder and renames it when complete, so a run killed mid-save
leaves the previous checkpoint as the latest one; `clean_interrupted` removes the temporary folder
it leaves.

A file damaged after the save (a full disk, a bad copy, bit rot) either fails to restore or restores
different bytes; the checksums catch the second kind, which would otherwise load silently and
surface later as a NaN. The trainer resumes from the newest step that restores and verifies, and
moves each damaged one to the folder it is given (never deleted: it may still be worth rescuing);
readers (evaluate, sample, export) only report it, naming the intact steps.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import logging as std_logging
import math
import os
import shutil
import sys
import zlib

from absl import logging
import json

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from aed_jax import errors
from aed_jax import model as model_lib

CHECKSUMS, STREAM = "checksums", "stream"
LEGACY_DATA = os.path.join("data", "process_0-of-1.json")  # the stream's position, as one process saved it before


class CheckpointError(errors.UserError):
    """A missing or unusable checkpoint: the message is one line naming the workdir or step."""


class Damaged(Exception):
    """A checkpoint that fails to restore or to verify; the message is the cause, in one line."""


def manager(directory: str, keep: int = 3, best: bool = False, create: bool = True) -> ocp.CheckpointManager:
    """The manager of the steps in `directory`: the newest `keep`, or with `best` the best by `best_rank`.

    With create=False, a reader's: it writes nothing (not even orbax's root metadata) and waits for no
    other process. orbax's managers meet every process at a barrier on creation and on each restore;
    a reader runs on one process of a job (process 0's closing samples, `evaluate`), so there it is
    a manager of this process alone, and the others, never joining, cannot hang it."""
    processes = {} if create else {"multiprocessing_options": _this_process_alone()}
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1 if best else keep, best_fn=best_rank if best else None, best_mode="min",
        enable_async_checkpointing=False, create=create, save_root_metadata=create, **processes)
    handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
                CHECKSUMS: ocp.JsonCheckpointHandler(), STREAM: ocp.JsonCheckpointHandler()}
    with _quiet():  # a step's unreadable _CHECKPOINT_METADATA is logged here; readers and the trainer report it
        return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


def _this_process_alone() -> ocp.options.MultiprocessingOptions:
    """A reader's orbax options: this process is the whole job, so orbax's barriers wait for no other."""
    return ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})


def _host(leaf) -> np.ndarray:
    """A leaf's value on this host: one replica of a replicated global array, which every process holds."""
    if isinstance(leaf, jax.Array):
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        if not leaf.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)


def checksums(tree) -> dict[str, int]:
    """{"params/..." path: crc32 of the array's bytes} for every leaf of `tree`."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.ascontiguousarray(_host(leaf))
        out[jax.tree_util.keystr(path, simple=True, separator="/")] = zlib.crc32(array.reshape(-1).view(np.uint8))
    return out


def _json_crc32(value) -> int:
    """The crc32 of a JSON item's canonical text: a damaged byte that still parses (a changed digit)
    changes it."""
    return zlib.crc32(json.dumps(value, sort_keys=True).encode())


def _verify_items(recorded: dict | None, config: dict, position: dict | None) -> None:
    """Damaged when a step's config item, or its stream `position`, is not what was saved (`recorded`:
    its checksums item): a damaged byte that still parses and fits (a changed digit) passes every other
    check. Run last, so that what the other checks can name is named; checkpoints from before item
    checksums pass."""
    items = (recorded or {}).get("items", {})
    for name, value in (("config", config), (STREAM, position)):
        if value is not None and items.get(name) is not None and _json_crc32(value) != items[name]:
            raise Damaged(f"{name}: checksum mismatch")


def _verify(tree, recorded: dict | None) -> None:
    """Damaged naming the first array of `tree` whose bytes differ from the checksum recorded at save."""
    if recorded is None:  # written before checkpoints carried checksums
        logging.debug("checkpoint without checksums: not verified")
        return
    expected = recorded["crc32"]
    for path, crc in checksums(tree).items():
        if path not in expected:
            raise Damaged(f"no checksum recorded for {path}")
        if crc != expected[path]:
            raise Damaged(f"checksum mismatch in {path}")


def _step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
    return os.path.join(str(mngr.directory), str(step))


def save(mngr: ocp.CheckpointManager, step: int, state, config: ml_collections.ConfigDict,
         data_iter=None, metrics: dict | None = None) -> None:
    """Saves `state`, its checksums, the config and (when given) the data iterator's position at
    `step`, synchronously; a `step` already there (left by an interrupted run being re-run) is replaced."""
    recorded = {"crc32": checksums(state), "items": {"config": _json_crc32(config.to_dict())}}
    items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config.to_dict())}
    if data_iter is not None:
        position = data_iter.get_state()
        items[STREAM] = ocp.args.JsonSave(position)
        recorded["items"][STREAM] = _json_crc32(position)
    items[CHECKSUMS] = ocp.args.JsonSave(recorded)
    if step in mngr.all_steps():
        mngr.delete(step)
    try:
        with _quiet():  # orbax logs a failed write's traceback from its threads; the caller says it in a line
            mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
            mngr.wait_until_finished()
    except ValueError as e:  # tensorstore reports a failed write (a full disk) as a ValueError
        if "RESOURCE_EXHAUSTED" not in str(e) and "No space left" not in str(e):
            raise
        _drop_failed_save(mngr)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
    except OSError:
        _drop_failed_save(mngr)
        raise


def _drop_failed_save(mngr: ocp.CheckpointManager) -> None:
    """Removes what a failed save wrote (its temporary folder): nothing half-written left, its space back."""
    if jax.process_index() == 0:
        with contextlib.suppress(OSError):
            clean_interrupted(str(mngr.directory))


# An estimate's numbers that best/ records with a step, and ranks it by (a corpus run's estimate has no accuracy).
BEST_METRICS = ("val_loss", "val_token_accuracy")


def best_rank(metrics: dict) -> tuple[float, float]:
    """Where a step of best/ ranks, by its recorded `metrics`; the lowest is the best. A task's run by val
    token accuracy, highest first (the task is scored by its answers, and val loss can disagree: a step
    can be surer of the answers it gets right and get fewer right), ties broken by val loss; a corpus
    run records no accuracy, so its val loss alone decides, as in the seed. A step saved before best/
    recorded accuracies counts as accuracy 0: a resumed task run's first estimate with one replaces it."""
    return -float(metrics.get("val_token_accuracy", 0.0)), float(metrics["val_loss"])


def best_metrics(mngr: ocp.CheckpointManager) -> dict | None:
    """The recorded metrics of the step `best/` keeps; None when it keeps none (or one without metrics)."""
    step = mngr.best_step()
    return (mngr.metrics(step) or None) if step is not None else None


def save_best(mngr: ocp.CheckpointManager, step: int, state, config: ml_collections.ConfigDict,
              estimate: dict) -> bool:
    """Saves `step` to `best/` when its `estimate`'s BEST_METRICS are finite and rank before the kept
    best's (`best_rank`); whether it saved.

    Orbax deletes the previous best only once the new one is complete, so a kill mid-save keeps
    it; the trainer saves the best before the latest checkpoint, so its re-run reaches this step again.
    """
    metrics = {key: float(estimate[key]) for key in BEST_METRICS if key in estimate}
    kept = best_metrics(mngr)
    if not all(map(math.isfinite, metrics.values())) or (kept is not None and best_rank(metrics) >= best_rank(kept)):
        return False
    save(mngr, step, state, config, metrics=metrics)
    return True


def clean_interrupted(directory: str) -> list[str]:
    """Removes the temporary folders interrupted saves left in `directory`; their paths.

    Only the trainer calls it, holding the workdir's lock, so no save is in progress. Orbax's
    `cleanup_tmp_directories` option removes the same folders, but in the background of the
    manager's constructor and without saying which; this uses orbax's own test of what is
    temporary, and returns the paths for the log.
    """
    removed = []
    if os.path.isdir(directory):
        for tmp in ocp.path.step.all_temporary_paths(directory):
            path = str(tmp.get())
            shutil.rmtree(path)
            removed.append(path)
    return sorted(removed)


def _json_file(path: str, label: str):
    """(the parsed JSON of `path`, None), or (None, what is wrong, for a Damaged line) when it cannot be
    read or parsed; (None, None) when there is no such file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), None
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        return None, f"{label}: {type(e).__name__}: {' '.join(str(e).split())[:120]}"


def _unreadable_step_metadata(step_dir: str) -> str | None:
    """What is wrong with the step's `_CHECKPOINT_METADATA` (orbax's record of the step, which it reads,
    logging an ERROR with the file's content when it cannot, whenever a manager is built); None if
    nothing is (or it is absent)."""
    value, why = _json_file(os.path.join(step_dir, "_CHECKPOINT_METADATA"), "_CHECKPOINT_METADATA")
    if why or value is None or isinstance(value, dict):
        return why
    return "_CHECKPOINT_METADATA: not a JSON object"


def damaged_metrics(directory: str) -> dict[int, str]:
    """{step: what is wrong} for each step in `directory` (a best-keeping one) whose metrics orbax cannot
    use: not a JSON object with a finite number `val_loss` (and `val_token_accuracy`, when there is one),
    or an unreadable `_CHECKPOINT_METADATA`.
    Orbax reads every step's metrics when a manager is built, and best_fn compares them, so one such
    file would stop every start, and every reader."""
    found = {}
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        path = os.path.join(directory, name, "metrics", "metrics")
        if not name.isdigit():
            continue
        if why := _unreadable_step_metadata(os.path.join(directory, name)):
            found[int(name)] = why
            continue
        if not os.path.isfile(path):
            continue
        value, why = _json_file(path, "metrics")
        if why:
            found[int(name)] = why
            continue
        value = value if isinstance(value, dict) else {}
        for key in (k for k in BEST_METRICS if k == "val_loss" or k in value):  # a corpus run records no accuracy
            number = value.get(key)
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
                found[int(name)] = f"metrics: {key} is {number!r}, not a finite number"
                break
    return found


def move_aside(directory: str, step: int, damaged_dir: str) -> str:
    """Renames step `step` of `directory` to `<damaged_dir>/<folder>-<step>-<time>`, outside the folder
    orbax manages; the new path. Process 0 moves it; every process returns once it has."""
    kind = os.path.basename(os.path.normpath(directory))
    target = os.path.join(damaged_dir, f"{kind}-{step}-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}")
    if jax.process_index() == 0:
        os.makedirs(damaged_dir, exist_ok=True)
        os.rename(os.path.join(directory, str(step)), target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"moved aside {kind} {step}")
    return target


def _cause(e: BaseException, step_dir: str) -> str:
    """One line of at most 200 characters for a warning or an error: the innermost exception (what
    tensorstore or zstd found, not orbax's wrapper), paths relative to the step's folder."""
    while (inner := e.__cause__ or e.__context__) is not None and not isinstance(inner, StopIteration):
        e = inner  # (json's decoder raises its error in the context of an internal StopIteration: not a cause)
    text = " ".join(str(e).replace(step_dir + os.sep, "").replace(step_dir, ".").split()) or "no message"
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= 200 else text[:197] + "..."


class _DropOrbaxErrors(std_logging.Filter):
    """Orbax and asyncio log the failure of a damaged checkpoint's reads themselves; the caller
    reports it in one line instead."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not (record.name == "asyncio" or any(f"{os.sep}{lib}{os.sep}" in record.pathname
                                                    for lib in ("orbax", "grain", "tensorstore")))


class _DropRestoreDebris:
    """An unraisable-exception hook that drops what a failed restore leaves behind. When one read of
    a damaged checkpoint fails, orbax closes its event loop with the other reads still pending:
    each later completion raises "Event loop is closed" in a tensorstore thread, and each abandoned
    read coroutine raises when it is garbage-collected; Python prints every one as a traceback
    (dozens), at any later time. Everything else goes to the previous hook."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        closed_loop = unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
        code = getattr(unraisable.object, "cr_code", None)
        if not (closed_loop or (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename)):
            self.previous(unraisable)


class _DropAbandonedFutures(std_logging.Filter):
    """The asyncio side of the same debris: an abandoned read's future that held an exception logs
    "Future exception was never retrieved" when it is garbage-collected, which may be long after the
    restore returned. This project runs no event loop of its own, so every such record is orbax's."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not str(record.msg).partition("\n")[0].endswith("exception was never retrieved")


@contextlib.contextmanager
def _quiet():
    """While saving or restoring: no orbax, grain or asyncio log record (a failure is the caller's one
    line); for good: no debris of a failed restore."""
    if not isinstance(sys.unraisablehook, _DropRestoreDebris):
        sys.unraisablehook = _DropRestoreDebris(sys.unraisablehook)
    asyncio_logger = std_logging.getLogger("asyncio")
    if not any(isinstance(f, _DropAbandonedFutures) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_DropAbandonedFutures())
    quiet = _DropOrbaxErrors()
    handlers = [logging.get_absl_handler(), *std_logging.getLogger().handlers]
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)


def _check_layout(mngr: ocp.CheckpointManager, step: int) -> None:
    """Damaged naming a missing item or item metadata, which orbax reports only as a TypeError or KeyError."""
    for path in ("state/", "config/", "state/_METADATA", "config/metadata"):
        if not os.path.exists(os.path.join(_step_dir(mngr, step), path)):
            raise Damaged(f"{path} is missing")
    if why := _unreadable_step_metadata(_step_dir(mngr, step)):
        raise Damaged(why)


def _restore_item(mngr: ocp.CheckpointManager, step: int, name: str, arg):
    """One item of `step`, quietly; any failure is Damaged naming the item."""
    try:
        with _quiet():
            return mngr.restore(step, args=ocp.args.Composite(**{name: arg}))[name]
    except Exception as e:  # whatever orbax, tensorstore or zstd raise on a damaged file
        raise Damaged(f"{name}: {_cause(e, _step_dir(mngr, step))}") from None


def _config(mngr: ocp.CheckpointManager, step: int) -> dict:
    config = _restore_item(mngr, step, "config", ocp.args.JsonRestore())
    if not isinstance(config, dict):
        raise Damaged("config: not a JSON object")
    return config


def _recorded(mngr: ocp.CheckpointManager, step: int) -> dict | None:
    """The checksums saved with `step`; None for a checkpoint written before there were any."""
    if not os.path.isdir(os.path.join(_step_dir(mngr, step), CHECKSUMS)):
        return None
    recorded = _restore_item(mngr, step, CHECKSUMS, ocp.args.JsonRestore())
    if not isinstance(recorded, dict) or not isinstance(recorded.get("crc32"), dict) or \
            not isinstance(recorded.get("items", {}), dict):
        raise Damaged(f"{CHECKSUMS}: not a JSON object with crc32")
    return recorded


def _shapes(tree) -> dict[str, tuple]:
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_same_state(mngr: ocp.CheckpointManager, step: int, abstract_state) -> None:
    """CheckpointError when `step` holds arrays of other names or shapes than `abstract_state`: a
    different model, not damage, so nothing is moved aside."""
    try:
        with _quiet():
            saved = _shapes(dict(mngr.item_metadata(step)["state"]))
    except Exception as e:  # unreadable metadata is damage
        raise Damaged(f"state/_METADATA: {_cause(e, _step_dir(mngr, step))}") from None
    wanted = _shapes(abstract_state)
    if differ := sorted(set(saved) ^ set(wanted)) or sorted(k for k in saved if saved[k] != wanted[k]):
        key = differ[0]
        raise CheckpointError(f"checkpoint {step} in {mngr.directory} holds another state than this config's "
                              f"({key}: {saved.get(key, 'absent')} there, {wanted.get(key, 'absent')} here)")


def _restore_verified(mngr: ocp.CheckpointManager, step: int, abstract_state):
    """(state, config, checksums) of `step`, the state's arrays verified against their checksums; its
    config read too (a checkpoint whose config cannot be read is as unusable as one whose arrays cannot)."""
    _check_layout(mngr, step)
    _check_same_state(mngr, step, abstract_state)
    config = _config(mngr, step)
    state = _restore_item(mngr, step, "state", ocp.args.StandardRestore(abstract_state))
    recorded = _recorded(mngr, step)
    _verify(state, recorded)
    return state, config, recorded


def _stream_position(mngr: ocp.CheckpointManager, step: int) -> dict | None:
    """The data stream's position saved with `step`; None when it has none (an import). A checkpoint
    of an earlier version kept it in grain's per-process file."""
    if os.path.isdir(os.path.join(_step_dir(mngr, step), STREAM)):
        position = _restore_item(mngr, step, STREAM, ocp.args.JsonRestore())
    elif os.path.isfile(legacy := os.path.join(_step_dir(mngr, step), LEGACY_DATA)):
        try:
            with open(legacy) as f:
                position = json.load(f)
        except (OSError, ValueError) as e:
            raise Damaged(f"{LEGACY_DATA}: {e}") from None
    else:
        return None
    if not isinstance(position, dict) or not isinstance(position.get("next_index"), int):
        raise Damaged(f"{STREAM}: not a JSON object with next_index")
    return position


def _check_step(state, position: dict | None, step: int) -> None:
    """Damaged unless the state and the stream position are those of `step`, the folder's name: the
    trainer saves the step in the state and, taking one batch a step, the stream's next batch index
    equal to it; a renamed folder or an edited position would resume wrong state silently."""
    held = int(_host(state["step"]))
    if held != step:
        raise Damaged(f"state: holds step {held}, not the {step} its folder is named")
    if position is not None and position["next_index"] != step:
        raise Damaged(f"{STREAM}: next_index {position['next_index']} is not the step {step} (one batch a step)")


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, data_iter, damaged_dir: str,
                   at_most: int | None = None) -> tuple[object, int] | None:
    """(state, step) of the newest step that restores and verifies, the data iterator (if any) set to
    its position; None when there is no checkpoint. Each damaged step is reported in one warning line
    and moved to `damaged_dir`; CheckpointError (one line) when every step is damaged. `at_most`: only
    steps up to it (an ensemble's members resume from the step they all have).

    A step without a stream position leaves the iterator at its start: a warning, except at step 0
    (what `interop import` writes), where a new run starts the stream too.
    """
    steps = sorted((s for s in mngr.all_steps() if at_most is None or s <= at_most), reverse=True)
    if not steps:
        return None
    for step in steps:
        try:
            state, config, recorded = _restore_verified(mngr, step, abstract_state)
            position = _stream_position(mngr, step)
            _check_step(state, position, step)
            _verify_items(recorded, config, position)
        except Damaged as e:
            moved = move_aside(str(mngr.directory), step, damaged_dir)
            mngr.reload()
            logging.warning("checkpoint %d in %s is damaged (%s); moved it to %s", step, mngr.directory, e, moved)
            continue
        if data_iter is not None and position is not None:
            data_iter.set_state(position)
        elif data_iter is not None and step > 0:  # step 0 (an import) starts there anyway
            logging.warning("checkpoint %d in %s has no data stream position: the data stream restarts from its "
                            "beginning", step, mngr.directory)
        return state, step
    raise CheckpointError(f"every checkpoint in {mngr.directory} is damaged (steps {', '.join(map(str, steps))}, "
                          f"moved to {damaged_dir}); the same "
                          "command now trains from step 0")


def saved_config(mngr: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
    """The config `step` was saved with; CheckpointError (one line) when it cannot be read."""
    try:
        return ml_collections.ConfigDict(_config(mngr, step))
    except Damaged as e:
        raise CheckpointError(f"checkpoint {step} in {mngr.directory} has an unreadable config ({e})") from None


def _check_describes(config: dict, params) -> None:
    """Damaged unless `config` is a run config whose model has exactly the saved parameters (names and
    shapes): a reader builds the model from it, so a config item that parses but describes something
    else (another depth, not a run config at all) is as damaged as an unreadable one."""
    try:
        cfg = model_lib.ModelConfig.from_config(ml_collections.ConfigDict(config))
        expected = cfg.abstract_params()
    except Exception as e:  # a missing key, a wrong type, a bad value: whatever building the model raises
        raise Damaged(f"config: not a run config ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    want, have = _shapes(expected), _shapes(params)
    if want != have:
        differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        raise Damaged(f"config: describes another model than the saved parameters ({len(differ)} differ, "
                       f"e.g. {differ[0]})")


def read_params(mngr: ocp.CheckpointManager, step: int, whole_state: bool = False):
    """(params as host numpy, config) of `step`. The params and the step number the state holds are
    read and verified (their checksums; the step is the folder's); with `whole_state`, every array of
    the state and the stream position too, as the trainer's restore verifies them (what a reader's
    list of intact steps uses). Damaged (the cause, one line) when anything fails."""
    _check_layout(mngr, step)
    config = _config(mngr, step)
    try:
        with _quiet():
            metadata = dict(mngr.item_metadata(step)["state"])
            wanted = metadata if whole_state else {k: metadata[k] for k in ("params", "step") if k in metadata}
            abstract = jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), wanted)
            _check_describes(config, abstract["params"])
            as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
            alone = _this_process_alone()  # a reader's, as `manager`'s with create=False
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=alone),
                                  multiprocessing_options=alone) as checkpointer:  # partial: the params and step
                state = checkpointer.restore(os.path.join(_step_dir(mngr, step), "state"), args=ocp.args.PyTreeRestore(
                    abstract, as_numpy, partial_restore=not whole_state))
    except Damaged:
        raise
    except Exception as e:  # whatever orbax, tensorstore or zstd raise on a damaged file
        raise Damaged(f"state: {_cause(e, _step_dir(mngr, step))}") from None
    recorded = _recorded(mngr, step)
    _verify(state, None if recorded is None else  # the arrays read: with a partial restore, not all of them
            {"crc32": {k: v for k, v in recorded["crc32"].items() if k.split("/")[0] in state}})
    position = _stream_position(mngr, step) if whole_state else None
    if "step" in state:
        _check_step(state, position, step)
    _verify_items(recorded, config, position)
    return state["params"], ml_collections.ConfigDict(config)
