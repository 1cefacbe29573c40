"""What a training run shows while it runs: a progress bar (or, in a log file, a line now and then)
with each step's tokens/s and model FLOP/s (MFU where the device's peak is known), each step's
metrics, timed and logged to metrics.jsonl and TensorBoard every `log_interval` steps, and where the
run's time goes (`Phases`)."""
from __future__ import annotations

import sys
import threading
import time

import jax
import tqdm

# jax's monitoring events of a program's tracing, lowering and XLA compilation (or load from the
# persistent cache): one after another, and the tracing of a jit inside a jit is not an event of its own.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
PHASES = {"startup": "start-up", "setup": "set-up", "compile": "compiling", "steps": "steps",
          "estimates": "estimates", "saves": "saves"}  # metrics.jsonl's time_<key>_s: the closing line's words
_compile_seconds: dict[int, float] = {}  # thread id -> seconds it spent compiling since the listener began
_listening = False


def _on_duration(event: str, seconds: float, **_) -> None:
    if event in COMPILE_EVENTS:
        thread = threading.get_ident()
        _compile_seconds[thread] = _compile_seconds.get(thread, 0.0) + seconds


def _listen() -> None:
    """Registers the compilation listener once per process (jax keeps its listeners for good)."""
    global _listening
    if not _listening:
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _listening = True


class Phases:
    """Where a run's wall time goes: start-up (`started`, the process's start, to the trainer's entry;
    absent when not given), set-up, compiling, steps, estimates and saves.

    Each moment belongs to the phase last `enter`ed, except the time jax spends compiling on this
    thread (tracing, lowering, XLA), which is "compile" wherever it falls: the train step's first
    call, the estimate's, the initialisation's. So the phases sum to the run's wall time, and a
    phase's figure is what it would cost with every program already compiled.
    """

    def __init__(self, started: float | None = None):
        _listen()
        self.thread, entered = threading.get_ident(), time.time()
        self.seconds = {"startup": entered - started} if started is not None else {}
        self.seconds.update(dict.fromkeys(list(PHASES)[1:], 0.0))
        self.phase, self.since, self.compiled = "setup", time.perf_counter(), _compile_seconds.get(self.thread, 0.0)

    def enter(self, phase: str) -> None:
        """The time since the last `enter` goes to the phase it entered (less its compilation); `phase` begins."""
        now, compiled = time.perf_counter(), _compile_seconds.get(self.thread, 0.0)
        self.seconds["compile"] += compiled - self.compiled
        self.seconds[self.phase] += now - self.since - (compiled - self.compiled)
        self.phase, self.since, self.compiled = phase, now, compiled

    def record(self) -> dict:
        """{"time_<phase>_s": seconds} up to now, and "time_total_s", their sum: metrics.jsonl's phase line."""
        self.enter(self.phase)
        return {**{f"time_{k}_s": v for k, v in self.seconds.items()}, "time_total_s": sum(self.seconds.values())}


def phases_line(record: dict) -> str:
    """`Phases.record`'s figures in words, for main's closing line: "41 s: 9 s set-up, 8 s compiling, ..."."""
    parts = [f"{record[f'time_{k}_s']:.0f} s {words}" for k, words in PHASES.items() if f"time_{k}_s" in record]
    return f"{record['time_total_s']:.0f} s: " + ", ".join(parts)


def flops_line(flops_per_s: float, peak: float | None) -> str:
    """Achieved model FLOP/s, and MFU where the devices' peak is known: "41.3 TFLOP/s, MFU 4.2%"."""
    achieved = f"{flops_per_s / 1e12:,.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:,.2f} GFLOP/s"
    return achieved + (f", MFU {100 * flops_per_s / peak:.1f}%" if peak else "")


class Progress:
    """A tqdm bar on a terminal; in a log file (stderr not a tty), a plain line at most every
    `every_s` seconds instead of a bar's hundreds of carriage-return updates. Process 0 only.

    `step` takes a step's fetched metrics: it adds the step's wall time and tokens/s (the time since
    the previous step, or since `restart_clock` after an estimate and a save), updates the bar, and
    every `log_interval` steps writes them, with the learning rate, through `writer`. The bar and the
    line show the model FLOP/s (`flops_per_token` x tokens/s) and, against `peak` (the FLOP/s of all
    the devices, None where unknown), the MFU.
    """

    def __init__(self, start: int, total: int, writer, schedule, log_interval: int, tokens_per_step: int,
                 flops_per_token: float, peak: float | None, every_s: float = 30.0):
        self.enabled, self.tty = jax.process_index() == 0, sys.stderr.isatty()
        self.total, self.every_s, self.last_line = total, every_s, time.perf_counter()
        self.writer, self.schedule, self.log_interval, self.tokens_per_step = writer, schedule, log_interval, \
            tokens_per_step
        self.flops_per_token, self.peak = flops_per_token, peak
        self.bar = tqdm.tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                             disable=not (self.enabled and self.tty))
        self.restart_clock()

    def restart_clock(self) -> None:
        self.t_last = time.perf_counter()

    def step(self, step: int, metrics: dict) -> None:
        """Step `step`'s host metrics (floats), after the step ran."""
        now = time.perf_counter()
        metrics.update(step_time_s=now - self.t_last, tokens_per_s=self.tokens_per_step / (now - self.t_last))
        self.t_last = now
        flops = flops_line(self.flops_per_token * metrics["tokens_per_s"], self.peak)
        self.bar.update(1)
        self.bar.set_postfix_str(f"ce {metrics['ce']:.3f}, {metrics['tokens_per_s']:,.0f} tok/s, {flops}",
                                 refresh=False)
        if self.enabled and not self.tty and now - self.last_line >= self.every_s:
            self.last_line = now
            self.write(f"step {step}/{self.total}: ce {metrics['ce']:.4f}, {metrics['tokens_per_s']:,.0f} tokens/s, "
                       f"{flops}")
        if step % self.log_interval == 0:
            self.writer.write(step, {**metrics, "lr": self.schedule(step - 1)})

    def write(self, line: str) -> None:
        if self.enabled:
            self.bar.write(line, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()
