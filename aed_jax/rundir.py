"""A run's folder (workdir), everything about it above orbax: its layout, who may write it (a lock),
which run it holds and whether a resume is the same run, what it logs, which checkpoint a reader means.

    <workdir>/checkpoints/<step>/   the latest few steps (orbax, `checkpoint`)
    <workdir>/best/<step>/          the best step: lowest val loss; a task's, highest val token accuracy
    <workdir>/damaged/              steps set aside as damaged, never deleted
    <workdir>/config.json           the run's config, data.json its token files (the run's record)
    <workdir>/metrics.jsonl         one JSON object a line, with "step"; TensorBoard events beside it
    <workdir>/.lock                 held by the trainer

A workdir belongs to one trainer at a time: process 0 holds an OS file lock on `<workdir>/.lock`
for the trainer's lifetime, so a crashed trainer never leaves it held, and a second trainer exits
before touching anything. Readers (evaluate, sample, export) never take it.

A resume must continue the same run: `config.json` and `data.json` record, once the run is
accepted, the config and the token files it trains on; the next start compares them with what it
is asked to do. Only the keys of config.MAY_CHANGE (how long, how often it reports, how it computes) may
differ; anything else is refused in one line that names the keys and the two ways out.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import json
import os
import shutil
import socket
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from tensorboardX import event_file_writer
from tensorboardX.proto import event_pb2
from tensorboardX.proto import summary_pb2

from aed_jax import checkpoint
from aed_jax import config as config_lib
from aed_jax import errors
from aed_jax import tasks

CHECKPOINTS, BEST, DAMAGED = "checkpoints", "best", "damaged"
CONFIG, DATA, METRICS, LOCK = "config.json", "data.json", "metrics.jsonl", ".lock"


def default_workdir(c: ml_collections.ConfigDict, config_path: str) -> str:
    """runs/<config name>, plus -<dataset> for a dataset other than the built-in one, so training a
    config on your own data never lands in (and is never refused by) the built-in corpus's run. A run's
    own config.json: that run's folder (the same command resumes it; --workdir trains a copy)."""
    if os.path.basename(config_path) == CONFIG:
        return os.path.dirname(config_path) or "."
    name = os.path.splitext(os.path.basename(config_path))[0]
    dataset = c.dataset.replace(tasks.PREFIX, "task_")  # task:mqar -> runs/<config>-task_mqar
    return os.path.join("runs", name if c.dataset == config_lib.DEFAULT_DATASET else f"{name}-{dataset}")


def checkpoints(workdir: str, keep: int = 3, create: bool = True):
    """The manager of `<workdir>/checkpoints`, which keeps the newest `keep` steps."""
    return checkpoint.manager(os.path.join(workdir, CHECKPOINTS), keep=keep, create=create)


def best(workdir: str, create: bool = True):
    """The manager of `<workdir>/best`, which keeps the best step (`checkpoint.best_rank`)."""
    return checkpoint.manager(os.path.join(workdir, BEST), best=True, create=create)


def check_layout(workdir: str) -> None:
    """RunError (one line) when a name the run folder needs (checkpoints/, best/, damaged/) is taken by
    something that is not a folder: said before training, not at the first save."""
    for name in (CHECKPOINTS, BEST, DAMAGED):
        path = os.path.join(workdir, name)
        if os.path.lexists(path) and not os.path.isdir(path):
            raise RunError(f"{path} is not a folder, and the run keeps its {name} checkpoints there: move it "
                           "away, then run the same command")


def clean_interrupted(workdir: str) -> list[str]:
    """Removes the temporary folders that interrupted saves left in checkpoints/ and best/; their paths.
    Only the trainer calls it (process 0, holding the lock)."""
    return sorted(p for kind in (CHECKPOINTS, BEST) for p in checkpoint.clean_interrupted(os.path.join(workdir, kind)))


def set_aside_damaged_best(workdir: str) -> list[str]:
    """Moves each step of best/ whose metrics orbax cannot use (`checkpoint.damaged_metrics`) to
    damaged/, as a damaged checkpoint is; one warning line each. Only the trainer calls it (process 0,
    holding the lock)."""
    moved, folder = [], os.path.join(workdir, BEST)
    for step, why in checkpoint.damaged_metrics(folder).items():
        target = checkpoint.move_aside(folder, step, os.path.join(workdir, DAMAGED))
        logging.warning("checkpoint %d in %s is damaged (%s); moved it to %s", step, folder, why, target)
        moved.append(target)
    return moved


