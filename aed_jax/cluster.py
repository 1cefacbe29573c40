"""The processes of a multi-process job, from start to exit: joining them, noticing one that is gone,
and ending every process with one line and the right exit code.

jax's distributed service ends a job whose process died with a multi-line C++ abort, after its
heartbeat timeout (100 s), or for a process that never joined after its initialisation timeout
(300 s), in silence until then; and a client that loses the service (hosted by process 0) aborts
its process at once, its error callback out of Python's reach. A scheduler sees a crash. So:

- `join` runs jax.distributed.initialize under a watchdog: a line when the others are late, and one
  line and exit 1 when they have not all joined within `join_timeout` seconds;
- process 0 runs the service in a process of its own (`ServiceProcess`, `serve`), which outlives a
  process 0 that died by LINGER_S: the others then find the loss by the counters below;
- `Liveness`, once joined, keeps a counter per process in the service's key-value store, raised
  every second by a thread; each process watches the others' counters, and one that stops for
  STALE_S seconds ends this process with one line and exit 1, within seconds, wherever it waits (a
  barrier, a collective, a compile, process 0's closing samples). A process stopped by SIGTERM
  before training ended says so first (`stop`), so the others name why;
- `Liveness.finish` is the job's last barrier, still watched: every process reaches jax's own
  shutdown barrier within a second of the others, so no process is lost while waiting there;
- `lost_peer` tells a collective's failure from a bug: a dead peer often shows first as such an
  error (gloo's connection reset), which `Liveness.exit_lost` turns into the same kind of line.

Every exit here is `os._exit`: a normal exit would wait in jax.distributed's shutdown barrier for
the process that is gone.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from absl import logging
import jax
from jax._src import distributed  # jax.distributed's client (its key-value store) and its service factory
from jax.experimental import multihost_utils

from aed_jax import errors

JAX_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
STALE_S = 15.0  # a process whose counter has not moved for this long is gone
_BEAT_S = 1.0
_LATE_S = 30.0  # the first "still waiting" line
LINGER_S = 2 * STALE_S  # how long the service outlives a process 0 that died: the others find it first
_LEAVING_S = 5 * _BEAT_S  # and one that exits with its own line: the others read why, or find it, first


# The jax releases the multi-process path is declared for, from the first up to and excluding the
# second: it relies on two private names (`jax._src.distributed.global_state.client`, the key-value
# store; `jax._src.distributed._jax.get_distributed_runtime_service`, the service factory), present in
# 0.8.1's source and in 0.10.2, on which the multi-process tests ran (2026-12-07). setup.cfg names the
# range too. A jax outside it is refused at the start of a --distributed run, in one line, instead of
# failing mid-job; AED_JAX_UNTESTED_JAX=1 tries it anyway (the names are still checked), and
# tests/test_multihost.py fails on an installed jax outside it, so an upgrade is seen in CI first.
TESTED_JAX = ((0, 8, 1), (0, 11))


class ClusterError(errors.UserError):
    """The processes cannot be joined as asked (variables missing, unreachable coordinator, an untested jax)."""


def check_jax(version: str = jax.__version__) -> None:
    """A ClusterError, one line, when `version` is outside TESTED_JAX (unless AED_JAX_UNTESTED_JAX=1) or
    this jax lacks a private name the multi-process path relies on."""
    release = tuple(int(part) for part in version.split(".")[:3] if part.isdigit())
    low, high = TESTED_JAX
    tested = f"{'.'.join(map(str, low))} to {'.'.join(map(str, high))} (excluded)"
    if not low <= release < high and os.environ.get("AED_JAX_UNTESTED_JAX") != "1":
        raise ClusterError(f"--distributed is tested on jax {tested}, not {version}: install a tested one "
                           f"(pip install 'jax>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}'), or set "
                           "AED_JAX_UNTESTED_JAX=1 to try this one")
    missing = [name for name, there in (
        ("jax._src.distributed.global_state.client", hasattr(getattr(distributed, "global_state", None), "client")),
        ("jax._src.distributed._jax.get_distributed_runtime_service",
         hasattr(getattr(distributed, "_jax", None), "get_distributed_runtime_service"))) if not there]
    if missing:
        raise ClusterError(f"--distributed needs {', '.join(missing)}, which jax {version} lacks: install jax "
                           f"{tested}")


def _out(line: str, code: int) -> None:
    if ServiceProcess.running is not None:
        ServiceProcess.running.leaving()
    sys.stdout.flush()
    sys.stderr.write(line + "\n" if line else "")
    sys.stderr.flush()
    os._exit(code)


def join(join_timeout: int, training_ended: threading.Event) -> "Liveness":
    """jax.distributed.initialize from the JAX_* variables when set (jax reads the address alone),
    else from the cluster (SLURM, Open MPI); CPU processes talk through gloo. Returns the running
    `Liveness` (`training_ended`: set once no process lost can cost any training). Processes that have
    not all joined within `join_timeout` s: one line, exit 1."""
    check_jax()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    given = [n for n in JAX_VARIABLES if os.environ.get(n)]
    if given and len(given) < len(JAX_VARIABLES):
        raise ClusterError(f"--distributed: {', '.join(n for n in JAX_VARIABLES if n not in given)} not set; set "
                           f"{', '.join(JAX_VARIABLES)} on every process, or run under SLURM")
    joined = threading.Event()

    def watchdog():
        start = time.time()
        if not joined.wait(_LATE_S):
            sys.stderr.write(f"waiting for the other processes to join (up to --join_timeout={join_timeout} s)\n")
            sys.stderr.flush()
            if not joined.wait(max(join_timeout - (time.time() - start), 0)):
                _out(f"error: --distributed: not every process joined within {join_timeout} s (--join_timeout); "
                     "one may have failed to start or died while starting (see its log). Start every process "
                     "again with the same command", 1)

    threading.Thread(target=watchdog, daemon=True, name="aed_jax join watchdog").start()
    args = (os.environ[JAX_VARIABLES[0]], int(os.environ[JAX_VARIABLES[1]]), int(os.environ[JAX_VARIABLES[2]])) \
        if given else ()
    # What jax calls in process 0 alone to start the service (a private name, check_jax's).
    jaxlib = distributed._jax
    in_process = jaxlib.get_distributed_runtime_service
    jaxlib.get_distributed_runtime_service = ServiceProcess
    try:  # jax's own timeout after ours: ours speaks first, in one line
        jax.distributed.initialize(*args, initialization_timeout=join_timeout + 60)
    except (ValueError, RuntimeError) as e:
        raise ClusterError(f"--distributed: {errors.one_line(e)}; set {', '.join(JAX_VARIABLES)} on every "
                           "process, or run under SLURM") from None
    finally:
        jaxlib.get_distributed_runtime_service = in_process
    joined.set()
    if jax.process_index() != 0:  # process 0 speaks for the job; the others only for their own errors
        logging.set_verbosity(logging.ERROR)
    _connect_collectives()
    return Liveness(training_ended)


class ServiceProcess:
    """jax's coordination service, started by jax.distributed.initialize in process 0 with the same
    arguments, but in a child process (`serve`) that ignores SIGINT and SIGTERM (the trainer handles
    them and still needs the service to stop at a voted step). `shutdown`, which jax calls last at
    exit, ends it; if process 0 exits with a line of its own (`_out`), it lives _LEAVING_S longer, and if
    process 0 dies, LINGER_S."""
    running: "ServiceProcess | None" = None  # process 0's

    def __init__(self, *args, **kwargs):
        # A session of its own: a Ctrl-C in the terminal reaches process 0, which stops at a voted step.
        self.child = subprocess.Popen([sys.executable, "-c", "from aed_jax import cluster; cluster.serve()",
                                       json.dumps([args, kwargs])], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, start_new_session=True)  # its failure: one line here
        said = self.child.stdout.readline().decode().strip()
        if said != "ready":
            why = said or f"it exited with code {self.child.wait()}"
            raise ClusterError(f"--distributed: the coordination service cannot listen at {args[0]} ({why}); the "
                               "port may be taken, for example by the service of a job whose process 0 died less "
                               f"than {LINGER_S:.0f} s ago: wait, or choose another port (JAX_COORDINATOR_ADDRESS, "
                               "or the SLURM job's)")
        ServiceProcess.running = self

    def _say(self, word: str) -> None:
        try:
            self.child.stdin.write(word.encode() + b"\n")
            self.child.stdin.flush()
        except OSError:  # it is gone already
            pass

    def leaving(self) -> None:
        self._say("leaving")

    def shutdown(self) -> None:
        self._say("done")
        self.child.wait()
        ServiceProcess.running = None  # an exit after this one (`end_after_training`) has nothing to tell


def serve() -> None:
    """The service process's body: `ready` on stdout once the service listens (else why not, in one
    line); then it serves until process 0 writes `done` (a normal exit) or its pipe closes without it
    (process 0 died: LINGER_S more), or `leaving` (process 0 exits with its own line: _LEAVING_S more).
    SIGINT and SIGTERM are process 0's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    args, kwargs = json.loads(sys.argv[1])
    try:
        service = distributed._jax.get_distributed_runtime_service(*args, **kwargs)
    except Exception as e:  # the address is taken, or not this host's
        print(errors.one_line(e)[:200], flush=True)
        return
    print("ready", flush=True)
    word = sys.stdin.readline().strip()
    if word == "done":
        service.shutdown()
    else:
        time.sleep(_LEAVING_S if word == "leaving" else LINGER_S)
    os._exit(0)


