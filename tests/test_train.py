"""The trainer: the seed's schedule, loss falls, bitwise resume, preemption, sharding, NaN, bad resumes."""
import functools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from aed_jax import config as config_lib
from aed_jax import memory
from aed_jax import mesh as mesh_lib
from aed_jax import model as model_lib
from aed_jax import optim
from aed_jax import progress
from aed_jax import rundir
from aed_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 64


def write_synthetic(folder, n_train=20000, n_val=4000, seed=0):
    """A learnable token stream: mostly t -> (3t + 1) mod V, with 10% noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        toks = np.empty(n, np.uint16)
        toks[0] = 1
        for i in range(1, n):
            toks[i] = rng.integers(VOCAB) if rng.random() < 0.1 else (3 * toks[i - 1] + 1) % VOCAB
        toks.tofile(os.path.join(folder, f"synth_{split}.bin"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("synth"))
    write_synthetic(folder)
    return folder


def small_config(data_dir, **overrides):
    c = config_lib.base_config("aed")
    c.model_config.update(dict(
        n_embed=32, n_head=2, n_layer=1, context_size=16, alphabet_size=VOCAB, sub_pos_embed_to_decoder="YES_NO_LN",
        embedding_loss_type="MSE", embedding_loss_coeff=1.0, detach_type="ENCODER_OUT", embedding_ln_type="INIT",
        use_ln_on_encoder_out=True, dropout_rate=0.1))
    c.update(dict(dataset="synth", data_dir=data_dir, batch_size=8, gradient_accumulation_steps=2, train_steps=8,
                  lr=3e-3, min_lr=3e-4, warmup_iters=2, lr_decay_iters=40, est_interval=4, est_steps=2, log_interval=1))
    for key, value in overrides.items():
        c[key] = value
    return c


def seed_get_lr(c, i):
    """The seed's get_lr, transcribed: step i is 0-based, s = i + 1."""
    s = i + 1
    if s < c.warmup_iters:
        return c.lr * s / c.warmup_iters
    if s > c.lr_decay_iters:
        return c.min_lr
    ratio = (s - c.warmup_iters) / (c.lr_decay_iters - c.warmup_iters)
    return c.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c.lr - c.min_lr)


def test_schedule_matches_the_seed():
    c = config_lib.base_config("aed")
    schedule = optim.learning_rate(c)
    w, d = c.warmup_iters, c.lr_decay_iters
    for i in (0, 1, w - 2, w - 1, w, w + 1, (w + d) // 2, d - 2, d - 1, d, d + 1, 10 * d):
        assert float(schedule(i)) == pytest.approx(seed_get_lr(c, i), rel=1e-5, abs=1e-10), i


def _lowered_step(c) -> str:
    """The train step of `c` lowered for its abstract state and batch: the program jax compiles (and
    the persistent compilation cache keys on)."""
    model, opt, mesh = model_lib.from_config(c), optim.make_optimizer(c), mesh_lib.make_mesh(c)
    abstract = train.abstract_state(model, opt, mesh)
    shape = (c.batch_size * c.gradient_accumulation_steps, c.model_config.context_size)
    batch = {k: jax.ShapeDtypeStruct(shape, np.int32, sharding=mesh_lib.batch_sharding(mesh)) for k in "xy"}
    return train.compile_train_step(c, model, opt, mesh).lower(
        abstract["params"], abstract["opt_state"], batch, jax.random.key(0),
        jax.ShapeDtypeStruct((), np.float32)).as_text()


def test_runs_differing_only_in_their_schedule_compile_one_train_step():
    """The learning rate is the step's argument, not a constant of its program: a sweep over lr, min_lr,
    warmup_iters and lr_decay_iters (or the schedule switched off) lowers to the same program, so it
    compiles once and hits the compilation cache; an optimizer constant (beta1) still makes another."""
    base = small_config("unused")
    program = _lowered_step(base)
    for overrides in (dict(lr=1e-2, min_lr=1e-3), dict(warmup_iters=7, lr_decay_iters=100), dict(decay_lr=False)):
        assert _lowered_step(small_config("unused", **overrides)) == program, overrides
    assert _lowered_step(small_config("unused", beta1=0.8)) != program


def test_the_step_applies_the_rate_it_is_given():
    """Rate 0 leaves every parameter as it was (AdamW's update and its weight decay both scale by it);
    a positive rate moves them."""
    c = small_config("unused")
    model, opt, mesh = model_lib.from_config(c), optim.make_optimizer(c), mesh_lib.make_mesh(c)
    x = np.random.default_rng(0).integers(0, VOCAB, (16, 17)).astype(np.int32)
    step = train.compile_train_step(c, model, opt, mesh)
    moved = {}
    for lr in (0.0, 3e-3):
        params = model_lib.init_params(model, jax.random.key(0))
        before = jax.device_get(params)
        after, opt_state, _ = step(params, opt.init(params), {"x": x[:, :-1], "y": x[:, 1:]}, jax.random.key(1),
                                   np.float32(lr))
        moved[lr] = [bool((np.asarray(a) != b).any()) for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(after)),
                                                                      jax.tree_util.tree_leaves(before))]
        assert int(opt_state[-1].count) == 1  # the schedule's step count, kept in the state as optax.adamw keeps it
    assert not any(moved[0.0]) and any(moved[3e-3])