def tidy_for_training(workdir: str, fresh: bool) -> None:
    """What a trainer does to its run folder before it restores (process 0, holding the lock): with `fresh`,
    `start_over`; then the interrupted saves removed and the damaged best/ steps set aside, a warning each.
    The trainer and an ensemble's members share it."""
    if fresh:
        start_over(workdir)
    for path in clean_interrupted(workdir):
        logging.warning("removed %s, left by an interrupted save", path)
    set_aside_damaged_best(workdir)


def resolve_step(workdir: str, which: str | int = "latest"):
    """(manager, step) for a reader's `which`: "latest", "best" or a step number; CheckpointError
    (one line) if absent."""
    if not os.path.isdir(workdir):
        raise checkpoint.CheckpointError(f"workdir {workdir!r} does not exist")
    kind = BEST if which == "best" else CHECKPOINTS
    folder = os.path.join(workdir, kind)
    if not os.path.isdir(folder):
        raise checkpoint.CheckpointError(f"workdir {workdir!r} has no {kind}/ checkpoints")
    if kind == BEST and (damaged := checkpoint.damaged_metrics(folder)):
        step, why = next(iter(damaged.items()))
        raise checkpoint.CheckpointError(f"checkpoint {step} in {folder} is damaged ({why}); the next training run "
                                         "sets it aside, or use --checkpoint latest")
    mngr = best(workdir, create=False) if kind == BEST else checkpoints(workdir, create=False)
    steps = mngr.all_steps()
    if not steps:
        raise checkpoint.CheckpointError(f"workdir {workdir!r} has no checkpoints in {kind}/")
    if which in ("latest", "best"):
        best_step = mngr.best_step() if which == "best" else None
        return mngr, max(steps) if best_step is None else best_step
    if str(which).isdigit() and int(which) in steps:
        return mngr, int(which)
    raise checkpoint.CheckpointError(f"workdir {workdir!r} has no checkpoint {which!r}; saved steps: {sorted(steps)}")


def restore_params(workdir: str, which: str | int = "latest"):
    """(params, config, step) from a run's checkpoint, without the optimizer state, verified.

    Every array comes back as host numpy, so a checkpoint written on N devices loads on any other
    device count. A damaged checkpoint is CheckpointError naming the steps of checkpoints/ that
    are intact; nothing in the workdir is changed.
    """
    mngr, step = resolve_step(workdir, which)
    try:
        params, config = checkpoint.read_params(mngr, step)
    except checkpoint.Damaged as e:
        raise checkpoint.CheckpointError(f"checkpoint {step} in {mngr.directory} is damaged ({e}); "
                                         f"{_intact(workdir, skip=(str(mngr.directory), step))}") from None
    return params, config, step


def _intact(workdir: str, skip: tuple[str, int]) -> str:
    """Which steps of checkpoints/ restore and verify whole (every item, as the trainer checks them), for
    an error message: `intact steps: 30, 35`."""
    if not os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
        return "no intact checkpoint"
    mngr, intact = checkpoints(workdir, create=False), []
    for step in sorted(mngr.all_steps()):
        if (str(mngr.directory), step) == skip:
            continue
        try:
            checkpoint.read_params(mngr, step, whole_state=True)  # as the trainer would find it
            intact.append(step)
        except checkpoint.Damaged:  # damaged too: not listed
            continue
    return f"intact steps: {', '.join(map(str, intact))}" if intact else "no intact checkpoint"


class RunError(errors.UserError):
    """The workdir cannot be used as asked (locked, another run, unwritable): one line for the user."""


