"""SIGTERM and SIGINT stop a training run cleanly: the loop saves a checkpoint and exits.

With several processes the signal may reach one of them, or all at different steps; a process
that stopped alone would leave the others waiting in a collective for good. So each step also
dispatches a vote, the global max of every process's flag (asynchronous, like the step), and
every process reads step i's vote at the same point of step i + 1: they stop after the same step.
"""
from __future__ import annotations

import signal

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from aed_jax import mesh as mesh_lib


class Preemption:
    """SIGTERM/SIGINT set a flag (handlers installed for the object's life, until `restore`)."""

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
        return self._max(jax.make_array_from_process_local_data(mesh_lib.batch_sharding(self.mesh), flags))

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