def test_each_step_is_given_the_schedule_rate_of_its_step_and_logs_it(data_dir, tmp_path, monkeypatch):
    """The rate the trainer passes to step i is optim.learning_rate's at i (warmup, then the cosine),
    and the lr logged at step i + 1 is that same value, straight or resumed."""
    given, compile_train_step = [], train.compile_train_step

    def recording(*args, **kwargs):
        step_fn = compile_train_step(*args, **kwargs)

        def step(params, opt_state, batch, rng, lr):
            given.append(float(lr))
            return step_fn(params, opt_state, batch, rng, lr)
        return step
    monkeypatch.setattr(train, "compile_train_step", recording)
    c = small_config(data_dir, train_steps=6, est_interval=3, warmup_iters=2, lr_decay_iters=5)
    train.train_and_evaluate(small_config(data_dir, train_steps=3, est_interval=3, warmup_iters=2, lr_decay_iters=5),
                             str(tmp_path))
    train.train_and_evaluate(c, str(tmp_path))
    schedule = optim.learning_rate(c)
    assert given == pytest.approx([float(schedule(i)) for i in range(6)], rel=1e-6)
    assert given[0] < given[1] == pytest.approx(c.lr) and given[-1] == pytest.approx(c.min_lr)
    logged = {r["step"]: r["lr"] for r in rundir.read_metrics(str(tmp_path))[0]}
    assert [logged[i + 1] for i in range(6)] == given


def test_weight_decay_only_on_matrices():
    params = {"w": np.ones((3, 4)), "b": np.ones(4), "ln": {"scale": np.ones(4)}, "emb": np.ones((5, 4))}
    assert optim.decay_mask(params) == {"w": True, "b": False, "ln": {"scale": False}, "emb": True}


def test_loss_falls(data_dir, tmp_path):
    c = small_config(data_dir, train_steps=60, est_interval=30, est_steps=4)
    c.model_config.dropout_rate = 0.0
    est = train.train_and_evaluate(c, str(tmp_path)).estimate
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    ce = [r["ce"] for r in rows if "ce" in r]
    assert ce[0] > math.log(VOCAB) - 0.5
    assert np.mean(ce[-5:]) < ce[0] - 1.0
    assert est["val_loss"] < math.log(VOCAB) - 1.0
    assert {"embedding_loss", "scaled_embedding_loss", "lr", "tokens_per_s", "step_time_s"} <= set(rows[0])
    assert os.path.isfile(tmp_path / "config.json")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["30", "60"]


def _params(workdir, which="latest"):
    return rundir.restore_params(workdir, which)[0]


