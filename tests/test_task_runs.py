"""Training and evaluating on a synthetic task: resumes exactly, scores the answers alone, one-line errors."""
import json

import jax
import numpy as np
import pytest
from absl import flags

from aed_jax import checkpoint
from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import data
from aed_jax import evaluate
from aed_jax import main
from aed_jax import model as model_lib
from aed_jax import rundir
from aed_jax import tasks
from aed_jax import train
from experiments import plan
from experiments import runner


def task_config(task="mqar", **overrides):
    c = config_lib.base_config("aed")
    c.model_config.update(dict(n_embed=32, n_head=2, n_layer=1, context_size=16, alphabet_size=32,
                               sub_pos_embed_to_decoder="YES_NO_LN", embedding_loss_type="MSE",
                               embedding_loss_coeff=8.0, detach_type="ENCODER_OUT", embedding_ln_type="INIT",
                               use_ln_on_encoder_out=True))
    c.task.num_kv_pairs = 2
    c.update(dict(dataset=f"task:{task}", batch_size=8, gradient_accumulation_steps=2, train_steps=6, lr=3e-3,
                  min_lr=3e-4, warmup_iters=2, lr_decay_iters=40, est_interval=3, est_steps=2, log_interval=1))
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.mark.slow
def test_a_resumed_task_run_equals_a_straight_one(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.train_and_evaluate(task_config(), straight)
    train.train_and_evaluate(task_config(train_steps=3), resumed)
    outcome = train.train_and_evaluate(task_config(), resumed)
    a, b = rundir.restore_params(straight)[0], rundir.restore_params(resumed)[0]
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    est = outcome.estimate
    assert 0.0 <= est["val_token_accuracy"] <= 1.0 and 0.0 <= est["val_sequence_accuracy"] <= est["val_token_accuracy"]
    assert est["val_packed_sequence_accuracy"] == est["val_sequence_accuracy"]  # mqar: one problem a sequence
    assert est == {**rundir.last_estimate(straight), "step": 6}  # the same estimate, logged in metrics.jsonl
    best = checkpoint.best_metrics(rundir.best(straight, create=False))  # ranked by its accuracy, then val loss
    assert set(best) == {"val_loss", "val_token_accuracy"}
    assert not (tmp_path / "straight" / "data.json").read_text().strip("{}\n ")  # no files behind a task


def test_the_stream_is_one_global_batch_whatever_the_processes():
    c = task_config()
    whole = next(data.task_iterator(c, 8, seed=5))
    halves = [next(data.task_iterator(c, 8, seed=5, rows=slice(i * 4, i * 4 + 4))) for i in range(2)]
    for key in ("x", "y", "weight"):
        np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]))
    it = data.task_iterator(c, 8, seed=5)
    next(it), next(it)
    state = it.get_state()
    again = data.task_iterator(c, 8, seed=5)
    again.set_state(state)
    np.testing.assert_array_equal(next(it)["x"], next(again)["x"])
    np.testing.assert_array_equal(next(data.task_iterator(c, 8, seed=5))["x"], whole["x"])
    assert not np.array_equal(next(data.task_iterator(c, 8, seed=6))["x"], whole["x"])