class Lock:
    """An exclusive `flock` on `<workdir>/.lock`, which records its holder (host, pid, start time).

    The kernel drops a flock when its process dies, however it dies, so a stale lock cannot block
    the next run; the file itself stays (it is only a place to lock) and says who held it last.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK)
        try:
            os.makedirs(workdir, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunError(f"{workdir}: cannot write the workdir ({e.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 4096).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise RunError(f"{workdir} is in use by another trainer ({holder}); wait for it to end or choose "
                           "another --workdir") from None
        os.ftruncate(self.fd, 0)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.write(self.fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {started}\n".encode())

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


@contextlib.contextmanager
def locked(workdir: str):
    """The workdir's lock for the duration of the block, taken by process 0; every process learns
    whether it got it, so a refused cluster run stops everywhere instead of waiting at a barrier."""
    lock, error = None, ""
    if jax.process_index() == 0:
        try:
            lock = Lock(workdir)
        except RunError as e:
            error = str(e)
    if jax.process_count() > 1 and not multihost_utils.broadcast_one_to_all(np.int32(lock is not None)):
        error = error or f"process 0 could not lock {workdir}"  # process 0's value, on every process
    if error:
        raise RunError(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def start_over(workdir: str) -> None:
    """What --fresh removes: the checkpoints, the metrics, the TensorBoard events and the run's
    record, so no old curve or step mixes with the new run. Damaged checkpoints set aside stay.

    The checkpoints go first, and a step that cannot be deleted is RunError with the record and
    metrics kept: deleting those and leaving a step behind would make the "fresh" run resume from it
    under a new curve. A checkpoints/ or best/ that is a link to a folder elsewhere (a bigger disk)
    keeps its link and loses what is inside its target, where the run's steps are.
    """
    for name in (CHECKPOINTS, BEST):
        path = os.path.join(workdir, name)
        try:
            _delete_steps(path)
        except OSError as e:
            raise RunError(f"--fresh cannot delete {e.filename or path} ({e.strerror or e}), so the new run would "
                           f"resume from the steps left there; nothing else was deleted: remove {path} by hand (or "
                           "make it deletable), then run the same command") from None
    for path in [os.path.join(workdir, name) for name in (METRICS, CONFIG, DATA)] + glob.glob(
            os.path.join(glob.escape(workdir), "events.out.tfevents.*")):
        if os.path.exists(path):
            os.remove(path)


def _delete_steps(path: str) -> None:
    """Deletes the folder `path` with everything in it; for a link to a folder, what is inside the
    target (the link stays, so the next steps go where the user put them). Raises the first OSError."""
    if os.path.islink(path):
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)
    elif os.path.lexists(path):
        shutil.rmtree(path)


def data_record(train_path: str, val_path: str) -> dict:
    """What identifies the token files: their names, sizes and, when prepare's meta.json beside
    them lists them, their sha256 (free to read; hashing a large corpus at every start is not)."""
    record = {}
    for split, path in (("train", train_path), ("val", val_path)):
        meta_path = os.path.join(os.path.dirname(path), "meta.json")
        sha = None
        if os.path.isfile(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    meta = json.load(f).get(split, {})
                sha = meta.get("sha256") if meta.get("file") == os.path.basename(path) else None
            except (OSError, ValueError, AttributeError):
                sha = None
        record[split] = {"file": os.path.basename(path), "bytes": os.path.getsize(path), "sha256": sha}
    return record


def recorded(workdir: str) -> tuple[dict | None, dict | None]:
    """(config dict, data record) written when the run was accepted; None for what is absent."""
    out = []
    for name in (CONFIG, DATA):
        path = os.path.join(workdir, name)
        try:
            with open(path, encoding="utf-8") as f:
                out.append(json.load(f))
        except FileNotFoundError:
            out.append(None)
        except (OSError, ValueError) as e:
            raise RunError(f"{path}: unreadable ({e}); pass --fresh to start over or choose another --workdir") from None
    return out[0], out[1]


def saved_run(workdir: str, mngr) -> tuple[dict | None, dict | None, bool]:
    """(config, data record, model_only) of the run the workdir holds (`mngr`: its checkpoints). Written
    by the trainer when it accepted the run; without that record, the newest readable checkpoint's
    config: all of it for a trained step (config.json was lost, the run is still the one its
    checkpoints hold), its model alone for the step 0 that `interop import` writes (never trained)."""
    saved_config, saved_data = recorded(workdir)
    if saved_config is not None or mngr.latest_step() is None:
        return saved_config, saved_data, False
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            return checkpoint.saved_config(mngr, step).to_dict(), None, step == 0
        except checkpoint.CheckpointError as e:
            logging.warning("%s", e)
    return None, None, False


def differences(saved: dict, current: dict, saved_data: dict | None, current_data: dict,
                model_only: bool = False) -> list[str]:
    """The keys (and data files) in which `current` is another run than `saved`, as "key (old -> new)";
    with `model_only`, the model's keys alone (a checkpoint imported from the reference's weights)."""
    a, b = _flatten(saved), _flatten(current)
    # A key added since the run was recorded is absent from its config.json: the run had its default.
    defaults = _flatten(config_lib.base_config(current["model_type"]).to_dict())
    a.update({k: defaults[k] for k in defaults.keys() - a.keys()})
    compared = lambda k: (k.split(".")[0] in config_lib.MODEL_KEYS) if model_only else \
        (k.split(".")[0] not in config_lib.MAY_CHANGE)
    out = [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in sorted(a.keys() | b.keys())
           if compared(k) and a.get(k) != b.get(k)]
    for split in ("train", "val"):
        old, new = (saved_data or {}).get(split), current_data.get(split)
        if old is None or new is None:  # a synthetic task reads no files; its `dataset` key differs anyway
            continue
        same_hash = old["sha256"] is None or new["sha256"] is None or old["sha256"] == new["sha256"]
        if old["bytes"] != new["bytes"] or not same_hash:
            out.append(f"{split} data ({old['file']}: {old['bytes']:,} bytes -> {new['file']}: {new['bytes']:,} bytes"
                       + ("" if same_hash else ", other contents") + ")")
    return out


def check_same_run(workdir: str, c: ml_collections.ConfigDict, data: dict, saved_config: dict | None,
                   saved_data: dict | None, model_only: bool = False) -> None:
    """RunError naming what differs when `c` on `data` is not the run the workdir's checkpoints hold."""
    if saved_config is None:
        return
    diff = differences(saved_config, c.to_dict(), saved_data, data, model_only)
    if diff:
        raise RunError(f"{workdir} holds another run: {'; '.join(diff)}. Choose another --workdir for a new run, "
                       "or pass --fresh to start this one over")
    if saved_config.get("train_steps") != c.train_steps:
        logging.info("continuing %s: train_steps %s -> %d", workdir, saved_config.get("train_steps"), c.train_steps)