def _connect_collectives() -> None:
    """A first collective now, gloo's connection lines ("[Gloo] Rank 1 is connected to 1 peer ranks",
    on stdout, the report's) sent to process 0's stderr meanwhile, and to nowhere from the others."""
    sys.stdout.flush()
    saved = os.dup(1)
    target = os.open(os.devnull, os.O_WRONLY) if jax.process_index() else os.dup(2)
    os.dup2(target, 1)
    try:
        multihost_utils.sync_global_devices("aed_jax: every process joined")
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)


class Liveness:
    """Each process's counter in the key-value store, raised every second; a watch on the others'."""

    def __init__(self, training_ended: threading.Event):
        self.client, self.me, self.n = distributed.global_state.client, jax.process_index(), jax.process_count()
        self._stopped = threading.Event()
        self.training_ended = training_ended
        threading.Thread(target=self._run, daemon=True, name="aed_jax liveness").start()

    def _key(self, kind: str, process: int) -> str:
        return f"aed_jax/{kind}/{process}"

    def _get(self, kind: str, process: int) -> str | None:
        try:
            return self.client.key_value_try_get(self._key(kind, process))
        except Exception:  # not set (yet)
            return None

    def _run(self):
        seen = {p: (None, time.time()) for p in range(self.n) if p != self.me}
        while not self._stopped.is_set():
            try:
                self.client.key_value_increment(self._key("alive", self.me), 1)
                self._exit_if_one_stopped()
                for p, (count, since) in seen.items():
                    now = self._get("alive", p)
                    if now != count:
                        seen[p] = (now, time.time())
                    elif time.time() - since > STALE_S:
                        _out(f"error: process {self.me} of {self.n} lost process {p} (no sign of life for "
                             f"{STALE_S:.0f} s); it has probably died (see its log). " + self._then(), 1)
            except Exception as e:  # the service itself is gone (its process killed, or process 0 dead too long)
                if self._stopped.is_set():
                    return
                self._lost_coordinator(e)
            self._stopped.wait(_BEAT_S)

    def _exit_if_one_stopped(self) -> None:
        """One line naming the process that said why it stopped (`stop`), if one did."""
        for p in range(self.n):
            if p != self.me and (why := self._get("stopped", p)) is not None:
                _out(f"error: process {self.me} of {self.n}: process {p} {why}; start every process again with the "
                     "same command", 1)

    def exit_lost(self, e: BaseException) -> None:
        """One line for a collective that failed because another process is gone (`lost_peer`), exit 1:
        why it went, if it said (a signal before training), else that it has probably died."""
        self._exit_if_one_stopped()
        _out(f"error: process {self.me} of {self.n} lost contact with the others ({errors.one_line(e)[:160]}); one "
             "of them has probably died. " + self._then(), 1)

    def _lost_coordinator(self, e: Exception) -> None:
        _out(f"error: process {self.me} of {self.n} lost the coordinator (process 0): {errors.one_line(e)[:160]}. "
             + self._then(), 1)

    def _then(self) -> str:
        if self.training_ended.is_set():
            return "Training had ended: the workdir's checkpoints are complete"
        return "The workdir keeps its latest checkpoint: start every process again with the same command"

    def finish(self) -> None:
        """This process is done: wait, still beating and watching, until every process is; then each
        goes on to jax's shutdown barrier within a second of the others. Twice: a process lost after
        saying it was done is missing from the second. Once done, a no-op."""
        if self._stopped.is_set():
            return
        for kind in ("done", "leaving"):
            try:
                self.client.key_value_set(self._key(kind, self.me), "1", allow_overwrite=True)
            except Exception as e:
                self._lost_coordinator(e)
            while any(self._get(kind, p) is None for p in range(self.n)):
                time.sleep(0.2)  # a process lost meanwhile ends this one from the watching thread
        self._stopped.set()

    def stop(self, why: str) -> None:
        """This process is about to exit before training ended (`why`, e.g. "was stopped by SIGTERM"): tell the others."""
        self._stopped.set()
        try:
            self.client.key_value_set(self._key("stopped", self.me), why)
        except Exception:
            pass


