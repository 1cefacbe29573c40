"""A suite's runs side by side: each run trains in a child process of its own, `--jobs` at a time, each
pinned to its own cores on CPU, and the suite shows one progress line for all of them.

Why children, even one at a time: a run's threads are pinned process-wide (`_pin`), and a signal
reaches every phase of a run the same way (the trainer saves and stops inside its loop; outside
it the child just ends, since every write of a run folder survives a kill). A run's numbers do not
depend on what trains beside it (tests/test_experiments.py compares --jobs 2 with --jobs 1).

The parent never starts a jax backend while children train: on a GPU it would hold the memory they
need (plan.has_accelerator decides --jobs' default without one).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import time

import ml_collections

from experiments import plan

_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_CHILD_STOPPED = 3  # a child's exit code when a signal ended it outside the trainer's loop
PROGRESS_EVERY_S = 30.0  # the suite's progress line, while several runs train side by side


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of one seed: what its child trains, and how the suite names it."""
    name: str  # "mqar_T64_kv4_w32_baseline seed 1337", as the progress lines say it
    run: str  # the run's name, for its run.json
    config: ml_collections.ConfigDict
    workdir: str
    scale: str | None


class Stopper:
    """SIGTERM and SIGINT to the suite: a flag, the first signal's name, handed on to every running child
    (whose trainer saves and stops); no run starts after it. Installed for the object's life."""

    def __init__(self):
        self.signal = None
        self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}

    def _handle(self, signum, frame):
        self.signal = self.signal or signal.Signals(signum).name

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _child(job: Job, cores: list[int] | None, log: str | None, mem_fraction: float | None,
           conn: multiprocessing.connection.Connection) -> None:
    """A run in its own process: its output to `log` when runs share the terminal, pinned to `cores` (see
    `_pin`), then trained; its status goes back through `conn`."""
    started = time.time()  # the run's start-up time counts from here (its phase times)
    for s in _SIGNALS:  # outside the trainer's loop: nothing to save, end now
        signal.signal(s, lambda *_: os._exit(_CHILD_STOPPED))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # one sent while it started is delivered now
    if mem_fraction:  # several runs on one accelerator: each its share, not jax's default 75% each
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{mem_fraction:.2f}")
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    from absl import flags, logging
    from aed_jax import cli, errors
    cli.keep_freed_host_memory()
    flags.FLAGS.mark_as_parsed()  # absl logs as under app.run: its handler, INFO, the libraries' INFO kept out
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    cli.quiet_libraries()
    if cores:
        _pin(cores)
    from experiments import runner
    try:
        status = runner.train_run(job.run, job.config, job.workdir, job.scale, started)
    except errors.UserError as e:
        status = f"failed: {e}"
    conn.send(status)


def _pin(cores: list[int]) -> None:
    """Keeps every thread of this process on `cores`, once jax's CPU backend has sized its thread pools by
    all the cores the process could use: XLA splits a reduction by its pool's size, so a run pinned before
    that would sum in another order than the same run alone (its losses drift apart over a few hundred
    steps), where pinned after it computes exactly the same numbers, its threads taking turns on its cores.
    Threads started later (the data pipeline's, orbax's) inherit the pinning from the thread that starts them."""
    import jax
    jax.devices()  # the backend, and its thread pools, now
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            pass


def _step(workdir: str) -> int:
    """The last step a run logged in its metrics.jsonl (0 before its first line): the progress line's."""
    try:
        with open(os.path.join(workdir, "metrics.jsonl"), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def run_all(jobs: list[tuple[int, Job]], n_jobs: int, total: int, stopper: Stopper) -> dict[str, str]:
    """Trains `jobs` (each with its number in the suite, 1-based) in order, `n_jobs` at a time, until all
    have ended or `stopper` is signalled; returns each started job's status by name ("finished",
    "skipped", "interrupted", "failed: <why>").

    With one job at a time its child writes to the terminal as a run of `main` does; with several, each
    to <workdir>/train.log, and the suite prints a line when a run starts or ends and every
    PROGRESS_EVERY_S seconds the steps of those training. A signal is handed on to the running
    children, whose trainers save and stop; none starts after it.
    """
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked jax threads or locks
    slots = plan.core_slots(n_jobs)
    mem_fraction = 0.9 / n_jobs if n_jobs > 1 and plan.has_accelerator() else None
    free, queue = list(range(n_jobs))[::-1], collections.deque(jobs)
    running, statuses, shown, forwarded = {}, {}, time.monotonic(), False
    while queue or running:
        while queue and free and not stopper.signal:
            index, job = queue.popleft()
            slot = free.pop()
            os.makedirs(job.workdir, exist_ok=True)
            log = os.path.join(job.workdir, "train.log") if n_jobs > 1 else None
            receive, send = context.Pipe(duplex=False)
            child = context.Process(target=_child, args=(job, slots[slot], log, mem_fraction, send), name=job.name)
            # Started with the signals blocked (the child inherits the mask, the parent's own are held and
            # delivered after): one that comes while the child's interpreter starts waits for its handlers,
            # never killing it half-started or printing a KeyboardInterrupt.
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            try:
                child.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            send.close()
            running[child.sentinel] = (index, job, child, receive, slot, time.monotonic())
            cores = f", cores {','.join(map(str, slots[slot]))}" if slots[slot] else ""
            where = f" (log: {log})" if log else ""
            print(f"[{index}/{total}] {job.name}: {job.config.train_steps:,} steps in {job.workdir}{cores}{where}",
                  flush=True)
        if stopper.signal and not forwarded:
            forwarded = True
            queue.clear()
            for _, _, child, _, _, _ in running.values():
                os.kill(child.pid, getattr(signal, stopper.signal))
        for sentinel in multiprocessing.connection.wait(list(running), timeout=1.0):
            index, job, child, receive, slot, started = running.pop(sentinel)
            child.join()
            statuses[job.name] = _status(child, receive, job)
            free.append(slot)
            print(f"[{index}/{total}] {job.name}: {statuses[job.name]} ({time.monotonic() - started:.0f} s)",
                  flush=True)
        if n_jobs > 1 and running and time.monotonic() - shown >= PROGRESS_EVERY_S:
            shown = time.monotonic()
            steps = ", ".join(f"{job.name} {_step(job.workdir)}/{job.config.train_steps}"
                              for _, job, _, _, _, _ in running.values())
            print(f"suite: {len(statuses)} of {len(jobs)} ended, {len(queue)} waiting; training: {steps}", flush=True)
    return statuses


def _status(child, receive, job: Job) -> str:
    """What the child said, or what its exit code means when it said nothing."""
    try:
        if receive.poll():
            return receive.recv()
    except (EOFError, OSError):
        pass
    finally:
        receive.close()
    if child.exitcode == _CHILD_STOPPED:
        return "interrupted"
    where = os.path.join(job.workdir, "train.log")
    return f"failed: exit code {child.exitcode}" + (f" (its output: {where})" if os.path.exists(where) else "")


def default_cache(path: str) -> None:
    """Points every child at JAX's persistent compilation cache `path` (children read it from the
    environment when jax loads); JAX_COMPILATION_CACHE_DIR, when set, wins; '' disables it."""
    if path:
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser(path))