def accept(workdir: str, c: ml_collections.ConfigDict, data: dict) -> None:
    """Records the run as the workdir's own, once it has passed every check."""
    write_atomic(os.path.join(workdir, CONFIG), json.dumps(c.to_dict(), indent=2, sort_keys=True))
    write_atomic(os.path.join(workdir, DATA), json.dumps(data, indent=2, sort_keys=True))


def read_metrics(workdir: str) -> tuple[list[dict], list[dict]]:
    """(training lines, estimate lines) of `<workdir>/metrics.jsonl`, each sorted by step.

    A resumed run may log a step twice (a kill between a log line and the next checkpoint); the
    last line of a step wins. A line cut short by a kill is skipped; a missing file gives two empty lists.
    """
    train, estimates = {}, {}
    path = os.path.join(workdir, METRICS)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if "val_loss" in row:
                    estimates[row["step"]] = row
                elif "ce" in row:
                    train[row["step"]] = row
    return [train[s] for s in sorted(train)], [estimates[s] for s in sorted(estimates)]


def last_estimate(workdir: str) -> dict:
    """The last estimate line of metrics.jsonl (with "step"), or {} when there is none."""
    estimates = read_metrics(workdir)[1]
    return estimates[-1] if estimates else {}


class MetricsWriter:
    """metrics.jsonl (one JSON object a line, with "step") plus TensorBoard events, on process 0 only.

    A run resumed at `start_step` first drops what an interrupted run logged after that step (it
    will be logged again), so each step appears once: from metrics.jsonl by an atomic rewrite, and
    from TensorBoard by a purge event at the next step, as SummaryWriter(purge_step=...) writes it.

    The events are written in this thread (tensorboardX's EventsWriter), not by SummaryWriter's
    writer thread: on a full disk that thread dies with a traceback and the next flush waits for it
    for good. Here a failed write is an OSError out of `write`, which the command reports in a line.
    """

    def __init__(self, workdir: str, start_step: int = 0):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            path = os.path.join(workdir, METRICS)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    kept = [line.rstrip("\n") + "\n" for line in f
                            if (step := _logged_step(line)) is not None and step <= start_step]
                write_atomic(path, "".join(kept))
            self.jsonl = open(path, "a", encoding="utf-8")
            self.tb = event_file_writer.EventsWriter(os.path.join(workdir, "events"))
            if start_step:
                for event in (event_pb2.Event(step=start_step + 1, file_version="brain.Event:2"),
                              event_pb2.Event(step=start_step + 1,
                                              session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))):
                    event.wall_time = time.time()
                    self.tb.write_event(event)
                self.tb.flush()

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()])
        self.tb.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def _logged_step(line: str) -> int | None:
    """The step of a metrics.jsonl line; None for a line cut short by a crash."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w"):
    """A file to write `path` through: `<path>.tmp`, renamed over `path` only when the block completes
    (a reader sees the old file or the new one, never half of one) and removed if it fails."""
    tmp = path + ".tmp"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(text)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