def on_signals_outside_training(liveness: "Liveness | None", finished: threading.Event) -> None:
    """SIGTERM or SIGINT (Ctrl-C) outside training (the trainer's own handler saves and stops inside
    it, `preemption`): before training ended there is nothing to save: one line, exit 1, and the others
    are told. After it ended, `end_after_training`: the run is complete whichever signal came, so Ctrl-C
    during the closing samples is a finished run as SIGTERM there is."""
    def handle(signum, frame):
        name = signal.Signals(signum).name
        if finished.is_set():
            end_after_training(liveness, name)
        why = f"was stopped by {name} before training began; there was nothing to save"
        if liveness is not None:
            liveness.stop(why)
        _out(f"error: {_who()} {why}", 1)

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, handle)


def end_after_training(liveness: "Liveness | None", signal_name: str) -> None:
    """A signal once training ended (during the closing samples, the last barrier, or while the last
    saves finished): the run is complete. One line, then this process ends as a finished one does,
    through the last barrier and jax's shutdown: exit 0 everywhere. What it did not print (the rest
    of the closing samples) is only a view of the saved checkpoints."""
    sys.stderr.write(f"{_who()} was stopped by {signal_name} after training ended; its checkpoints are saved\n")
    if liveness is not None:
        liveness.finish()
        jax.distributed.shutdown()
    _out("", 0)


def _who() -> str:
    return f"process {jax.process_index()}" if jax.process_count() > 1 else "the run"


def lost_peer(e: BaseException) -> bool:
    """Whether `e` is a collective or coordination failure of a multi-process run (XLA raises them
    with an absl status code first): what a dead peer looks like from the survivors."""
    codes = ("UNKNOWN", "INTERNAL", "UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED", "CANCELLED", "FAILED_PRECONDITION")
    return jax.process_count() > 1 and str(e).startswith(tuple(f"{code}:" for code in codes))