def test_resume_is_bitwise_identical(data_dir, tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.train_and_evaluate(small_config(data_dir, train_steps=8), straight)
    train.train_and_evaluate(small_config(data_dir, train_steps=4), resumed)
    train.train_and_evaluate(small_config(data_dir, train_steps=8), resumed)
    a, b = _params(straight), _params(resumed)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert all(type(x) is np.ndarray for x in jax.tree_util.tree_leaves(a))  # host arrays: any topology loads them
    steps = [json.loads(line)["step"] for line in open(os.path.join(resumed, "metrics.jsonl"))]
    assert steps.count(5) == 1 and steps.count(8) == 3  # step 8: one training line, one estimate, the phase times
    assert steps == sorted(steps)


@pytest.mark.slow  # four short runs: over 10 s on one core
def test_estimates_every_est_interval_and_checkpoints_every_save_interval_resume_bitwise(data_dir, tmp_path):
    """est_interval 2, save_interval 4: estimates at 2, 4, 6, 8, 10, checkpoints at 4, 8 and the last step,
    best/ among them. A run stopped at 6 and continued, and one resumed from checkpoint 4 with the estimates
    after it already logged (as a kill leaves it), both end with the straight run's parameters and estimates,
    each logged once."""
    config = functools.partial(small_config, data_dir, est_interval=2, save_interval=4, train_steps=10)
    straight, continued = str(tmp_path / "straight"), str(tmp_path / "continued")
    train.train_and_evaluate(config(), straight)
    assert sorted(os.listdir(os.path.join(straight, rundir.CHECKPOINTS)), key=int) == ["4", "8", "10"]
    assert os.listdir(os.path.join(straight, rundir.BEST))[0] in ("4", "8", "10")
    losses = lambda workdir: [{k: v for k, v in e.items() if k == "step" or k.endswith("_loss")}
                              for e in rundir.read_metrics(workdir)[1]]
    estimates = losses(straight)
    assert [e["step"] for e in estimates] == [2, 4, 6, 8, 10]

    train.train_and_evaluate(config(train_steps=6), continued)
    killed = str(tmp_path / "killed")
    shutil.copytree(straight, killed, ignore=shutil.ignore_patterns(".lock"))
    for kind in (rundir.CHECKPOINTS, rundir.BEST):
        for step in ("8", "10"):
            shutil.rmtree(os.path.join(killed, kind, step), ignore_errors=True)
    for workdir, start in ((continued, 6), (killed, 4)):
        assert rundir.resolve_step(workdir)[1] == start
        train.train_and_evaluate(config(), workdir)
        jax.tree_util.tree_map(np.testing.assert_array_equal, _params(straight), _params(workdir))
        assert losses(workdir) == estimates
        rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
        steps = [r["step"] for r in rows if "time_total_s" not in r]  # each process's phase line aside
        assert steps == sorted(steps) and len(steps) == len(set(steps)) + len(estimates)  # a step once, or twice


def test_the_steps_after_an_estimate_without_a_save_are_steps_again(data_dir, tmp_path, monkeypatch):
    """save_interval 4 > est_interval 2: the phases the loop enters, in order, return to "steps" after every
    estimate, saved or not, so the steps that follow are not counted as the estimate's time."""
    from aed_jax import progress
    entered = []
    enter = progress.Phases.enter
    monkeypatch.setattr(progress.Phases, "enter", lambda self, phase: (entered.append(phase), enter(self, phase))[1])
    train.train_and_evaluate(small_config(data_dir, est_interval=2, save_interval=4, train_steps=8), str(tmp_path / "r"))
    loop = entered[entered.index("steps"):]
    assert loop.count("estimates") == 4 and loop.count("saves") == 2  # estimates at 2, 4, 6, 8; saves at 4, 8
    for a, b in zip(loop, loop[1:]):
        assert (a, b) in {("steps", "estimates"), ("estimates", "saves"), ("estimates", "steps"), ("saves", "steps"),
                          ("steps", "steps")}, loop


def _phase_lines(workdir):
    return [row for row in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))) if "time_total_s" in row]


