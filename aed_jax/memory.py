"""Whether a program fits in memory, by XLA's own buffer assignment of the program that will run.

Every command that could ask for more memory than there is compiles the very program it runs and
reads what it allocates (`program_bytes`) before running it: the trainer and bench to size the
micro-batch on a GPU (`size_micro_batch`, whose program bench then times), `evaluate` its batch
(`eval_batch_bytes`), `sample` its generation. What there is comes from `device_free` (the allocator's limit less what is in use on GPU and TPU,
the host's available memory on CPU) and `host_available`.
"""
from __future__ import annotations

import os

from absl import logging
import jax
import jax.numpy as jnp

from aed_jax import mesh as mesh_lib
from aed_jax import metrics
from aed_jax import model as model_lib


def program_bytes(compiled, arguments_resident: bool = False) -> int:
    """Device bytes `compiled` needs: its temporaries and outputs, plus its arguments (less the outputs
    written into donated ones) unless they are `arguments_resident` already (counted as in use)."""
    mem = compiled.memory_analysis()
    if arguments_resident:
        return mem.temp_size_in_bytes + mem.output_size_in_bytes
    return mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes


def device_free(device) -> tuple[int, str]:
    """(bytes, what they are) that a new computation on `device` may allocate: its allocator's limit
    less what is in use where jax reports them (GPU, TPU), else the host's available memory (CPU)."""
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"free {device.device_kind} memory"
    return host_available(), "available host memory"


def host_available() -> int:
    """Bytes the host can still give: MemAvailable on Linux, elsewhere all physical memory."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def sizes_by_memory(c) -> bool:
    """Whether the micro-batch is sized by compiling candidate steps: on a GPU, when the config leaves
    micro_batch_size unset. Elsewhere the seed's split is kept (on a CPU a larger micro-batch gains
    little: BENCHMARKS.md) and nothing is compiled to size it. A test fakes a GPU here."""
    return c.micro_batch_size is None and jax.default_backend() == "gpu"


def size_micro_batch(c, mesh: jax.sharding.Mesh, compile_step) -> tuple[int, object | None]:
    """(micro-batch size, its compiled train step or None). `c.micro_batch_size` if set; where
    `sizes_by_memory`, the largest split of the effective batch whose compiled train step
    (`compile_step(micro)`) fits in 90% of device memory, returned with that very program, so a caller
    that runs it (bench) compiles its step once; elsewhere batch_size, and None: nothing was compiled."""
    if not sizes_by_memory(c):
        return c.micro_batch_size or c.batch_size, None
    rows, n_dev = c.batch_size * c.gradient_accumulation_steps, mesh.size
    limit = 0.9 * (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit", float("inf"))
    compiled = None
    for micro in sorted((m for m in range(n_dev, rows + 1, n_dev) if rows % m == 0), reverse=True):
        compiled = compile_step(micro)
        need = program_bytes(compiled)
        if need < limit:
            logging.info("micro_batch_size %d (%d micro-batches a step): %.1f GiB of %.1f", micro, rows // micro,
                         need / 2**30, limit / 0.9 / 2**30)
            return micro, compiled
    return n_dev, compiled  # none fits: the smallest split (the last compiled), which will say so when it runs


def pick_micro_batch_size(c, mesh: jax.sharding.Mesh, compile_step) -> int:
    """`size_micro_batch`'s size alone, for the trainer, which jits its step itself."""
    return size_micro_batch(c, mesh, compile_step)[0]


def eval_batch_bytes(cfg: model_lib.ModelConfig, params, batch_size: int, mesh: jax.sharding.Mesh,
                     problems: int | None = None) -> int:
    """Bytes one device allocates in `metrics.eval_sums` for a batch of `batch_size` beside the placed
    `params`; the same lowering `evaluate` then runs (for a task, whose rows pack `problems` each, the
    program that takes its answer mask; None for a corpus), so jax compiles it once."""
    sharding = mesh_lib.batch_sharding(mesh)
    x_BxT = jax.ShapeDtypeStruct((batch_size, cfg.context_size), jnp.int32, sharding=sharding)
    weight_B = jax.ShapeDtypeStruct((batch_size,), jnp.float32, sharding=sharding)
    answers = () if problems is None else \
        (jax.ShapeDtypeStruct((batch_size, cfg.context_size), jnp.float32, sharding=sharding),)
    compiled = metrics.eval_sums(cfg, problems or 1).lower(params, x_BxT, x_BxT, weight_B, *answers).compile()
    return program_bytes(compiled, arguments_resident=True)
