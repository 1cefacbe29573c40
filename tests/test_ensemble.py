"""Ensembles: each member of one vmapped step is the run it would be alone (seed, rate, weight decay,
embedding-loss coefficient), on a task and on a corpus, for both models; a diverging member is frozen and
the others go on; an ensemble resumes exactly; members split over 8 devices equal them on one."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from aed_jax import benchmark
from aed_jax import config as config_lib
from aed_jax import ensemble
from aed_jax import rundir
from aed_jax import train
from test_train import ROOT, VOCAB, write_synthetic, _wait_for_checkpoint

RTOL = 1e-5  # vmapped matmuls may sum in another order than a single run's
GRAD_RTOL = 1e-4  # the gradient's norm, and the parameters it moves, carry that order's noise further


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("synth"))
    write_synthetic(folder)
    return folder


def tiny(model_type: str, data_dir: str | None, **overrides):
    """A 20-step run of a 16-wide model on the synthetic corpus (`data_dir`) or, with None, on task:copy."""
    c = config_lib.base_config(model_type)
    c.model_config.update(dict(n_embed=16, n_head=2, n_layer=1, context_size=16, alphabet_size=VOCAB))
    if model_type == "aed":
        c.model_config.update(dict(embedding_loss_type="MSE", embedding_loss_coeff=1.0, detach_type="ENCODER_OUT",
                                   embedding_ln_type="INIT", use_ln_on_encoder_out=True, dropout_rate=0.1))
    c.update(dict(batch_size=4, gradient_accumulation_steps=1, train_steps=20, lr=3e-3, min_lr=3e-4, warmup_iters=2,
                  lr_decay_iters=20, est_interval=10, est_steps=2, log_interval=1, ce_chunk_tokens=0))
    if data_dir is None:
        c.dataset, c.task.copy_length = "task:copy", 4
    else:
        c.update(dict(dataset="synth", data_dir=data_dir))
    c.update(overrides)
    return c


def members(c, *items):
    return config_lib.member_configs(c, config_lib.parse_members(list(items)))


def lines(workdir):
    """(training lines, estimate lines) of a run's metrics.jsonl: what a reader of the run sees."""
    return rundir.read_metrics(workdir)


def final_params(workdir):
    return rundir.restore_params(workdir)[0]


def assert_same_run(a: str, b: str, rtol: float = RTOL):
    """Runs `a` and `b` logged the same losses at every step, the same estimates and saved the same params."""
    (train_a, est_a), (train_b, est_b) = lines(a), lines(b)
    assert [r["step"] for r in train_a] == [r["step"] for r in train_b] and train_a
    for ra, rb in zip(train_a, train_b):
        for key in ("loss", "ce", "embedding_loss", "grad_norm", "lr"):
            np.testing.assert_allclose(ra[key], rb[key], rtol=rtol * (GRAD_RTOL / RTOL if key == "grad_norm" else 1),
                                       err_msg=f"{key} at step {ra['step']}")
    assert [r["step"] for r in est_a] == [r["step"] for r in est_b] and est_a
    for ra, rb in zip(est_a, est_b):
        for key in rb:
            np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, atol=1e-7, err_msg=f"{key} at step {ra['step']}")
    # Adam divides each gradient by its own scale, so a near-zero one's noise moves its parameter by up to ~lr.
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol * GRAD_RTOL / RTOL,
                                                                   atol=1e-4 if rtol else 0),
                           final_params(a), final_params(b))


@pytest.mark.fast
def test_members_are_the_configs_with_each_key_s_kth_value():
    c = tiny("aed", None)
    out = members(c, "random_seed=7,8", "lr=1e-3,2e-3", "embedding_loss_coeff=0.5,2")
    assert [name for name, _ in out] == ["random_seed=7,lr=1e-3,embedding_loss_coeff=0.5",
                                         "random_seed=8,lr=2e-3,embedding_loss_coeff=2"]
    assert [(m.random_seed, m.lr, m.model_config.embedding_loss_coeff) for _, m in out] == [(7, 1e-3, 0.5), (8, 2e-3, 2.0)]
    assert ensemble.step_hyper([m for _, m in out]).keys() == {"model_config.embedding_loss_coeff"}


