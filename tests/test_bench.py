"""The benchmark command: its FLOPs formula against a hand count, its peaks (known and measured), one
compilation of a row's step, a CPU smoke run, and the GPU lease script's rows (parsed, and dry-run on CPU)."""
import dataclasses
import json
import logging
import os
import pathlib
import re
import subprocess
import sys

from absl import flags
import jax
import numpy as np
import pytest

from aed_jax import bench
from aed_jax import benchmark
from aed_jax import config as config_lib
from aed_jax import memory
from aed_jax import mesh as mesh_lib
from aed_jax import model as model_lib
from experiments import lease

ROOT = pathlib.Path(__file__).parent.parent


@pytest.mark.fast
def test_flops_per_token_matches_the_hand_count():
    D, L, T, V = 32, 3, 16, 100
    cfg = model_lib.ModelConfig(model_type="baseline", alphabet_size=V, context_size=T, n_embed=D, n_head=2, n_layer=L)
    params = jax.eval_shape(lambda: model_lib.init_params(model_lib.make_model(cfg), jax.random.key(0)))
    assert model_lib.flops_per_token(params, cfg) == 6 * (L * 12 * D * D + V * D) + 12 * L * T * D
    aed = model_lib.ModelConfig(alphabet_size=V, context_size=T, n_embed=D, n_head=2, n_layer=L)
    params = jax.eval_shape(lambda: model_lib.init_params(model_lib.make_model(aed), jax.random.key(0)))
    # Encoder blocks 12 D^2, decoder blocks 16 D^2 (cross-attention q, k, v, out), the bridge D^2;
    # attention in L encoder blocks and 2 L decoder attentions.
    expected = 6 * (L * 12 * D * D + L * 16 * D * D + D * D + V * D) + 12 * 3 * L * T * D
    assert model_lib.flops_per_token(params, aed) == expected
    scanned = dataclasses.replace(aed, scan_layers=True)
    params = jax.eval_shape(lambda: model_lib.init_params(model_lib.make_model(scanned), jax.random.key(0)))
    assert model_lib.flops_per_token(params, scanned) == expected


@pytest.mark.slow  # over 10 s on one core: the quick step stays within its budget
def test_bench_runs_on_cpu(tmp_path):
    c = config_lib.base_config("aed")
    c.model_config.update(dict(n_embed=32, n_head=2, n_layer=1, context_size=16, alphabet_size=128))
    c.batch_size, c.gradient_accumulation_steps = 4, 2
    c.dataset, c.data_dir = "toy", str(tmp_path)
    for split in ("train", "val"):
        np.random.default_rng(0).integers(0, 128, 1000).astype(np.uint16).tofile(tmp_path / f"toy_{split}.bin")
    result = benchmark.run(c, steps=2, generate_tokens=4, input_pipeline=True)
    assert result["tokens_per_s"] > 0 and result["step_ms"] > 0 and result["compile_s"] > 0
    assert result["batch_tokens"] == 4 * 2 * 16
    # No data sheet for a CPU: the peak is measured, and the model's FLOP/s are a fraction of it.
    assert result["peak_source"] == "measured" and result["peak_flops"] > 0
    assert 0 < result["mfu"] <= 1 and result["achieved_flops"] == pytest.approx(result["mfu"] * result["peak_flops"])
    assert result["generate_tokens_per_s"] > 0 and result["generate_tokens_per_s_batch8"] > 0
    # The step holds at least its params, the two Adam moments and the [B, T, V] float32 logits.
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(
        model_lib.init_params(benchmark.model_lib.from_config(c), jax.random.key(0))))
    assert result["step_memory_gib"] * 2**30 >= 4 * (3 * n_params + 4 * 16 * 128)
    for name in ("prefetch", "sync"):
        assert result[f"fed_step_ms_{name}"] > 0 and 0 <= result[f"data_wait_ms_{name}"] < result[f"fed_step_ms_{name}"]
    table = benchmark.format_table(result)
    assert "tokens/s" in table and "data-fed (prefetch)" in table and table.startswith("model                aed\n")
    assert "peak: measured, float32 matmul)" in table


def _small_aed():
    c = config_lib.base_config("aed")
    c.model_config.update(dict(n_embed=32, n_head=2, n_layer=1, context_size=16, alphabet_size=128))
    c.batch_size, c.gradient_accumulation_steps = 4, 2
    return c


@pytest.mark.parametrize("sized", [True, False], ids=["sized_by_memory", "seed_split"])
def test_a_row_compiles_its_train_step_once(sized, monkeypatch, caplog):
    """The program that sizes the micro-batch (on a GPU: faked here) is the program timed: jax compiles
    the train step once per row, where it compiled it twice before (sizing, then timing)."""
    monkeypatch.setattr(memory, "sizes_by_memory", lambda c: sized)
    with jax.log_compiles(), caplog.at_level(logging.DEBUG):
        result = benchmark.run(_small_aed(), steps=1, generate_tokens=0, time_eval=False)
    compiles = [m for m in (r.getMessage() for r in caplog.records)
                if m.startswith("Finished XLA compilation of") and "train_step" in m]
    assert len(compiles) == 1, compiles
    # Sized by memory: the largest split that fits (all 8 rows, with no device limit on a CPU); else the seed's.
    assert result["micro_batch_size"] == (8 if sized else 4) and result["tokens_per_s"] > 0