def test_evaluate_scores_the_answers_alone_as_numpy_does(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    c = task_config(train_steps=3)
    train.train_and_evaluate(c, workdir)
    capsys.readouterr()
    fv = flags.FlagValues()
    evaluate.define_flags(fv)
    cli.reporting(evaluate.main)(fv(["evaluate", "--workdir", workdir, "--batches", "3", "--seed", "11", "--json"]), fv)
    got = json.loads(capsys.readouterr().out)

    params = rundir.restore_params(workdir)[0]
    model = model_lib.make_model(model_lib.ModelConfig.from_config(c))
    ce, right, rows_right, answers, rows = 0.0, 0, 0, 0, 0
    for b in data.task_batches(c, c.batch_size, 3, 11):
        logits = np.asarray(model.apply({"params": params}, b["x"])[0], np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        scored = b["weight"] > 0
        ce += -np.take_along_axis(logp, b["y"][..., None], -1)[..., 0][scored].sum()
        hit = (logits.argmax(-1) == b["y"]) | ~scored
        right += (hit & scored).sum()
        rows_right += hit.all(-1).sum()
        answers += scored.sum()
        rows += len(b["x"])
    assert got["tokens"] == answers
    np.testing.assert_allclose(got["ce_loss"], ce / answers, rtol=1e-5)
    assert got["token_accuracy"] == pytest.approx(right / answers)
    assert got["sequence_accuracy"] == pytest.approx(rows_right / rows)
    assert got["packed_sequence_accuracy"] == pytest.approx(rows_right / rows)  # mqar: a sequence is a problem
    assert got["accuracy_loss"] == pytest.approx(1 - right / answers)
    assert got["data"] == "task:mqar"
    # Positions that never hold an answer (the key-value pairs) have no CE by position.
    assert got["ce_by_position"][0] is None and any(v is not None for v in got["ce_by_position"])


@pytest.mark.parametrize("task,key,value,message", [
    ("mqar", "num_kv_pairs", 5, r"task\.num_kv_pairs: 5 pairs need 4 \* 5 = 20 tokens, more than context_size=16"),
    ("nope", None, None, rf"dataset: 'task:nope' is not one of {', '.join(tasks.PREFIX + t for t in tasks.TASKS)}$"),
])
def test_bad_task_settings_are_one_line_config_errors(tmp_path, task, key, value, message):
    c = task_config(task)
    if key:
        c.task[key] = value
    with pytest.raises(config_lib.ConfigError, match=message) as e:
        train.train_and_evaluate(c, str(tmp_path / "run"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_full_on_a_task(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(task_config(train_steps=3), workdir)
    capsys.readouterr()
    fv = flags.FlagValues()
    evaluate.define_flags(fv)
    with pytest.raises(SystemExit):
        cli.reporting(evaluate.main)(fv(["evaluate", "--workdir", workdir, "--full"]), fv)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --full: task:mqar draws its sequences afresh") and "\n" not in err
    assert tasks.task_name("task:mqar") == "mqar"


@pytest.mark.slow  # four short runs: about 30 s on one core
def test_stop_accuracy_ends_a_task_run_at_its_first_estimate_that_reaches_it(tmp_path, capsys):
    """The same run trained straight through and with stop_accuracy (as reproduce trains it): it ends at the
    first estimate of the straight run's curve at or above the level (the curve need not rise steadily), saves
    that step, says so in metrics.jsonl's closing line and run.json, and a re-run of the same config (reproduce's
    or main's) is finished, trains nothing; unset, the key lets it train on."""
    sort = dict(model_config=dict(alphabet_size=16), task=dict(sort_length=4))
    straight = str(tmp_path / "straight")
    c = task_config("sort", train_steps=8, est_interval=2)
    c.update(sort)
    train.train_and_evaluate(c, straight)
    curve = [(e["step"], e["val_token_accuracy"]) for e in rundir.read_metrics(straight)[1]]
    level = max(a for _, a in curve[:-1])  # reached before the last step: the run stops short of train_steps
    assert level > 0
    expected = next(step for step, a in curve if a >= level)
    c.stop_accuracy = level
    workdir = str(tmp_path / "stopped")
    assert runner.train_run("sort", c, workdir, None) == "finished"  # as reproduce trains it
    assert rundir.checkpoints(workdir, create=False).latest_step() == expected < c.train_steps
    info = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert (info["finished"], info["stopped_early"], info["step"]) == (True, True, expected)
    assert plan.finished(workdir, c) and runner.train_run("sort", c, workdir, None) == "skipped"
    assert not plan.finished(workdir, task_config("sort", train_steps=8, est_interval=2, stop_accuracy=1.0))
    lines = [json.loads(line) for line in open(tmp_path / "stopped" / "metrics.jsonl")]
    assert lines[-1]["step"] == expected and lines[-1]["stop_accuracy"] == level and "time_total_s" in lines[-1]
    assert [(e["step"], e["val_token_accuracy"]) for e in rundir.read_metrics(workdir)[1]] == \
        [p for p in curve if p[0] <= expected]  # the same estimates as the straight run's, up to the stop
    assert train.stopped_early(c, workdir, expected)
    again = train.train_and_evaluate(c, workdir)
    assert again.already_finished and again.stopped_early and again.step == expected
    capsys.readouterr()
    main.report(again, workdir, c.train_steps, "", 0, c.stop_accuracy)
    said = capsys.readouterr().out
    assert f"already finished at step {expected} (stopped early at step {expected} of 8" in said
    assert "Raise --config.stop_accuracy" in said
    c.stop_accuracy = None  # unset: it trains on to train_steps
    on = train.train_and_evaluate(c, workdir)
    assert not on.stopped_early and on.step == c.train_steps


@pytest.mark.fast
def test_stop_accuracy_is_a_task_runs_key():
    c = config_lib.base_config("baseline")
    c.stop_accuracy = 0.9
    with pytest.raises(config_lib.ConfigError, match=r"^stop_accuracy: a task run's key .* 'wiki_vital' is a corpus"):
        config_lib.validate(c)
    for bad in (0.0, 1.5, float("nan")):
        c = task_config(stop_accuracy=bad)
        with pytest.raises(config_lib.ConfigError, match=r"^stop_accuracy: must be a finite number in \(0, 1\]"):
            config_lib.validate(c)
    config_lib.validate(task_config(stop_accuracy=1))