def test_phase_times_are_logged_once_a_run_and_add_up_to_its_wall_time(data_dir, tmp_path):
    """Each run (each process of a resumed one) logs one line at its last step with where its time went:
    non-negative phases that sum to its total, which is within the wall time the caller saw; with
    `started` (main's process start), the time before the trainer's entry is its start-up. The lines
    are neither training lines nor estimates to metrics.jsonl's readers."""
    workdir = str(tmp_path)
    wall = time.perf_counter()
    outcome = train.train_and_evaluate(small_config(data_dir, train_steps=4, est_interval=2), workdir)
    wall = time.perf_counter() - wall
    started = time.time() - 5.0
    resumed = train.train_and_evaluate(small_config(data_dir, train_steps=6, est_interval=2), workdir, started=started)
    first, second = _phase_lines(workdir)
    assert (first["step"], second["step"]) == (4, 6)
    assert set(first) == {"step", "time_setup_s", "time_compile_s", "time_steps_s", "time_estimates_s",
                          "time_saves_s", "time_total_s"}
    assert set(second) == set(first) | {"time_startup_s"} and second["time_startup_s"] >= 5.0
    for row in (first, second):
        phases = [v for k, v in row.items() if k not in ("step", "time_total_s")]
        assert min(phases) >= 0 and sum(phases) == pytest.approx(row["time_total_s"])
    assert first["time_total_s"] <= wall
    assert first["time_compile_s"] > 0  # the train step's and the estimate's first calls
    assert outcome.times == {k: v for k, v in first.items() if k != "step"}
    assert resumed.times == {k: v for k, v in second.items() if k != "step"}
    train_rows, estimates = rundir.read_metrics(workdir)
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6] and [r["step"] for r in estimates] == [2, 4, 6]


def test_the_closing_line_says_where_the_time_went():
    record = {"time_startup_s": 2.6, "time_setup_s": 9.2, "time_compile_s": 8.0, "time_steps_s": 20.4,
              "time_estimates_s": 3.0, "time_saves_s": 0.6, "time_total_s": 43.8}
    assert progress.phases_line(record) == ("44 s: 3 s start-up, 9 s set-up, 8 s compiling, 20 s steps, 3 s estimates, "
                                            "1 s saves")
    del record["time_startup_s"]
    assert progress.phases_line(record).startswith("44 s: 9 s set-up, ")


class _Writer:
    def __init__(self):
        self.rows = []

    def write(self, step, metrics):
        self.rows.append((step, metrics))


@pytest.mark.parametrize("peak,shown", [(None, r", \d+\.\d\d GFLOP/s$"), (1e12, r", \d+\.\d\d GFLOP/s, MFU \d+\.\d%$")])
def test_the_progress_line_shows_model_flops_and_mfu_where_the_peak_is_known(capsys, peak, shown):
    """FLOP/s = the model's FLOPs per token x tokens/s: GFLOP/s on CPU, where no peak is known; with a
    peak, the MFU too."""
    writer = _Writer()
    shown_by = progress.Progress(0, 10, writer, lambda i: 0.1, 1, tokens_per_step=1000, flops_per_token=1.0,
                                 peak=peak, every_s=0.0)
    shown_by.step(1, {"ce": 2.0})
    shown_by.close()
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("step 1/10: ce 2.0000, ") and re.search(shown, line), line
    tokens_per_s = writer.rows[0][1]["tokens_per_s"]
    gflops = float(re.search(r"([\d.,]+) GFLOP/s", line).group(1).replace(",", ""))
    assert gflops == pytest.approx(tokens_per_s / 1e9, abs=0.01)
    if peak:
        assert float(line.split("MFU ")[1][:-1]) == pytest.approx(100 * tokens_per_s / peak, abs=0.1)


def test_resumed_writer_drops_what_the_interrupted_run_logged_after_the_checkpoint(tmp_path):
    """A run killed at step 10 after a checkpoint at 6: the resumed run logs 7.. again, once."""
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps({"step": i, "loss": 1.0 / i}) + "\n" for i in range(1, 11))
        f.write('{"step": 11, "lo')  # cut short by the kill
    writer = rundir.MetricsWriter(str(tmp_path), start_step=6)
    writer.write(7, {"loss": 0.5})
    writer.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[5]["loss"] == 1.0 / 6 and rows[6]["loss"] == 0.5