@pytest.mark.fast
def test_matmul_peak_is_two_n_cubed_a_device_over_the_best_time():
    """The measured peak: 2 n^3 FLOPs per device's product, over the fastest of the timed calls (the
    clock here is fake: calls of 0.5, 0.25 and 1.0 s)."""
    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0])
    peak = benchmark.matmul_peak(np.float32, n=64, repeats=3, clock=lambda: next(ticks))
    assert peak == 2 * 64**3 * jax.local_device_count() / 0.25


def test_a_cpu_gets_a_measured_peak():
    peak, source = benchmark.device_peak(np.float32)
    assert source == "measured" and peak > 1e8  # any CPU of this century multiplies faster than 0.1 GFLOP/s


@pytest.mark.slow  # over 10 s on one core: the quick step stays within its budget
def test_cli_json_names_the_config_file(tmp_path):
    """--json reports which config file was measured, beside the model type."""
    for split in ("train", "val"):
        np.random.default_rng(0).integers(0, 128, 1000).astype(np.uint16).tofile(tmp_path / f"toy_{split}.bin")
    config = tmp_path / "toy_aed.py"
    config.write_text(
        "from aed_jax import config as config_lib\n\n\ndef get_config():\n"
        "    c = config_lib.base_config('aed')\n"
        "    c.model_config.update(dict(n_embed=16, n_head=2, n_layer=1, context_size=8, alphabet_size=128))\n"
        f"    c.batch_size, c.gradient_accumulation_steps, c.dataset, c.data_dir = 2, 1, 'toy', {str(tmp_path)!r}\n"
        "    return c\n")
    result = subprocess.run([sys.executable, "-m", "aed_jax.bench", f"--config={config}", "--steps=1",
                             "--generate_tokens=0", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["config"] == str(config) and row["model_type"] == "aed" and row["tokens_per_s"] > 0
    assert f"aed ({config})" in benchmark.format_table(row)


@pytest.mark.slow
def test_memory_only_per_device_falls_with_the_fsdp_axis():
    """--memory_only compiles the step on the config's mesh (4 virtual devices here) without running it;
    the parameters + optimizer state per device fall as the fsdp axis grows."""
    rows = {}
    for fsdp in (1, 2, 4):
        result = subprocess.run(
            [sys.executable, "-m", "aed_jax.bench", "--config=configs/tiny.py", "--memory_only", "--json",
             f"--config.mesh_fsdp={fsdp}", "--config.batch_size=4"], capture_output=True, text=True, timeout=300,
            env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
        assert result.returncode == 0, result.stderr[-2000:]
        rows[fsdp] = json.loads(result.stdout.strip().splitlines()[-1])
    assert [rows[f]["mesh"] for f in (1, 2, 4)] == ["4x1", "2x2", "1x4"]
    state = [rows[f]["state_gib_per_device"] for f in (1, 2, 4)]
    params = rows[1]["params"]
    assert state[0] * 2**30 == pytest.approx(3 * 4 * params, rel=0.01)  # float32 params and two AdamW moments
    assert state[0] > 1.9 * state[1] > 3.6 * state[2]  # all but the small replicated arrays split
    assert rows[4]["step_memory_gib"] < rows[1]["step_memory_gib"]


@pytest.mark.parametrize("kind,peak", [("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12),
                                       ("NVIDIA A100-SXM4-80GB", 312e12)])
@pytest.mark.fast
def test_peak_table(kind, peak, monkeypatch):
    class Device:
        device_kind = kind
    monkeypatch.setattr(jax, "devices", lambda: [Device()])
    assert mesh_lib.peak_flops() == peak
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    assert benchmark.device_peak(np.dtype("float32")) == (8 * peak, "spec")  # the data sheet's, never measured


def test_gpu_script_rows_parse_as_bench_command_lines(monkeypatch):
    """Every row of experiments/bench_gpu.sh and every bench row of experiments/lease.py (run only
    where a GPU is lent) names a real config, real keys and bench's own flags, and yields a valid
    config: a typo must not cost a GPU lease."""
    script = ROOT / "experiments" / "bench_gpu.sh"
    rows = re.findall(r'^\s*"(\w+)\|([^"]+)"', script.read_text(), re.M)
    assert len(rows) >= 8 and {"baseline", "aed_mse_pos_sub"} <= {name for name, _ in rows}
    for dry_run in (False, True):  # and the bench rows of the lease script, on a GPU and dry-run
        rows += [(name, " ".join(lease.plan(name, "OUT", dry_run, None)[0][2:]))
                 for name, (kind, *_) in lease.ROWS.items() if kind == "bench"]
    for name, args in rows:
        argv = ["bench", *args.split(), "--json"]
        monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads --config.<key> overrides from sys.argv
        flag_values = flags.FlagValues()
        bench.define_flags(flag_values)
        flag_values(argv)
        config_lib.validate(flag_values.config)
        assert flag_values.json, name


@pytest.mark.parametrize("model_type,layers,attention_calls",
                         [pytest.param("aed", 2, 6, marks=pytest.mark.slow),
                          pytest.param("baseline", 3, 3, marks=pytest.mark.slow)])
def test_cpu_profile_times_every_piece_and_counts_the_attention_calls(model_type, layers, attention_calls):
    """experiments/profile_cpu: each attention call the model makes is recorded (AED: encoder self,
    decoder self and cross per layer), and every piece gets a positive time."""
    from experiments import profiling
    c = config_lib.base_config(model_type)
    c.model_config.update(dict(n_embed=32, n_head=2, n_layer=layers, context_size=16, alphabet_size=128))
    r = profiling.profile(c, micro=2, repeats=1)
    assert r["attention calls"] == attention_calls
    for piece in ("step", "loss grad", "forward", "head + CE", "attention", "AdamW"):
        assert r[piece] > 0, piece
    assert r["rest of the stack"] == pytest.approx(r["loss grad"] - r["head + CE"] - r["attention"])


def test_cpu_profile_thunks_name_the_model_operations_of_a_step():
    """experiments/profile_cpu --thunks: the trace's thunks map back to the model's operations (the
    feed-forward's matmuls among them), each with a positive time, and page faults are counted."""
    from experiments import profiling
    c = config_lib.base_config("baseline")
    c.model_config.update(dict(n_embed=32, n_head=2, n_layer=2, context_size=16, alphabet_size=128))
    top, faults = profiling.thunks(c, micro=2, repeats=2)
    assert top and all(ms > 0 and n >= 1 for _, ms, n in top)
    assert [ms for _, ms, _ in top] == sorted((ms for _, ms, _ in top), reverse=True)
    assert any("transformer_blocks/feed_forward/linear/dot_general" in op for op, _, _ in top), top[:10]
    assert not any(op.endswith(("[while]", "[call]")) for op, _, _ in top)  # not counted twice
    assert faults >= 0


def test_lease_mini_rows_are_the_mini_schedule_cut_short():
    """The lease's trainer rows: --scale mini's warmup and decay for the seed's config, cut to a few steps
    with one estimate at the end, every --config key real and the config valid."""
    argv, _ = lease.plan("seed_mini_baseline", "OUT", False, None)
    c = config_lib.load(str(ROOT / "configs" / "baseline.py"))
    for arg in argv:
        if arg.startswith("--config."):
            key, value = arg[len("--config."):].split("=")
            c[key] = type(c[key])(value)
    config_lib.validate(c)
    assert (c.train_steps, c.est_interval, c.warmup_iters) == (lease.MINI_STEPS, lease.MINI_STEPS, 30)
    assert argv[argv.index("--fresh") - 1] == "--workdir=" + os.path.join("OUT", "seed_mini", "seed_mini_baseline")


@pytest.mark.slow  # four tiny rows on CPU, each a process that loads jax and compiles: a minute or more
def test_lease_dry_run_writes_one_row_per_step(tmp_path):
    """experiments/lease.py --dry_run, end to end on CPU: every row of the lease in order, each one JSON
    object in rows.jsonl with its figures (bench's, or the trainer's from its workdir)."""
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val"):
        np.random.default_rng(0).integers(0, 50257, 20_000).astype(np.uint16).tofile(data / f"{split}.bin")
    out = tmp_path / "lease"
    result = subprocess.run([sys.executable, "-m", "experiments.lease", f"--out={out}", "--dry_run",
                             f"--data_dir={data}"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stderr[-2000:], (out / "lease.log").read_text()[-3000:])
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == list(lease.ROWS)
    by_name = {r["row"]: r for r in rows}
    assert by_name["ensemble_k16"]["status"] == "skipped" and "bench --ensemble" in by_name["ensemble_k16"]["note"]
    for name in ("baseline", "aed_mse_pos_sub"):
        r = by_name[name]
        assert r["status"] == "ok", r
        assert r["command"].startswith("python -m aed_jax.bench") and r["wall_s"] > 0
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] <= 1 and r["peak_source"] == "measured"
    assert by_name["baseline"]["model_type"] == "baseline" and by_name["aed_mse_pos_sub"]["model_type"] == "aed"
    for name in ("seed_mini_mse_pos_sub", "seed_mini_baseline"):
        r = by_name[name]
        assert r["status"] == "ok", r
        assert r["train_steps"] == 2 and r["steps_tokens_per_s"] > 0 and np.isfinite(r["val_loss"])
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == list(lease.ROWS)
