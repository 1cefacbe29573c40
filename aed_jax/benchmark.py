"""Training throughput, memory and generation speed of a config: what `python -m aed_jax.bench` runs.

Compiles, warms up and times steady-state train steps on random tokens at the config's effective
batch (batch_size x gradient_accumulation_steps sequences, split by micro_batch_size), then the
eval forward and cached generation. Prints compile time, median step time, tokens/s, model FLOPs
per token, MFU, and device memory: the allocator's peak where the backend reports one (GPU, TPU)
and, on every backend, what XLA's buffer assignment says the compiled step needs. With
--input_pipeline it also times steps fed by the real data pipeline, with and without prefetch.
The step runs on the config's mesh (mesh_data x mesh_fsdp), so per-device memory shows what FSDP
saves; --memory_only compiles the step and reports its memory without running it (a model too big
to time on this machine still gets its figures).

FLOPs per token are `model.flops_per_token`'s (PaLM's convention), as the trainer's progress line
reports them; MFU against `mesh.peak_flops` (a data sheet's) where the device is known, else against
a matmul peak measured here (`device_peak`).
"""
import functools
import statistics
import time

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from aed_jax import data
from aed_jax import decoding
from aed_jax import ensemble
from aed_jax import memory
from aed_jax import mesh as mesh_lib
from aed_jax import metrics
from aed_jax import model as model_lib
from aed_jax import optim
from aed_jax import prepare
from aed_jax import tasks
from aed_jax import train


# Matmul sizes that keep a device's matmul units busy: 2048 fills two CPU cores (~0.2 s a product in
# float32), 8192 a GPU (~1 ms in bf16 on an H100); larger gives no more on either.
MATMUL_N = {"cpu": 2048}
MATMUL_N_ACCELERATOR = 8192


