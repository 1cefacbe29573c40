"""cli.keep_freed_host_memory: XLA:CPU's big temporary block is reused, not faulted in afresh every call."""
import os
import statistics
import subprocess
import sys

import pytest

from test_train import ROOT

PROBE = """
import resource, sys
from aed_jax import cli
applied = cli.keep_freed_host_memory() if sys.argv[1] == "on" else False
import jax, jax.numpy as jnp
x, z, w = jnp.linspace(0, 1, 3000), jnp.linspace(0, 1, 6000), jnp.ones((6000, 8))
f = jax.jit(lambda x, z, w: (jnp.sin(x[:, None] * z[None, :]) @ w).sum())  # a 72 MB temporary
f(x, z, w).block_until_ready()
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, z, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""
PAGES = 3000 * 6000 * 4 // 4096  # the temporary's 4 KiB pages


def _probe(mode, **env):
    untuned = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**untuned, **env})
    assert proc.returncode == 0, proc.stderr
    applied, *faults = proc.stdout.split()
    return applied == "True", [int(f) for f in faults]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_temporary_is_reused_instead_of_faulted_in_again():
    applied, faults = _probe("on")
    assert applied and statistics.median(faults) < PAGES / 10, faults
    applied, faults = _probe("off")  # glibc's default: every call faults the block in
    assert not applied and statistics.median(faults) > PAGES * 0.9, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_process_that_tunes_malloc_itself_is_left_alone():
    applied, faults = _probe("on", MALLOC_ARENA_MAX="4")
    assert not applied and statistics.median(faults) > PAGES * 0.9, faults