@pytest.mark.slow  # over 10 s on one core: the quick step stays within its budget
def test_refuses_a_checkpoint_of_another_model(data_dir, tmp_path):
    train.train_and_evaluate(small_config(data_dir, train_steps=4), str(tmp_path))
    other = small_config(data_dir, train_steps=8)
    other.model_config.n_embed = 48
    with pytest.raises(rundir.RunError, match=r"model_config\.n_embed \(32 -> 48\)"):
        train.train_and_evaluate(other, str(tmp_path))
    train.train_and_evaluate(other, str(tmp_path), fresh=True)
    assert _params(str(tmp_path))["token_embedding"]["embedding"].shape == (VOCAB, 48)


def _launch(config_path, workdir, *flags, env=None):
    return subprocess.Popen([sys.executable, "-m", "aed_jax.main", f"--config={config_path}", f"--workdir={workdir}",
                             *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for_checkpoint(workdir, proc, timeout=180):
    deadline = time.time() + timeout
    folder = os.path.join(workdir, "checkpoints")
    while time.time() < deadline:
        if os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder)):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture()
def config_file(data_dir, tmp_path):
    """A config file for the CLI: small model, long enough to be interrupted mid-run."""
    path = tmp_path / "small.py"
    path.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_train import small_config

        def get_config():
            return small_config({data_dir!r}, train_steps=100000, est_interval=5, est_steps=1)
    """))
    return str(path)


@pytest.mark.slow  # over 10 s on one core: the quick step stays within its budget
def test_sigterm_saves_and_exits_cleanly(config_file, tmp_path):
    """Also runs with main's own compilation cache (not the suite's): the train step lands in it."""
    workdir, cache = str(tmp_path / "run"), tmp_path / "xla_cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    proc = _launch(config_file, workdir, f"--compilation_cache_dir={cache}", env=env)
    _wait_for_checkpoint(workdir, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by SIGTERM: checkpoint saved at step" in out
    saved = int(out.split("stopped by SIGTERM: checkpoint saved at step ")[1].split(",")[0])
    assert rundir.resolve_step(workdir)[1] == saved
    assert cache.is_dir() and any(cache.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["importing", "setting up"])
def test_sigterm_before_training_is_one_line_and_exit_1(config_file, tmp_path, moment):
    """SIGTERM while the libraries load, or once the run is set up and its first step compiles: nothing
    to save, one line, exit 1 (it used to be no line at all, or a traceback)."""
    proc = _launch(config_file, str(tmp_path / "run"))
    if moment == "importing":
        time.sleep(0.3)
    else:
        for line in proc.stdout:
            if "devices: 1 x cpu" in line:
                break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1] == ("error: the run was stopped by SIGTERM before training began; there "
                                            "was nothing to save")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_closing_samples_ends_a_finished_run_with_exit_0(data_dir, tmp_path, signum):
    """Ctrl-C while the closing samples compile: the run is complete, as SIGTERM there says; it used to be
    `error: interrupted` and exit 1."""
    path = tmp_path / "short.py"
    path.write_text(f"import ml_collections\n\n\ndef get_config():\n    return ml_collections.ConfigDict("
                    f"{small_config(data_dir, train_steps=2, est_interval=2, est_steps=1).to_dict()!r})\n")
    proc = _launch(str(path), str(tmp_path / "run"), "--sample_prompt=A", "--sample_tokens=40",
                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in proc.stdout:
        if line.startswith("final: "):
            break
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1] == (f"the run was stopped by {signal.Signals(signum).name} after training "
                                            "ended; its checkpoints are saved")
    assert rundir.resolve_step(str(tmp_path / "run"))[1] == 2


def test_the_closing_samples_of_a_small_vocabulary_are_both_printed(data_dir, tmp_path, capsys):
    """The sampled continuation's top_k (200) is cut to a vocabulary smaller than that; it used to be
    refused, and the run ended with the greedy continuation alone."""
    from aed_jax import main
    train.train_and_evaluate(small_config(data_dir, train_steps=2, est_interval=2, est_steps=1), str(tmp_path))
    capsys.readouterr()
    main.print_continuations(str(tmp_path), "A", 4)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["greedy", "sampled"]
    assert all(line.split(": ", 1)[1].startswith("'A") for line in lines)


def test_a_train_step_beyond_host_memory_is_one_line_naming_it_and_the_remedy(tmp_path):
    """Under an address-space limit (ulimit -v) that lets jax load but not a batch of 65,536 rows run: the
    step's RESOURCE_EXHAUSTED used to be a 54-line traceback."""
    from test_task_runs import task_config
    path = tmp_path / "huge_batch.py"
    path.write_text(f"import ml_collections\n\n\ndef get_config():\n    return ml_collections.ConfigDict("
                    f"{task_config(batch_size=65536, gradient_accumulation_steps=1).to_dict()!r})\n")
    limited = ["bash", "-c", f'ulimit -v {4 * 2**20} && exec "$0" "$@"', sys.executable]  # in KiB; no preexec_fn:
    # forking this multithreaded (jax) process to run Python in the child may deadlock
    result = subprocess.run([*limited, "-m", "aed_jax.main", f"--config={path}", f"--workdir={tmp_path / 'run'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.fullmatch(r"error: the train step ran out of memory allocating \d+(\.\d+)? GiB: use a smaller batch_size "
                        r"or micro_batch_size \(a larger gradient_accumulation_steps keeps the effective batch\), or a "
                        r"smaller model", result.stderr.strip().splitlines()[-1])


def test_an_out_of_memory_error_is_one_train_error_line_and_any_other_error_passes():
    with pytest.raises(train.TrainError, match=r"^the estimate ran out of memory allocating 74\.5 GiB: smaller$"):
        with train.out_of_memory_line("the estimate", "smaller"):
            raise MemoryError("Unable to allocate 74.5 GiB for an array with shape (10000000000,) and data type float64")
    with pytest.raises(ValueError):
        with train.out_of_memory_line("the estimate", "smaller"):
            raise ValueError("RESOURCE_EXHAUSTED")  # not jax's error: not an out-of-memory one


def test_a_signal_while_the_last_saves_finish_never_cuts_them(data_dir, tmp_path, monkeypatch):
    """SIGTERM once the last step is done, while the checkpoint managers close (their saves finish): the
    trainer's handler still holds it, the saves complete, and the outcome says a signal came after
    training, which main ends as a finished run (exit 0), not as one stopped before training began."""
    real, sent = rundir.checkpoints, []

    class ClosingSignalled:
        def __init__(self, manager):
            self.manager = manager

        def __getattr__(self, name):
            return getattr(self.manager, name)

        def close(self):
            sent.append(signal.getsignal(signal.SIGTERM))
            os.kill(os.getpid(), signal.SIGTERM)
            self.manager.close()

    monkeypatch.setattr(rundir, "checkpoints", lambda *a, **k: ClosingSignalled(real(*a, **k)))
    before = signal.getsignal(signal.SIGTERM)
    outcome = train.train_and_evaluate(small_config(data_dir, train_steps=4), str(tmp_path))
    assert sent and sent[0] is not before  # the trainer's handler, not the one main installs
    assert signal.getsignal(signal.SIGTERM) is before
    assert (outcome.step, outcome.stopped_by, outcome.signalled_after) == (4, None, "SIGTERM")
    assert rundir.resolve_step(str(tmp_path))[1] == 4


def test_sigkill_resumes_from_the_latest_complete_checkpoint(config_file, tmp_path):
    workdir = str(tmp_path / "run")
    proc = _launch(config_file, workdir)
    _wait_for_checkpoint(workdir, proc)
    time.sleep(1.0)
    proc.kill()
    proc.communicate()
    latest = rundir.resolve_step(workdir)[1]
    proc = _launch(config_file, workdir, "--config.train_steps=%d" % (latest + 2))
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming from step {latest}" in out
    assert rundir.resolve_step(workdir)[1] == latest + 2


def test_micro_batch_size_changes_the_split_not_the_update():
    c = config_lib.base_config("baseline")
    c.model_config.update(dict(n_embed=32, n_head=2, n_layer=2, context_size=16, alphabet_size=VOCAB))
    c.batch_size, c.gradient_accumulation_steps = 4, 4
    model, opt = model_lib.from_config(c), optim.make_optimizer(c)
    mesh = mesh_lib.make_mesh(c)
    x = np.random.default_rng(0).integers(0, VOCAB, (16, 17)).astype(np.int32)
    results = []
    for micro in (4, 8, 16):
        params = model_lib.init_params(model, jax.random.key(0))
        step = train.compile_train_step(c, model, opt, mesh, micro)
        params, _, metrics = step(params, opt.init(params), {"x": x[:, :-1], "y": x[:, 1:]}, jax.random.key(1),
                                  optim.step_learning_rate(c)(0))
        results.append((float(metrics["loss"]), params))
    for loss, params in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-6)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, results[0][1])