@pytest.mark.fast
@pytest.mark.parametrize("items,message", [
    (["n_embed=16,32"], "--members n_embed=16,32: n_embed is not a key an ensemble's members may differ in"),
    (["random_seed=1,2", "lr=1e-3"], "--members lr=1e-3: 1 values, but --members random_seed has 2"),
    (["random_seed=1,x"], "--members random_seed: 'x' is not an integer"),
    (["random_seed=1,1"], "member random_seed=1: the same run as another member"),
    (["lr=1e-3,-1"], "member lr=-1: lr: must be a finite number > 0"),
    (["lr"], "--members lr: give KEY=V1,V2,..."),
])
def test_a_bad_members_flag_is_one_line_naming_it(items, message):
    with pytest.raises(config_lib.ConfigError) as e:
        members(tiny("aed", None), *items)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.fast
def test_a_baseline_has_no_embedding_loss_coefficient_to_vary():
    with pytest.raises(config_lib.ConfigError, match="a baseline config has no such key"):
        members(tiny("baseline", None), "embedding_loss_coeff=1,2")


def _ensemble_equals_solo_runs(c, items, tmp_path):
    pairs = members(c, *items)
    out = ensemble.train_ensemble(pairs, str(tmp_path / "ens"))
    assert [m.step for m in out.members] == [20] * len(pairs) and not any(m.diverged for m in out.members)
    for name, mc in pairs:
        train.train_and_evaluate(mc, str(tmp_path / "solo" / name))
        assert_same_run(str(tmp_path / "ens" / name), str(tmp_path / "solo" / name))
        saved = json.load(open(tmp_path / "ens" / name / rundir.CONFIG))
        assert saved == json.load(open(tmp_path / "solo" / name / rundir.CONFIG))  # its record is the solo run's


def test_aed_members_on_a_task_equal_their_solo_runs(tmp_path):
    _ensemble_equals_solo_runs(tiny("aed", None), ["random_seed=1,2", "lr=3e-3,1e-3"], tmp_path)


@pytest.mark.slow
def test_baseline_members_on_a_task_equal_their_solo_runs(tmp_path):
    _ensemble_equals_solo_runs(tiny("baseline", None), ["random_seed=1,2", "lr=3e-3,1e-3"], tmp_path)


@pytest.mark.slow
def test_aed_members_on_a_corpus_with_their_own_step_keys_equal_their_solo_runs(data_dir, tmp_path):
    """Weight decay and the embedding-loss coefficient are per-member arrays inside the step."""
    _ensemble_equals_solo_runs(tiny("aed", data_dir), ["random_seed=1,2", "lr=3e-3,1e-3", "weight_decay=0.1,0",
                                                       "embedding_loss_coeff=1,4"], tmp_path)


@pytest.mark.slow
def test_baseline_members_on_a_corpus_equal_their_solo_runs(data_dir, tmp_path):
    _ensemble_equals_solo_runs(tiny("baseline", data_dir), ["random_seed=1,2", "lr=3e-3,1e-3"], tmp_path)


@pytest.mark.slow  # several runs, each over 10 s on one core
def test_a_diverging_member_is_frozen_and_the_others_train_on_unchanged(data_dir, tmp_path):
    c = tiny("baseline", data_dir)
    pairs = members(c, "random_seed=1,2", "lr=3e-3,1e30", "min_lr=3e-4,3e-4")
    out = ensemble.train_ensemble(pairs, str(tmp_path / "ens"))
    healthy, wild = out.members
    assert healthy.diverged is None and healthy.step == 20
    assert wild.diverged is not None and "step" in wild.diverged, wild
    wild_dir = tmp_path / "ens" / pairs[1][0]
    rows = [json.loads(line) for line in open(wild_dir / rundir.METRICS)]
    assert any(ensemble.DIVERGED in r for r in rows)
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)  # no NaN step line
    for workdir in (tmp_path / "ens").iterdir():  # every saved array finite
        if (workdir / rundir.CHECKPOINTS).is_dir() and os.listdir(workdir / rundir.CHECKPOINTS):
            assert all(np.isfinite(a).all() for a in jax.tree_util.tree_leaves(final_params(str(workdir))))
    train.train_and_evaluate(pairs[0][1], str(tmp_path / "solo"))
    assert_same_run(str(tmp_path / "ens" / pairs[0][0]), str(tmp_path / "solo"))
    # A resumed ensemble leaves the diverged member out and says so.
    again = ensemble.train_ensemble(pairs, str(tmp_path / "ens"))
    assert again.members[0].already_finished and again.members[1].diverged.endswith("in an earlier run, left out")


