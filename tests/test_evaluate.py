"""The evaluator: exact means over every window, seeded random batches, data paths, one-line errors."""
import json
import math
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from aed_jax import api
from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import memory
from aed_jax import evaluate
from aed_jax import mesh as mesh_lib
from aed_jax import model as model_lib

T, V = 8, 97
LOSS = dict(embedding_loss_type="MSE", embedding_loss_coeff=2.0, detach_type="ENCODER_OUT",
            embedding_ln_type="INIT", use_ln_on_encoder_out=True, sub_pos_embed_to_decoder="YES_NO_LN")


def tiny_config(model_type="aed", **model):
    config = config_lib.base_config(model_type)
    config.model_config.update(dict(n_embed=16, n_head=2, n_layer=1, context_size=T, alphabet_size=V, **model))
    config.batch_size = 4
    config.est_steps = 3
    return config


def save_run(workdir, config, seed=0, step=0):
    model = model_lib.make_model(model_lib.ModelConfig.from_config(config))
    params = jax.jit(lambda key: model_lib.init_params(model, key))(jax.random.key(seed))
    api.save_params(workdir, params, config, step)
    return model, params


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An AED run with an MSE embedding loss (steps 0 and 5, different weights) and a token folder."""
    root = tmp_path_factory.mktemp("eval")
    workdir, data = str(root / "run"), root / "data"
    config = tiny_config(**LOSS)
    model, params = save_run(workdir, config, seed=0, step=0)
    save_run(workdir, config, seed=1, step=5)
    data.mkdir()
    rng = np.random.default_rng(0)
    val = rng.integers(0, V, 8 * 11 + 3).astype(np.uint16)  # 11 windows (the last batch of 4 is short)
    val.tofile(data / "val.bin")
    rng.integers(0, V, 500).astype(np.uint16).tofile(data / "train.bin")
    return dict(workdir=workdir, data=str(data), model=model, params=params, val=val)


def run_cli(argv):
    fv = flags.FlagValues()
    evaluate.define_flags(fv)
    cli.reporting(evaluate.main)(fv(["evaluate"] + argv), fv)


def run_json(capsys, argv):
    run_cli(argv + ["--json"])
    return json.loads(capsys.readouterr().out)


def test_full_pass_is_the_exact_mean_over_every_window(run, capsys):
    got = run_json(capsys, ["--workdir", run["workdir"], "--checkpoint", "0", "--data", run["data"], "--full"])
    windows = (len(run["val"]) - 1) // T
    assert windows == 11 and got["tokens"] == windows * T
    window = np.arange(windows)[:, None] * T + np.arange(T + 1)[None]
    x, y = run["val"][window[:, :-1]].astype(np.int32), run["val"][window[:, 1:]].astype(np.int32)
    logits, losses = run["model"].apply({"params": run["params"]}, x, y, with_embedding_loss=True)
    np.testing.assert_allclose(got["ce_loss"], losses["ce"], rtol=1e-5)
    np.testing.assert_allclose(got["perplexity"], math.exp(got["ce_loss"]), rtol=1e-9)
    np.testing.assert_allclose(got["accuracy_loss"], np.mean(np.argmax(logits, -1) != y), rtol=1e-6)
    np.testing.assert_allclose(got["embedding_loss"], losses["embedding_loss"], rtol=1e-5)
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ce_T = -np.take_along_axis(logp, y[..., None], -1)[..., 0].mean(axis=0)  # mean over windows, per position
    assert len(got["ce_by_position"]) == T and np.ptp(ce_T) > 1e-3
    np.testing.assert_allclose(got["ce_by_position"], ce_T, rtol=1e-5)
    assert got["step"] == 0 and got["data"] == os.path.join(run["data"], "val.bin")


def test_eval_mode_embedding_loss_is_the_training_one_without_dropout(run):
    x = np.asarray(run["val"][:2 * T].reshape(2, T), np.int32)
    apply = lambda **kw: run["model"].apply({"params": run["params"]}, x, x, **kw)[1]
    assert float(apply()["embedding_loss"]) == 0.0  # the reference's eval mode has none
    np.testing.assert_allclose(apply(with_embedding_loss=True)["embedding_loss"], apply(train=True)["embedding_loss"])


@pytest.mark.fast
def test_random_batches_follow_the_seed(run, capsys):
    argv = ["--workdir", run["workdir"], "--data", run["data"], "--split", "train", "--batches", "2"]
    first = run_json(capsys, argv + ["--seed", "1"])
    assert first["tokens"] == 2 * 4 * T and first["step"] == 5  # latest by default
    assert run_json(capsys, argv + ["--seed", "1"]) == first
    assert run_json(capsys, argv + ["--seed", "2"])["ce_loss"] != first["ce_loss"]
    assert run_json(capsys, argv[:-2])["tokens"] == 3 * 4 * T  # est_steps batches by default


def test_table_and_data_file_or_named_split(run, tmp_path, capsys):
    named = tmp_path / "corpus_val.bin"
    run["val"].tofile(named)
    by_file = run_json(capsys, ["--workdir", run["workdir"], "--data", str(named), "--full"])
    by_folder = run_json(capsys, ["--workdir", run["workdir"], "--data", str(tmp_path), "--full"])
    assert by_file["ce_loss"] == by_folder["ce_loss"] and by_folder["data"] == str(named)
    run_cli(["--workdir", run["workdir"], "--data", str(named), "--full"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["ce_loss", "perplexity", "accuracy_loss", "tokens",
                                                       "embedding_loss", "ce_by_position", "embedding_loss_by_position"]
    assert " positions: t=0 " in lines[-1]  # a curve summarised, not listed


@pytest.mark.fast
def test_baseline_reports_no_embedding_loss(tmp_path, run, capsys):
    save_run(str(tmp_path / "gpt"), tiny_config("baseline"))
    got = run_json(capsys, ["--workdir", str(tmp_path / "gpt"), "--data", run["data"], "--full"])
    assert set(got) >= {"ce_loss", "perplexity", "accuracy_loss", "tokens"} and "embedding_loss" not in got


@pytest.mark.parametrize("argv,message", [
    (["--workdir", "/nonexistent/run"], "does not exist"),
    (["--workdir", "{empty}"], "has no checkpoints"),
    (["--workdir", "{run}", "--checkpoint", "3"], "no checkpoint '3'; saved steps: [0, 5]"),
    (["--workdir", "{run}", "--checkpoint", "best"], "has no best/ checkpoints"),
    (["--workdir", "{run}", "--data", "{empty}/none.bin"], "none.bin: no such file"),
    (["--workdir", "{run}", "--data", "{empty}"], "no val.bin or <name>_val.bin"),
    (["--workdir", "{run}", "--full", "--batches", "2"], "exclude each other"),
    (["--workdir", "{run}", "--batches", "0"], "--batches must be at least 1"),
    (["--workdir", "{run}", "--seed", "-1"], "--seed must be >= 0"),
    (["--workdir", "{run}", "--data", "{data}", "--full", "--batch_size", "1000000000"],
     "error: a batch of 1000000000 sequences needs"),
])
@pytest.mark.fast
def test_bad_input_is_one_line_and_exit_1(run, tmp_path, capsys, argv, message):
    argv = [a.format(empty=str(tmp_path), run=run["workdir"], data=run["data"]) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_batch_beyond_memory_is_refused_with_one_that_fits(run, capsys, monkeypatch):
    """On CPU the limit is the host's available memory (here 1 GiB): the refusal names it, and the
    batch it suggests does fit by the same measure (XLA's buffer assignment of the eval step)."""
    monkeypatch.setattr(memory, "host_available", lambda: 2**30)
    with pytest.raises(SystemExit):
        run_cli(["--workdir", run["workdir"], "--data", run["data"], "--full", "--batch_size", "10000000"])
    err = capsys.readouterr().err
    assert err.startswith("error: a batch of 10000000 sequences needs ") and err.count("\n") == 1
    assert "more than the 1.0 GiB of available host memory; pass --batch_size " in err
    fits = int(err.split("--batch_size ")[1].split()[0])
    cfg = run["model"].cfg
    assert 1000 < fits < 10000000 and memory.eval_batch_bytes(cfg, run["params"], fits,
                                                              mesh_lib.reading_mesh(tiny_config())) <= 2**30


def test_out_of_memory_is_one_line_with_the_size_and_the_remedy(run):
    """Under a 4 GiB address-space limit (ulimit -v) that the host's memory, which the check before the
    first batch reads, does not show: the step XLA cannot allocate is one line with its size and the
    remedy, exit 1, not a traceback."""
    if memory.host_available() < 8 * 2**30:  # the batch needs about 5.5 GiB
        pytest.skip("the host has too little memory for the batch to pass the check before the first batch")
    limited = ["bash", "-c", f'ulimit -v {4 * 2**20} && exec "$0" "$@"', sys.executable]  # in KiB
    result = subprocess.run([*limited, "-m", "aed_jax.evaluate", "--workdir", run["workdir"], "--data", run["data"],
                             "--full", "--batch_size", "600000"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stdout == "", result.stderr[-3000:]
    assert re.fullmatch(r"error: evaluate ran out of memory allocating \d+(\.\d+)? GiB: pass a smaller --batch_size\n",
                        result.stderr), result.stderr[-3000:]


@pytest.mark.parametrize("moment,sig", [("loading", signal.SIGINT), ("evaluating", signal.SIGTERM)])
def test_a_signal_at_any_moment_is_one_line(run, stop_command, moment, sig):
    """SIGTERM or Ctrl-C while the libraries load or between two batches: one line, exit 1."""
    pause = None if moment == "loading" else ("aed_jax.data", "random_batches", "after_first")
    rc, stdout, stderr = stop_command(["aed_jax.evaluate", "--workdir", run["workdir"], "--data", run["data"],
                                       "--batches", "3"], sig, pause)
    assert (rc, stdout, stderr) == (1, "", f"error: evaluate was stopped by {sig.name} before it printed its "
                                           "numbers; it writes no file, run it again\n")


@pytest.mark.parametrize("fsdp", [False, True])
def test_sharded_over_four_devices_is_the_same_evaluation(run, capsys, fsdp):
    """On 4 devices (a batch of 3 padded to 4, rows split over them; with an FSDP config the
    parameters too) every number equals one device's."""
    argv = ["--workdir", run["workdir"], "--data", run["data"], "--full", "--batch_size", "3", "--json"]
    one = run_json(capsys, argv[:-1])
    workdir = run["workdir"]
    if fsdp:  # a model wide enough to split, saved by a config that shards its parameters over every device
        workdir = os.path.join(os.path.dirname(run["workdir"]), "fsdp")
        config = tiny_config(**LOSS)
        config.model_config.n_embed = 64
        config.mesh_data, config.mesh_fsdp = 1, -1
        save_run(workdir, config)
        one = run_json(capsys, ["--workdir", workdir, *argv[2:-1], "--checkpoint", "0"])
    result = subprocess.run([sys.executable, "-m", "aed_jax.evaluate", "--workdir", workdir, *argv[2:],
                             *(["--checkpoint", "0"] if fsdp else [])], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert result.returncode == 0, result.stderr[-2000:]
    four = json.loads(result.stdout)
    assert (one["mesh"], four["mesh"]) == (("1x1", "1x4") if fsdp else ("1x1", "4x1"))
    assert four["tokens"] == one["tokens"] == 11 * T
    for key in ("ce_loss", "accuracy_loss", "embedding_loss"):
        assert four[key] == pytest.approx(one[key], rel=1e-5)
    np.testing.assert_allclose(four["ce_by_position"], one["ce_by_position"], rtol=1e-5)


def test_the_table_has_a_column_of_names_and_summarises_curves():
    """What evaluate and the notebook print: every name apart from its value, however long, and a
    per-position list as four numbers, not 200."""
    table = evaluate.format_table({"ce_loss": 6.5, "embedding_loss_by_position": [0.5, None, 1.5, 1.0],
                                   "tokens": 640, "ce_by_position": [None, None]})
    assert table.splitlines() == [
        "ce_loss                     6.5000",
        "embedding_loss_by_position  4 positions (3 counted): t=0 0.5000, mean 1.0000, t=3 1.0000",
        "tokens                      640",
        "ce_by_position              2 positions, none counted"]


def test_the_table_labels_a_task_curve_by_the_positions_it_counts(tmp_path, capsys):
    """A sort run scores only the sorted half of each problem: the table's first and last numbers are
    the first and last answered positions, named as such (it used to print them as t=0 and t=T-1)."""
    config = tiny_config()
    config.model_config.context_size = 24
    config.dataset, config.task.sort_length = "task:sort", 5  # one problem of 11 tokens, then another
    workdir = str(tmp_path / "sort")
    save_run(workdir, config)
    argv = ["--workdir", workdir, "--batches", "2", "--seed", "3"]
    curve = run_json(capsys, argv)["ce_by_position"]
    answered = [t for t, v in enumerate(curve) if v is not None]
    assert answered[0] == 5 and answered[-1] < len(curve) - 1  # the separator of the first problem; not t=T-1
    run_cli(argv)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ce_by_position"))
    mean = sum(curve[t] for t in answered) / len(answered)
    assert line.split(None, 1)[1] == (f"24 positions ({len(answered)} counted): t={answered[0]} "
                                      f"{curve[answered[0]]:.4f}, mean {mean:.4f}, t={answered[-1]} "
                                      f"{curve[answered[-1]]:.4f}")