def test_auto_micro_batch_size_is_the_largest_split_that_fits(monkeypatch):
    """On a GPU (faked), auto takes the largest divisor of the effective batch whose compiled step
    fits in 90% of the device's memory, by XLA's own memory analysis; elsewhere the seed's split."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    c = config_lib.base_config("baseline")
    c.model_config.update(dict(n_embed=32, n_head=2, n_layer=2, context_size=64, alphabet_size=512))
    c.batch_size, c.gradient_accumulation_steps = 2, 8
    model, opt = model_lib.from_config(c), optim.make_optimizer(c)
    mesh = mesh_lib.make_mesh(c)
    pick = lambda: memory.pick_micro_batch_size(c, mesh, functools.partial(train.lower_train_step, c, model, opt, mesh,
                                                                           abstract))
    abstract = None
    assert pick() == 2  # CPU: batch_size
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())),
        jax.eval_shape(lambda: (lambda p: {"params": p, "opt_state": opt.init(p)})(
            model_lib.init_params(model, jax.random.key(0)))))
    batch = {k: jax.ShapeDtypeStruct((16, 64), np.int32, sharding=mesh_lib.batch_sharding(mesh)) for k in "xy"}
    need = {m: memory.program_bytes(train.compile_train_step(c, model, opt, mesh, m).lower(
        abstract["params"], abstract["opt_state"], batch, jax.random.key(0), np.float32(c.lr)).compile())
        for m in (4, 8)}
    assert need[8] > need[4]

    class Device:
        def memory_stats(self):
            return {"bytes_limit": (need[4] + need[8]) / 2 / 0.9}
    monkeypatch.setattr(jax, "local_devices", lambda: [Device()])
    assert pick() == 4
    c.micro_batch_size = 16  # set by hand: taken as it is
    assert pick() == 16


@pytest.mark.fast
def test_device_prefetch_checkpoints_the_consumed_position(data_dir):
    path = os.path.join(data_dir, "synth_train.bin")
    make = lambda: train.data.DevicePrefetch(train.data.train_iterator(path, 16, 4, seed=3), lambda b: b, size=3)
    first = make()
    for _ in range(3):
        next(first)
    state = first.get_state()
    expected = [next(first)["x"] for _ in range(4)]
    second = make()
    second.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(second)["x"], want)


def test_a_lost_config_json_still_resumes_only_the_same_run(data_dir, tmp_path):
    """Without config.json the trained checkpoints' own config decides, every key of it (not the model alone,
    as for an imported step 0): another recipe is refused, the same one resumes."""
    train.train_and_evaluate(small_config(data_dir, train_steps=4), str(tmp_path))
    os.remove(os.path.join(tmp_path, "config.json"))
    with pytest.raises(rundir.RunError, match=r"lr \(0\.003 -> 0\.001\)"):
        train.train_and_evaluate(small_config(data_dir, train_steps=8, lr=1e-3), str(tmp_path))
    assert train.train_and_evaluate(small_config(data_dir, train_steps=8), str(tmp_path)).step == 8


def test_trains_on_from_an_imported_checkpoint(data_dir, tmp_path):
    """`interop import` writes params without a data-iterator item; the trainer starts its stream afresh."""
    from aed_jax import api
    c = small_config(data_dir, train_steps=4)
    params = model_lib.init_params(model_lib.from_config(c), jax.random.key(7))
    api.save_params(str(tmp_path), params, c)
    train.train_and_evaluate(c, str(tmp_path))
    assert rundir.resolve_step(str(tmp_path))[1] == 4
    assert not np.array_equal(_params(str(tmp_path))["ln"]["scale"], params["ln"]["scale"])