@pytest.mark.slow  # several runs, each over 10 s on one core
def test_an_ensemble_resumes_exactly(data_dir, tmp_path):
    c = tiny("aed", data_dir, est_interval=5)
    straight = members(c, "random_seed=1,2", "lr=3e-3,1e-3")
    ensemble.train_ensemble(straight, str(tmp_path / "straight"))
    halted = members(tiny("aed", data_dir, est_interval=5, train_steps=10), "random_seed=1,2", "lr=3e-3,1e-3")
    ensemble.train_ensemble(halted, str(tmp_path / "resumed"))
    out = ensemble.train_ensemble(straight, str(tmp_path / "resumed"))
    assert [m.step for m in out.members] == [20, 20]
    for name, _ in straight:
        assert_same_run(str(tmp_path / "straight" / name), str(tmp_path / "resumed" / name), rtol=0)


@pytest.mark.slow
def test_an_ensemble_resumes_exactly_after_sigterm_and_kill_9(data_dir, tmp_path):
    """The command: stopped by SIGTERM (saves, exit 0), then killed with -9 after its next checkpoint,
    then run to the end, equals an ensemble trained straight."""
    config = tmp_path / "tiny.py"
    config.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
        from test_ensemble import tiny
        def get_config():
            return tiny("aed", {data_dir!r}, train_steps=60, est_interval=5, lr_decay_iters=60)
    """))
    argv = [sys.executable, "-m", "aed_jax.main", f"--config={config}", "--members=random_seed=1,2",
            "--members=lr=3e-3,1e-3"]
    run = lambda workdir: subprocess.Popen(argv + [f"--workdir={workdir}"], cwd=ROOT, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
    name = "random_seed=1,lr=3e-3"
    proc = run(tmp_path / "cut")
    _wait_for_checkpoint(str(tmp_path / "cut" / name), proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "stopped by SIGTERM" in stdout, stderr[-2000:]
    proc = run(tmp_path / "cut")
    first = set(os.listdir(tmp_path / "cut" / name / rundir.CHECKPOINTS))
    while set(os.listdir(tmp_path / "cut" / name / rundir.CHECKPOINTS)) <= first and proc.poll() is None:
        pass
    proc.kill()
    proc.communicate()
    assert subprocess.run(argv + [f"--workdir={tmp_path / 'cut'}"], cwd=ROOT, capture_output=True).returncode == 0
    assert subprocess.run(argv + [f"--workdir={tmp_path / 'straight'}"], cwd=ROOT, capture_output=True).returncode == 0
    for member in ("random_seed=1,lr=3e-3", "random_seed=2,lr=1e-3"):
        assert_same_run(str(tmp_path / "straight" / member), str(tmp_path / "cut" / member), rtol=0)


EIGHT_DEVICES = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    import jax
    from aed_jax import config as config_lib, ensemble, mesh as mesh_lib
    from test_ensemble import tiny
    c = tiny("aed", sys.argv[1], train_steps=6, est_interval=3)
    pairs = config_lib.member_configs(c, config_lib.parse_members(["random_seed=1,2,3,4", "lr=3e-3,1e-3,2e-3,1e-3"]))
    ensemble.train_ensemble(pairs, os.path.join(sys.argv[2], "one"), devices=jax.devices()[:1])
    ensemble.train_ensemble(pairs, os.path.join(sys.argv[2], "eight"))  # member 4 x data 2
    print(dict(mesh_lib.ensemble_mesh(c, 4).shape))
    print("\\n".join(name for name, _ in pairs))
""")


@pytest.mark.slow  # several runs, each over 10 s on one core
def test_members_split_over_8_devices_equal_them_on_one(data_dir, tmp_path):
    result = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, data_dir, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    *_, shape, a, b, c, d = result.stdout.strip().splitlines()
    assert shape == str({"member": 4, "data": 2, "fsdp": 1})
    names = [a, b, c, d]
    for name in names:
        assert_same_run(str(tmp_path / "one" / name), str(tmp_path / "eight" / name))


def test_bench_times_an_ensemble_step_at_each_k():
    c = tiny("baseline", None)
    rows = benchmark.run_ensemble(c, [1, 2], steps=1)
    assert [(r["members"], r["mesh"]) for r in rows] == [(1, "1x1x1"), (2, "1x1x1")]
    for r in rows:  # every member's tokens count: K x batch x T a step
        assert r["tokens_per_s"] == pytest.approx(r["members"] * 4 * 16 / (r["step_ms"] / 1e3))
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] == pytest.approx(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"])
    assert "| 2 | 1x1x1 |" in benchmark.format_ensemble_table("tiny", "cpu", rows)
