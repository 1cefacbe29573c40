"""The benchmark command: its FLOPs formula against a hand count, and a CPU smoke run."""
import dataclasses
import json
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
from aed_jax import mesh as mesh_lib
from aed_jax import model as model_lib


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
    assert result["mfu"] is None  # no peak for a CPU
    assert result["generate_tokens_per_s"] > 0 and result["generate_tokens_per_s_batch8"] > 0
    # The step holds at least its params, the two Adam moments and the [B, T, V] float32 logits.
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(
        model_lib.init_params(benchmark.model_lib.from_config(c), jax.random.key(0))))
    assert result["step_memory_gib"] * 2**30 >= 4 * (3 * n_params + 4 * 16 * 128)
    for name in ("prefetch", "sync"):
        assert result[f"fed_step_ms_{name}"] > 0 and 0 <= result[f"data_wait_ms_{name}"] < result[f"fed_step_ms_{name}"]
    table = benchmark.format_table(result)
    assert "tokens/s" in table and "data-fed (prefetch)" in table and table.startswith("model                aed\n")


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
def test_peak_table(kind, peak, monkeypatch):
    class Device:
        device_kind = kind
    monkeypatch.setattr(jax, "devices", lambda: [Device()])
    assert mesh_lib.peak_flops() == peak


def test_gpu_script_rows_parse_as_bench_command_lines(monkeypatch):
    """Every row of experiments/bench_gpu.sh (run only where a GPU is lent) names a real config,
    real keys and bench's own flags, and yields a valid config: a typo must not cost a GPU lease."""
    script = pathlib.Path(__file__).parent.parent / "experiments" / "bench_gpu.sh"
    rows = re.findall(r'^\s*"(\w+)\|([^"]+)"', script.read_text(), re.M)
    assert len(rows) >= 8 and {"baseline", "aed_mse_pos_sub"} <= {name for name, _ in rows}
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