def matmul_peak(dtype, n: int | None = None, repeats: int = 3, clock=time.perf_counter) -> float:
    """FLOP/s of the local devices together, measured: one jitted program in which every local device
    multiplies two n x n `dtype` matrices (2 n^3 FLOPs each), timed after a warm-up call; the best of
    `repeats` calls, since interference only ever slows a call. Times the whole host's devices at
    once so that virtual CPU devices, which share cores, are not each credited with all of them."""
    devices = jax.local_devices()
    n = n or MATMUL_N.get(jax.default_backend(), MATMUL_N_ACCELERATOR)
    sharding = NamedSharding(Mesh(np.array(devices), ("d",)), P("d"))
    a, b = (jax.device_put(np.random.default_rng(i).standard_normal((len(devices), n, n), np.float32).astype(dtype),
                           sharding) for i in (0, 1))
    product = jax.jit(lambda a, b: jnp.einsum("dij,djk->dik", a, b), out_shardings=sharding)
    jax.block_until_ready(product(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        jax.block_until_ready(product(a, b))
        best = min(best, clock() - start)
    return 2.0 * n**3 * len(devices) / best


def device_peak(dtype) -> tuple[float, str]:
    """(peak FLOP/s of all the devices, "spec" or "measured"): the data sheet's where mesh.PEAK_BF16 knows
    the device, else `matmul_peak` in the compute `dtype` (times the processes, each timing its own)."""
    spec = mesh_lib.peak_flops()
    if spec is not None:
        return spec * jax.device_count(), "spec"
    return matmul_peak(dtype) * jax.process_count(), "measured"


def timed(fn, *args, repeats: int) -> float:
    """Median seconds of `repeats` calls after two warm-up calls, each waited for."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def step_memory(c) -> dict:
    """Per-device memory of `c`'s train step on its mesh, by XLA's buffer assignment, compiled and
    not run: the parameters + AdamW state one device holds, and what the whole step needs."""
    mesh = mesh_lib.make_mesh(c)
    model, optimizer = model_lib.from_config(c), optim.make_optimizer(c)
    abstract = train.abstract_state(model, optimizer, mesh)
    lower = functools.partial(train.lower_train_step, c, model, optimizer, mesh, abstract)
    start = time.perf_counter()
    micro, step = memory.size_micro_batch(c, mesh, lower)
    if step is None:
        step = lower(micro)
    return {"model_type": c.model_type, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "mesh": f"{mesh.shape['data']}x{mesh.shape['fsdp']}", "micro_batch_size": micro,
            "params": sum(a.size for a in jax.tree_util.tree_leaves(abstract["params"])),
            "state_gib_per_device": mesh_lib.bytes_per_device((abstract["params"], abstract["opt_state"])) / 2**30,
            "step_memory_gib": memory.program_bytes(step) / 2**30, "compile_s": time.perf_counter() - start}


def run(c, steps: int = 10, generate_tokens: int = 32, input_pipeline: bool = False, time_eval: bool = True) -> dict:
    """The measurements as a dict (see the module docstring); `input_pipeline` adds
    `time_input_pipeline`'s; `time_eval` False skips the eval forward's timing (and its compilation:
    a GPU lease's rows keep to the train step)."""
    mesh = mesh_lib.make_mesh(c)
    model, optimizer = model_lib.from_config(c), optim.make_optimizer(c)
    cfg, T = model.cfg, c.model_config.context_size
    rows = c.batch_size * c.gradient_accumulation_steps
    abstract = train.abstract_state(model, optimizer, mesh)
    state = train.init_on_mesh(jax.random.key(0), abstract, model=model, optimizer=optimizer)
    rng = np.random.default_rng(0)
    if tasks.task_name(c.dataset) is None:
        tokens = rng.integers(0, cfg.alphabet_size, (rows, T + 1)).astype(np.int32)
        host_batch = {"x": tokens[:, :-1], "y": tokens[:, 1:]}
    else:  # the task's batch, loss mask included: the program the trainer runs
        host_batch = tasks.make_batch(c, rng, rows)
    batch = mesh_lib.to_global(mesh, host_batch)
    lower = functools.partial(train.lower_train_step, c, model, optimizer, mesh, abstract)
    lr = np.float32(c.lr)  # any rate: the program is the same for all
    start = time.perf_counter()
    micro, step = memory.size_micro_batch(c, mesh, lower)
    if step is None:  # sizing compiled nothing (a CPU, or micro_batch_size set)
        step = lower(micro)
    compile_s = time.perf_counter() - start

    def one_step():
        state["params"], state["opt_state"], metrics = step(state["params"], state["opt_state"], batch,
                                                            jax.random.key(1), lr)
        return metrics

    step_s = timed(one_step, repeats=steps)
    tokens_per_s = rows * T / step_s
    fpt = model_lib.flops_per_token(state["params"], cfg)
    peak, peak_source = device_peak(jnp.dtype(cfg.dtype))
    state = {"params": state["params"], "opt_state": state["opt_state"]}
    out = {
        "model_type": c.model_type, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
        "mesh": f"{mesh.shape['data']}x{mesh.shape['fsdp']}", "dtype": jnp.dtype(cfg.dtype).name, "batch_tokens": rows * T, "micro_batch_size": micro,
        "compile_s": compile_s, "step_ms": 1e3 * step_s, "tokens_per_s": tokens_per_s,
        "flops_per_token": fpt, "achieved_flops": fpt * tokens_per_s, "peak_flops": peak, "peak_source": peak_source,
        "mfu": fpt * tokens_per_s / peak,
        "peak_memory_gib": _peak_memory_gib(), "step_memory_gib": memory.program_bytes(step) / 2**30,
        "state_gib_per_device": mesh_lib.bytes_per_device(state) / 2**30,
    }
    if time_eval:
        eval_batch = {k: batch[k][: c.batch_size] for k in "xy"}
        eval_fn = jax.jit(lambda p, b: metrics.eval_step(p, b, model=model))
        out["eval_tokens_per_s"] = c.batch_size * T / timed(eval_fn, state["params"], eval_batch, repeats=steps)
    if input_pipeline:
        out.update(time_input_pipeline(c, step, state, mesh, steps))
    if generate_tokens:  # the whole generation, one compiled program, at batch 1 and 8
        params_host = jax.device_get(state["params"])
        for b, key in ((1, "generate_tokens_per_s"), (8, "generate_tokens_per_s_batch8")):
            prompt = np.tile(host_batch["x"][:1, : min(8, T)], (b, 1))
            decoding.generate(model, params_host, prompt, generate_tokens, greedy=True)  # compiles
            start = time.perf_counter()
            decoding.generate(model, params_host, prompt, generate_tokens, greedy=True)
            out[key] = b * generate_tokens / (time.perf_counter() - start)
    return out


def run_ensemble(c, sizes: list[int], steps: int = 10) -> list[dict]:
    """An ensemble's step (`ensemble.member_step`: K members of `c`, seeds 0..K-1, one vmapped program) timed
    at each K of `sizes` on random tokens (a task's own batches): per K its compile time, median step time
    and aggregate tokens/s (every member's tokens), and that throughput against K = 1's where K = 1 is timed,
    what training K runs as one program gains over training them one after another."""
    rows, T = c.batch_size * c.gradient_accumulation_steps, c.model_config.context_size
    model, optimizer = model_lib.from_config(c), optim.make_optimizer(c)
    out = []
    for K in sizes:
        mesh = mesh_lib.ensemble_mesh(c, K)
        abstract = train.abstract_state(model, optimizer, mesh)
        stacked = jax.tree_util.tree_map(lambda a: mesh_lib.stacked(a.sharding), abstract)
        state = jax.jit(jax.vmap(functools.partial(train.init_state, model=model, optimizer=optimizer)),
                        out_shardings=stacked)(jax.random.split(jax.random.key(0), K))
        rng = np.random.default_rng(0)
        if tasks.task_name(c.dataset) is None:
            tokens = rng.integers(0, c.model_config.alphabet_size, (K, rows, T + 1)).astype(np.int32)
            host_batch = {"x": tokens[..., :-1], "y": tokens[..., 1:]}
        else:
            batches = [tasks.make_batch(c, rng, rows) for _ in range(K)]
            host_batch = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
        batch = jax.device_put(host_batch, mesh_lib.stacked(mesh_lib.batch_sharding(mesh)))
        args = (jnp.ones(K, bool), batch, jax.random.split(jax.random.key(1), K), jnp.full(K, c.lr, jnp.float32), {})
        step = ensemble.member_step(c, mesh, abstract, c.micro_batch_size or c.batch_size)
        start = time.perf_counter()
        step = step.lower(state["params"], state["opt_state"], *args).compile()
        compile_s = time.perf_counter() - start

        def one_step():
            state["params"], state["opt_state"], _, metrics = step(state["params"], state["opt_state"], *args)
            return metrics

        step_s = timed(one_step, repeats=steps)
        out.append({"members": K, "mesh": "x".join(str(n) for n in mesh.devices.shape), "compile_s": compile_s,
                    "step_ms": 1e3 * step_s, "tokens_per_s": K * rows * T / step_s})
    base = next((r["tokens_per_s"] for r in out if r["members"] == 1), None)
    for r in out:
        r["speedup"] = r["tokens_per_s"] / base if base else None
    return out


def format_ensemble_table(config: str, device: str, rows: list[dict]) -> str:
    """`run_ensemble`'s rows as the markdown table of BENCHMARKS.md."""
    lines = [f"{config} on {device}", "", "| members K | mesh (member x data x fsdp) | compile s | step ms | "
             "tokens/s (all members) | vs K = 1 |", "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        speedup = "n/a" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['members']} | {r['mesh']} | {r['compile_s']:.1f} | {r['step_ms']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {speedup} |")
    return "\n".join(lines)


def time_input_pipeline(c, step, state: dict, mesh: Mesh, steps: int) -> dict:
    """Train steps fed by the real pipeline (the config's dataset through grain), as the trainer's
    loop runs them (dispatch step i, then read step i-1's metrics): once through `DevicePrefetch`,
    once copying each batch to the device when the step asks for it. Reports each loop's step time
    and the time it spent waiting for its batch, per step."""
    rows, T = c.batch_size * c.gradient_accumulation_steps, c.model_config.context_size
    train_path, _ = prepare.ensure_data(c)
    to_global = functools.partial(mesh_lib.to_global, mesh)
    out = {}
    for name in ("prefetch", "sync"):
        host = data.train_iterator(train_path, T, rows, c.random_seed, mesh_lib.process_slice(rows))
        batches = data.DevicePrefetch(host, to_global) if name == "prefetch" else map(to_global, host)
        pending, wait_s = None, 0.0
        for i in range(steps + 2):  # two warm-up steps
            if i == 2:
                jax.block_until_ready(pending)
                start, wait_s = time.perf_counter(), 0.0
            t = time.perf_counter()
            batch = next(batches)
            wait_s += time.perf_counter() - t
            state["params"], state["opt_state"], metrics = step(state["params"], state["opt_state"], batch,
                                                                jax.random.key(i), np.float32(c.lr))
            if pending is not None:
                jax.device_get(pending)
            pending = metrics
        jax.device_get(pending)
        out[f"fed_step_ms_{name}"] = 1e3 * (time.perf_counter() - start) / steps
        out[f"data_wait_ms_{name}"] = 1e3 * wait_s / steps
    return out


def _peak_memory_gib() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None


def format_table(r: dict) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    model = r["model_type"] + (f" ({r['config']})" if "config" in r else "")
    peak = "the data sheet's dense bf16" if r["peak_source"] == "spec" else f"measured, {r['dtype']} matmul"
    rows = [("model", model),
            ("device", f"{r['devices']} x {r['device']} ({r['dtype']}), mesh data x fsdp = {r['mesh']}"),
            ("batch", f"{r['batch_tokens']:,} tokens, micro-batch {r['micro_batch_size']} sequences"),
            ("compile", f"{r['compile_s']:.1f} s"), ("step", f"{r['step_ms']:.1f} ms (median)"),
            ("tokens/s", f"{r['tokens_per_s']:,.0f}"), ("FLOPs/token", f"{r['flops_per_token'] / 1e6:.1f} M"),
            ("MFU", f"{100 * r['mfu']:.2f} % ({r['achieved_flops'] / 1e9:,.1f} GFLOP/s of a {r['peak_flops'] / 1e9:,.1f} "
                    f"GFLOP/s peak: {peak})"),
            ("peak memory", fmt(r["peak_memory_gib"], ".2f") + (" GiB" if r["peak_memory_gib"] is not None else "")
             + f" (allocator); step needs {r['step_memory_gib']:.2f} GiB (XLA's buffer assignment), params + "
             f"optimizer {r['state_gib_per_device']:.2f} GiB of it")]
    if "eval_tokens_per_s" in r:
        rows.append(("eval tokens/s", f"{r['eval_tokens_per_s']:,.0f}"))
    for name in ("prefetch", "sync"):
        if f"fed_step_ms_{name}" in r:
            rows.append((f"data-fed ({name})", f"{r[f'fed_step_ms_{name}']:.1f} ms a step, "
                                               f"{r[f'data_wait_ms_{name}']:.2f} ms of it waiting for the batch"))
    if "generate_tokens_per_s" in r:
        rows.append(("generate (cached)", f"{r['generate_tokens_per_s']:,.1f} tokens/s at batch 1, "
                                          f"{r['generate_tokens_per_s_batch8']:,.1f} at batch 8 (one compiled program)"))
    return "\n".join(f"{name:<20} {value}" for name, value in rows)
