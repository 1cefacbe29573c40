"""Damaged checkpoints: each fault is found, reported in one line, set aside, and the previous step restores."""
import asyncio
import gc
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from aed_jax import checkpoint
from aed_jax import data
from aed_jax import model as model_lib
from aed_jax import optim
from aed_jax import rundir
from aed_jax import train
from test_train import ROOT, data_dir, small_config  # noqa: F401

STEPS = (2, 4, 6)


def _state(c, seed: int, step: int):
    params = model_lib.init_params(model_lib.from_config(c), jax.random.key(seed))
    params = jax.tree_util.tree_map(lambda p: p + 0.01 * seed, params)  # a moment's Adam state that is not zeros
    opt_state = optim.make_optimizer(c).init(params)
    opt_state = jax.tree_util.tree_map(lambda a: a + step if a.dtype.kind == "f" else a, opt_state)
    return {"step": jnp.asarray(step, jnp.int32), "params": params, "opt_state": opt_state}


def _iterator(c):
    train_path = data.split_paths(c)[0]
    return data.train_iterator(train_path, c.model_config.context_size, c.batch_size, c.random_seed)


def _resume(workdir, abstract, data_iter=None):
    """The trainer's restore of `workdir`'s checkpoints/: the newest intact step, damaged ones moved to damaged/."""
    return checkpoint.restore_latest(rundir.checkpoints(workdir), abstract, data_iter,
                                     os.path.join(workdir, rundir.DAMAGED))


def _abstract(c):
    return jax.eval_shape(lambda: _state(c, 0, 0))


@pytest.fixture(scope="module")
def pristine(data_dir, tmp_path_factory):  # noqa: F811
    """A workdir with checkpoints 2, 4, 6 (the iterator two batches on at each) and best/ at 4; the states saved."""
    c = small_config(data_dir)
    workdir = str(tmp_path_factory.mktemp("pristine") / "run")
    latest, best, it, states, positions = rundir.checkpoints(workdir), rundir.best(workdir), \
        _iterator(c), {}, {}
    for step in STEPS:
        next(it), next(it)
        states[step], positions[step] = _state(c, step, step), it.get_state()
        checkpoint.save(latest, step, states[step], c, it)
    assert checkpoint.save_best(best, 4, states[4], c, {"val_loss": 1.5})
    latest.close(), best.close()
    return c, workdir, states, positions


@pytest.fixture
def run(pristine, tmp_path):
    """A copy of the pristine workdir to break."""
    c, workdir, states, positions = pristine
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return c, copy, states, positions


def _largest_array_file(step_dir):
    folder = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
    return max((os.path.join(folder, n) for n in os.listdir(folder)), key=os.path.getsize)


def _rewrite(path, change):
    content = bytearray(open(path, "rb").read())
    change(content)
    open(path, "wb").write(bytes(content))


def _flip3(b):
    for i in (len(b) // 3, len(b) // 2, 2 * len(b) // 3):
        b[i] ^= 0xFF


def _random1000(b):
    b[len(b) // 2:len(b) // 2 + 1000] = np.random.default_rng(0).integers(0, 256, 1000, np.uint8).tobytes()


FAULTS = {
    "truncated": lambda d: os.truncate(_largest_array_file(d), os.path.getsize(_largest_array_file(d)) // 2),
    "zero-filled": lambda d: _rewrite(_largest_array_file(d), lambda b: b.__setitem__(slice(None), bytes(len(b)))),
    "3 flipped bytes": lambda d: _rewrite(_largest_array_file(d), _flip3),
    "1000 random bytes": lambda d: _rewrite(_largest_array_file(d), _random1000),
    "no _METADATA": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "broken config": lambda d: open(os.path.join(d, "config", "metadata"), "w").write('{"broken'),
    "no state": lambda d: shutil.rmtree(os.path.join(d, "state")),
}
# Flipped or random bytes fail decompression or the checksum, by where they land: the arrays' order in
# OCDBT's data file varies from save to save. The checksum tests below use _other_arrays instead.
CAUSES = {"3 flipped bytes": "", "1000 random bytes": "",
          "no _METADATA": "state/_METADATA is missing", "broken config": "config: JSONDecodeError",
          "no state": "state/ is missing"}


def _other_arrays(step_dir, source_dir):
    """Another save's state in place of this one's: every file reads, the arrays' bytes differ, so the
    checksums are what finds it, whatever order the arrays take in OCDBT's files."""
    shutil.rmtree(os.path.join(step_dir, "state"))
    shutil.copytree(os.path.join(source_dir, "state"), os.path.join(step_dir, "state"))


def _edit_item(step_dir, item, change):
    """Rewrites a step's JSON item (orbax's `<item>/metadata` file) as `change(its value)`: damage that
    still parses."""
    path = os.path.join(step_dir, item, "metadata")
    with open(path) as f:
        value = json.load(f)
    with open(path, "w") as f:
        json.dump(change(value), f)


def _tree_digest(folder) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def _warnings(caplog):
    """This project's warnings (a damaged restore can leave orbax's threads logging late, under load)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and f"{os.sep}aed_jax{os.sep}" in r.pathname]


def _assert_identical(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_damaged_checkpoint_is_reported_set_aside_and_the_previous_one_restores(run, fault, caplog, capfd):
    c, workdir, states, positions = run
    step_dir = os.path.join(workdir, rundir.CHECKPOINTS, "6")
    FAULTS[fault](step_dir)
    damaged = _tree_digest(step_dir)

    with pytest.raises(checkpoint.CheckpointError) as e:  # a reader reports it and changes nothing
        rundir.restore_params(workdir, "latest")
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"checkpoint 6 in {os.path.join(workdir, 'checkpoints')} "
                                                      "is damaged (")
    assert message.endswith("; intact steps: 2, 4") and CAUSES.get(fault, "state: ") in message
    assert _tree_digest(step_dir) == damaged

    it = _iterator(c)
    with caplog.at_level(logging.WARNING):
        state, step = _resume(workdir, _abstract(c), it)
    assert step == 4
    _assert_identical(state, states[4])
    assert it.get_state() == positions[4]
    [warning] = _warnings(caplog)
    assert "\n" not in warning and warning.startswith("checkpoint 6 in ") and "is damaged (" in warning
    [aside] = os.listdir(os.path.join(workdir, rundir.DAMAGED))
    assert aside.startswith("checkpoints-6-") and aside in warning
    assert _tree_digest(os.path.join(workdir, rundir.DAMAGED, aside)) == damaged  # moved, byte for byte
    assert sorted(os.listdir(os.path.join(workdir, rundir.CHECKPOINTS))) == ["2", "4"]
    assert "Traceback" not in capfd.readouterr().err


def test_a_missing_stream_position_is_a_warning_that_the_stream_restarts(run, caplog):
    c, workdir, states, _ = run
    shutil.rmtree(os.path.join(workdir, rundir.CHECKPOINTS, "6", checkpoint.STREAM))
    it = _iterator(c)
    start = it.get_state()
    with caplog.at_level(logging.WARNING):
        state, step = _resume(workdir, _abstract(c), it)
    assert step == 6 and it.get_state() == start
    _assert_identical(state, states[6])
    [warning] = _warnings(caplog)
    assert "checkpoint 6 in" in warning and "no data stream position: the data stream restarts from its beginning" in warning
    assert not os.path.exists(os.path.join(workdir, rundir.DAMAGED))


@pytest.mark.parametrize("fault,cause", [
    ("next_index -5", "stream: next_index -5 is not the step 6 (one batch a step)"),
    ("next_index + 1", "stream: next_index 7 is not the step 6 (one batch a step)"),
    ("folder renamed", "state: holds step 6, not the 8 its folder is named"),
])
def test_a_step_whose_state_or_stream_is_not_its_own_is_set_aside(run, fault, cause, caplog):
    c, workdir, states, positions = run
    step_dir = os.path.join(workdir, rundir.CHECKPOINTS, "6")
    if fault == "folder renamed":  # without its stream position, so the state's own step is what tells
        shutil.rmtree(os.path.join(step_dir, checkpoint.STREAM))
        os.rename(step_dir, os.path.join(workdir, rundir.CHECKPOINTS, "8"))
    else:
        def moved(position):
            assert position["next_index"] == 6
            return {**position, "next_index": -5 if fault == "next_index -5" else 7}
        _edit_item(step_dir, checkpoint.STREAM, moved)
    it = _iterator(c)
    with caplog.at_level(logging.WARNING):
        state, step = _resume(workdir, _abstract(c), it)
    assert step == 4 and it.get_state() == positions[4]
    _assert_identical(state, states[4])
    [warning] = _warnings(caplog)
    assert "is damaged (" in warning and cause in warning


def test_an_earlier_versions_stream_position_restores(run):
    """Before the position was global, one process saved it through grain, in data/process_0-of-1.json."""
    c, workdir, states, positions = run
    step_dir = os.path.join(workdir, rundir.CHECKPOINTS, "6")
    shutil.rmtree(os.path.join(step_dir, checkpoint.STREAM))
    os.makedirs(os.path.join(step_dir, "data"))
    with open(os.path.join(step_dir, checkpoint.LEGACY_DATA), "w") as f:
        json.dump(positions[6], f)
    it = _iterator(c)
    state, step = _resume(workdir, _abstract(c), it)
    assert step == 6 and it.get_state() == positions[6] != _iterator(c).get_state()
    _assert_identical(state, states[6])


def test_an_imported_step_0_without_data_restores_silently(data_dir, tmp_path, caplog):  # noqa: F811
    c = small_config(data_dir)
    state = _state(c, 1, 0)
    checkpoint.save(rundir.checkpoints(str(tmp_path)), 0, state, c)
    with caplog.at_level(logging.WARNING):
        restored, step = _resume(str(tmp_path), _abstract(c), _iterator(c))
    assert step == 0 and not _warnings(caplog)
    _assert_identical(restored, state)


def test_checkpoints_without_checksums_still_load(run, caplog):
    """As written before checkpoints carried checksums."""
    c, workdir, states, _ = run
    for step in STEPS:
        shutil.rmtree(os.path.join(workdir, rundir.CHECKPOINTS, str(step), checkpoint.CHECKSUMS))
    with caplog.at_level(logging.WARNING):
        state, step = _resume(workdir, _abstract(c), _iterator(c))
        params, _, _ = rundir.restore_params(workdir, "latest")
    assert step == 6 and not _warnings(caplog)
    _assert_identical(state, states[6])
    _assert_identical(params, jax.device_get(states[6]["params"]))


def test_every_checkpoint_damaged_is_one_line_and_nothing_is_deleted(run, caplog):
    c, workdir, _, _ = run
    for step in STEPS:
        os.remove(os.path.join(workdir, rundir.CHECKPOINTS, str(step), "state", "_METADATA"))
    with pytest.raises(checkpoint.CheckpointError, match=r"^every checkpoint in \S+ is damaged \(steps 6, 4, 2, moved "
                                                         r"to \S+/damaged\); the same command now trains from step 0$"):
        _resume(workdir, _abstract(c))
    assert len(_warnings(caplog)) == 3 and len(os.listdir(os.path.join(workdir, rundir.DAMAGED))) == 3
    with pytest.raises(checkpoint.CheckpointError, match="has no checkpoints in checkpoints/"):
        rundir.restore_params(workdir)


def test_another_models_checkpoint_is_not_taken_for_damage(run):
    c, workdir, _, _ = run
    other = small_config(c.data_dir)
    other.model_config.n_embed = 64
    with pytest.raises(checkpoint.CheckpointError, match=r"^checkpoint 6 in \S+ holds another state than this "
                                                         r"config's \(.*\)$"):
        _resume(workdir, _abstract(other))
    assert sorted(os.listdir(os.path.join(workdir, rundir.CHECKPOINTS))) == ["2", "4", "6"]
    assert not os.path.exists(os.path.join(workdir, rundir.DAMAGED))


@pytest.mark.fast
def test_no_checkpoint_restores_nothing(tmp_path, data_dir):  # noqa: F811
    assert _resume(str(tmp_path), _abstract(small_config(data_dir))) is None


def test_a_damaged_best_names_the_intact_steps(run):
    _, workdir, _, _ = run
    _other_arrays(os.path.join(workdir, rundir.BEST, "4"), os.path.join(workdir, rundir.CHECKPOINTS, "2"))
    with pytest.raises(checkpoint.CheckpointError, match=r"^checkpoint 4 in \S+/best is damaged \(checksum mismatch "
                                                         r"in params/\S+\); intact steps: 2, 4, 6$"):
        rundir.restore_params(workdir, "best")


def test_readers_list_as_intact_only_steps_the_trainer_would_resume_from(run):
    """A step whose params verify but whose optimizer state does not (its recorded checksum changed
    here, so the damage is exactly there) is not intact for the trainer, so not for a reader either."""
    _, workdir, _, _ = run

    def one_moment_changed(recorded):
        key = next(k for k in sorted(recorded["crc32"]) if k.startswith("opt_state/") and "/mu/" in k)
        recorded["crc32"][key] ^= 1
        return recorded
    _edit_item(os.path.join(workdir, rundir.CHECKPOINTS, "4"), checkpoint.CHECKSUMS, one_moment_changed)
    _other_arrays(os.path.join(workdir, rundir.CHECKPOINTS, "6"), os.path.join(workdir, rundir.CHECKPOINTS, "2"))
    with pytest.raises(checkpoint.CheckpointError, match=r"^checkpoint 6 in \S+ is damaged \(checksum mismatch in "
                                                         r"params/\S+\); intact steps: 2$"):
        rundir.restore_params(workdir)


def test_a_renamed_step_is_damaged_for_readers_too(run):
    """The state holds the step it was saved at; a reader of a renamed folder says so instead of
    reporting the folder's step for another step's parameters."""
    _, workdir, _, _ = run
    os.rename(os.path.join(workdir, rundir.CHECKPOINTS, "6"), os.path.join(workdir, rundir.CHECKPOINTS, "8"))
    with pytest.raises(checkpoint.CheckpointError, match=r"^checkpoint 8 in \S+ is damaged \(state: holds step 6, not "
                                                         r"the 8 its folder is named\); intact steps: 2, 4$"):
        rundir.restore_params(workdir)


def test_an_unreadable_step_metadata_file_is_damage(run, caplog):
    """orbax's `_CHECKPOINT_METADATA` of a step, unreadable: readers name it, the trainer sets the step
    aside and resumes from the one before, and orbax's ERROR line about it is not shown."""
    c, workdir, states, _ = run
    with open(os.path.join(workdir, rundir.CHECKPOINTS, "6", "_CHECKPOINT_METADATA"), "w") as f:
        f.write("{garbage")
    with pytest.raises(checkpoint.CheckpointError, match=r"^checkpoint 6 in \S+ is damaged \(_CHECKPOINT_METADATA: "
                                                         r"JSONDecodeError: .*\); intact steps: 2, 4$"):
        rundir.restore_params(workdir)
    with caplog.at_level(logging.WARNING):
        state, start = _resume(workdir, _abstract(c))
    assert start == 4 and not os.path.exists(os.path.join(workdir, rundir.CHECKPOINTS, "6"))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_garbage_in_the_checksums_item_names_the_json_error(run):
    """Not `StopIteration: 0`, the json decoder's internal exception that the error was raised beside."""
    _, workdir, _, _ = run
    with open(os.path.join(workdir, rundir.CHECKPOINTS, "6", checkpoint.CHECKSUMS, "metadata"), "w") as f:
        f.write("garbage{{")
    with pytest.raises(checkpoint.CheckpointError, match=r"^checkpoint 6 in \S+ is damaged \(checksums: "
                                                         r"JSONDecodeError: Expecting value: line 1 column 1 \(char 0\)"
                                                         r"\); intact steps: 2, 4$"):
        rundir.restore_params(workdir)


@pytest.mark.parametrize("item,content,why", [
    ("metrics/metrics", '{"val_lo', r"metrics: JSONDecodeError: "),
    ("metrics/metrics", '{"val_loss": "abc"}', r"metrics: val_loss is 'abc', not a finite number"),
    ("_CHECKPOINT_METADATA", "garbage", r"_CHECKPOINT_METADATA: JSONDecodeError: Expecting value")])
def test_damaged_best_metrics_are_one_line_for_readers_and_set_aside_by_the_trainer(run, item, content, why, caplog):
    c, workdir, states, _ = run
    with open(os.path.join(workdir, rundir.BEST, "4", item), "w") as f:
        f.write(content)
    if item == "_CHECKPOINT_METADATA":  # orbax reads it building a manager, and logs an ERROR with its content
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            rundir.best(workdir, create=False)
        assert not caplog.records  # not shown: our one line says it
    with pytest.raises(checkpoint.CheckpointError) as e:
        rundir.restore_params(workdir, "best")
    assert re.match(rf"^checkpoint 4 in \S+/best is damaged \({why}.*\); the next training run sets it aside, "
                    r"or use --checkpoint latest$", str(e.value))
    with caplog.at_level(logging.WARNING):
        [moved] = rundir.set_aside_damaged_best(workdir)
    [warning] = _warnings(caplog)
    assert "checkpoint 4 in" in warning and moved in warning and os.path.basename(moved).startswith("best-4-")
    assert not os.path.exists(os.path.join(workdir, rundir.BEST, "4"))
    assert checkpoint.best_metrics(rundir.best(workdir)) is None  # a new best can land


@pytest.mark.parametrize("change,cause", [
    (lambda config: {"x": 1}, "config: not a run config (AttributeError: "),
    (lambda config: {**config, "model_config": {**config["model_config"], "n_layer": 2}},
     "config: describes another model than the saved parameters ("),
])
def test_a_config_item_that_parses_but_is_not_the_runs_is_damage_for_readers(run, change, cause):
    c, workdir, states, _ = run
    _edit_item(os.path.join(workdir, rundir.CHECKPOINTS, "6"), "config", change)
    with pytest.raises(checkpoint.CheckpointError) as e:
        rundir.restore_params(workdir, "latest")
    message = str(e.value)
    assert "\n" not in message and message.startswith("checkpoint 6 in ") and cause in message
    assert message.endswith("; intact steps: 2, 4")
    params, _, step = rundir.restore_params(workdir, 4)
    _assert_identical(params, states[4]["params"])


def test_saved_config_of_a_broken_config_is_one_line(run):
    _, workdir, _, _ = run
    FAULTS["broken config"](os.path.join(workdir, rundir.CHECKPOINTS, "6"))
    with pytest.raises(checkpoint.CheckpointError, match=r"^checkpoint 6 in \S+ has an unreadable config "
                                                         r"\(config: JSONDecodeError: [^\n]*\)$"):
        checkpoint.saved_config(rundir.checkpoints(workdir), 6)


@pytest.mark.fast
def test_save_replaces_a_step_that_exists(run):
    """A re-run after an interrupted one saves a step again (other parameters, the same step number)."""
    c, workdir, states, _ = run
    checkpoint.save(rundir.checkpoints(workdir), 6, dict(states[2], step=jnp.asarray(6, jnp.int32)), c)
    params, _, step = rundir.restore_params(workdir, 6)
    assert step == 6
    _assert_identical(params, jax.device_get(states[2]["params"]))


@pytest.mark.fast
def test_best_only_moves_to_a_finite_lower_val_loss(run):
    c, workdir, states, _ = run
    best = rundir.best(workdir)
    assert checkpoint.best_metrics(best) == {"val_loss": 1.5}
    for step, loss in ((6, math.nan), (6, math.inf), (6, 1.5), (6, 2.0)):
        assert not checkpoint.save_best(best, step, states[6], c, {"val_loss": loss})
    assert best.all_steps() == [4]
    assert checkpoint.save_best(best, 6, states[6], c, {"val_loss": 1.0, "train_loss": 0.5})
    assert best.all_steps() == [6] and checkpoint.best_metrics(best) == {"val_loss": 1.0}
    again = dict(states[2], step=jnp.asarray(6, jnp.int32))  # other parameters at the same step
    assert checkpoint.save_best(best, 6, again, c, {"val_loss": 0.9})  # the same step again, better: replaced
    assert best.all_steps() == [6] and checkpoint.best_metrics(best) == {"val_loss": 0.9}
    _assert_identical(rundir.restore_params(workdir, "best")[0], jax.device_get(states[2]["params"]))


def test_best_rank_puts_a_tasks_accuracy_first_and_a_corpus_runs_val_loss():
    """Step 20 has the lower val loss, step 10 the higher val token accuracy: a task run's best is 10, a corpus
    run's (no accuracy recorded) is 20; equal accuracies fall back on val loss."""
    task = {10: {"val_loss": 1.2, "val_token_accuracy": 0.6}, 20: {"val_loss": 0.8, "val_token_accuracy": 0.5},
            30: {"val_loss": 1.3, "val_token_accuracy": 0.6}}
    corpus = {step: {"val_loss": m["val_loss"]} for step, m in task.items()}
    assert min(task, key=lambda step: checkpoint.best_rank(task[step])) == 10
    assert min(corpus, key=lambda step: checkpoint.best_rank(corpus[step])) == 20


def test_a_task_runs_best_is_its_highest_val_token_accuracy(run):
    """best/ as the trainer fills it, estimate after estimate: a task run keeps the step of highest val token
    accuracy over a later one of lower val loss, takes an equal accuracy only at a lower val loss, and
    replaces a best saved before accuracies were recorded (step 4: val loss alone)."""
    c, workdir, states, _ = run
    best = rundir.best(workdir)
    estimates = [(6, {"val_loss": 1.6, "val_token_accuracy": 0.5, "train_loss": 1.0}, True),  # replaces step 4
                 (8, {"val_loss": 0.8, "val_token_accuracy": 0.4}, False),  # the best by val loss, not by accuracy
                 (10, {"val_loss": 1.7, "val_token_accuracy": 0.5}, False),  # a tie, lost on val loss
                 (12, {"val_loss": 1.1, "val_token_accuracy": 0.5}, True)]  # a tie, won on val loss
    for step, estimate, saved in estimates:
        assert checkpoint.save_best(best, step, states[6], c, estimate) is saved, step
    assert best.all_steps() == [12]
    assert checkpoint.best_metrics(best) == {"val_loss": 1.1, "val_token_accuracy": 0.5}
    assert rundir.best(workdir, create=False).best_step() == 12


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")  # the save it kills
def test_an_interrupted_best_save_is_cleaned_and_the_best_kept(run, monkeypatch):
    c, workdir, states, _ = run

    def killed(self, *args, **kwargs):  # dies while orbax writes into its temporary folder
        raise KeyboardInterrupt

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_best(rundir.best(workdir), 6, states[6], c, {"val_loss": 1.0})
    monkeypatch.undo()
    left = [n for n in os.listdir(os.path.join(workdir, rundir.BEST)) if n != "4"]
    assert left and all(".orbax-checkpoint-tmp" in n for n in left)
    assert rundir.clean_interrupted(workdir) == [os.path.join(workdir, rundir.BEST, n) for n in sorted(left)]
    assert os.listdir(os.path.join(workdir, rundir.BEST)) == ["4"]
    assert rundir.clean_interrupted(workdir) == []
    params, _, step = rundir.restore_params(workdir, "best")
    assert step == 4
    _assert_identical(params, jax.device_get(states[4]["params"]))
    best = rundir.best(workdir)  # the re-run saves that best again
    assert checkpoint.save_best(best, 6, states[6], c, {"val_loss": 1.0}) and best.all_steps() == [6]


@pytest.mark.parametrize("command", [["aed_jax.evaluate"], ["aed_jax.sample", "--prompt=a"],
                                     ["aed_jax.interop", "export", "--out=OUT/m.npz"]])
def test_readers_of_a_damaged_checkpoint_print_one_line(run, command, tmp_path):
    _, workdir, _, _ = run
    FAULTS["truncated"](os.path.join(workdir, rundir.CHECKPOINTS, "6"))
    args = [a.replace("OUT", str(tmp_path)) for a in command]
    proc = subprocess.run([sys.executable, "-m", *args, f"--workdir={workdir}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: checkpoint 6 in {workdir}/checkpoints is "
                                                                    "damaged (state: ")
    assert proc.stderr.endswith("; intact steps: 2, 4\n")
    assert not os.path.exists(os.path.join(workdir, rundir.DAMAGED))


def test_a_failed_restores_abandoned_reads_log_nothing_later(run, caplog):
    """The reads orbax abandons when one fails may be garbage-collected after the restore returned;
    asyncio then logs "Future exception was never retrieved" with a traceback, which must not break
    a reader's one-line error. Such a future is made here by hand, after a real failed restore."""
    _, workdir, _, _ = run
    FAULTS["truncated"](os.path.join(workdir, rundir.CHECKPOINTS, "6"))
    with pytest.raises(checkpoint.CheckpointError):
        rundir.restore_params(workdir)
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_exception(OSError("an abandoned read"))
    with caplog.at_level(logging.DEBUG):
        del future
        gc.collect()
    loop.close()
    assert not [r for r in caplog.records if r.name == "asyncio"]


# The trainer over damaged or interrupted checkpoints (est_interval 2: a checkpoint and an estimate every 2 steps).

def _kind_steps(workdir, kind=rundir.CHECKPOINTS):
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, kind)) if n.isdigit())


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):  # noqa: F811
    """A run straight to step 10, then a copy stopped at step 8 (checkpoints 4, 6, 8) for each test to break."""
    c = small_config(data_dir, train_steps=10, est_interval=2)
    straight, at_8 = str(tmp_path_factory.mktemp("straight")), str(tmp_path_factory.mktemp("at8") / "run")
    train.train_and_evaluate(c, straight)
    train.train_and_evaluate(small_config(data_dir, train_steps=8, est_interval=2), at_8)
    return c, rundir.restore_params(straight, "latest")[0], at_8


@pytest.fixture
def at_8(straight, tmp_path):
    c, params, workdir = straight
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return c, params, copy


def test_training_resumes_from_the_newest_intact_checkpoint(at_8, caplog):
    c, straight_params, workdir = at_8
    _other_arrays(os.path.join(workdir, rundir.CHECKPOINTS, "8"), os.path.join(workdir, rundir.CHECKPOINTS, "4"))
    with caplog.at_level(logging.WARNING):
        assert train.train_and_evaluate(c, workdir).step == 10
    [warning] = _warnings(caplog)
    assert warning.startswith("checkpoint 8 in ") and "checksum mismatch in " in warning
    assert [n.split("-")[:2] for n in os.listdir(os.path.join(workdir, rundir.DAMAGED))] == [["checkpoints", "8"]]
    assert _kind_steps(workdir) == [6, 8, 10]
    _assert_identical(rundir.restore_params(workdir)[0], straight_params)  # the same stream, from step 6


def test_best_ahead_of_checkpoints_resumes(at_8):
    """A kill between the best save and the latest save of step 8."""
    c, straight_params, workdir = at_8
    assert _kind_steps(workdir, rundir.BEST) == [8]  # the loss falls: the last estimate is the best
    shutil.rmtree(os.path.join(workdir, rundir.CHECKPOINTS, "8"))
    assert train.train_and_evaluate(c, workdir).step == 10
    assert _kind_steps(workdir) == [6, 8, 10]
    _assert_identical(rundir.restore_params(workdir)[0], straight_params)


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")  # the save it kills
def test_a_kill_during_the_best_save_loses_no_best(at_8, monkeypatch, caplog):
    c, _, workdir = at_8
    best_dir = os.path.join(workdir, rundir.BEST)
    async_save = ocp.StandardCheckpointHandler.async_save

    def killed_in_best(self, directory, *args, **kwargs):
        if str(directory).startswith(best_dir):
            raise KeyboardInterrupt
        return async_save(self, directory, *args, **kwargs)

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", killed_in_best)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(c, workdir)
    monkeypatch.undo()
    assert _kind_steps(workdir) == [4, 6, 8] and _kind_steps(workdir, rundir.BEST) == [8]
    assert any(".orbax-checkpoint-tmp" in n for n in os.listdir(best_dir))
    with caplog.at_level(logging.WARNING):
        assert train.train_and_evaluate(c, workdir).step == 10
    assert any("orbax-checkpoint-tmp" in w and "interrupted save" in w for w in _warnings(caplog))
    assert os.listdir(best_dir) == ["10"]


# Every file of a step, damaged one way at a time: the sweep of single-byte damage and truncation.

def _damages(path):
    """(what, how) for one file: truncated to nothing and to half, one byte flipped at its start,
    middle and end."""
    size = os.path.getsize(path)
    out = [(f"truncated to {n} of {size} bytes", lambda p, n=n: os.truncate(p, n)) for n in sorted({0, size // 2})
           if n < size]
    flip = lambda o: lambda p: _rewrite(p, lambda b: b.__setitem__(o, b[o] ^ 0xFF))
    return out + [(f"byte {o} of {size} flipped", flip(o)) for o in sorted({0, size // 2, size - 1}) if size]


@pytest.mark.slow
def test_every_byte_of_a_checkpoint_damaged_is_found_or_harmless(pristine, tmp_path, caplog):
    """Each file of the newest step (and of best/), truncated or with one byte flipped: a reader either
    reads the very parameters that were saved or refuses in one line naming the intact steps; the
    trainer resumes from a step whose whole state is the one saved, never another's, and both other
    steps survive. Nothing else: no traceback, no silent wrong state, no lost intact checkpoint."""
    c, workdir, states, positions = pristine
    outcomes = {}
    for kind, step in ((rundir.CHECKPOINTS, 6), (rundir.BEST, 4)):
        step_dir = os.path.join(workdir, kind, str(step))
        files = sorted(os.path.relpath(os.path.join(root, n), step_dir)
                       for root, _, names in os.walk(step_dir) for n in names)
        for rel in files:
            for what, damage in _damages(os.path.join(step_dir, rel)):
                case = f"{kind}/{step}/{rel}: {what}"
                copy = str(tmp_path / "case")
                shutil.copytree(workdir, copy)
                damage(os.path.join(copy, kind, str(step), rel))
                which = "best" if kind == rundir.BEST else "latest"
                try:
                    params, _, read = rundir.restore_params(copy, which)
                    _assert_identical(params, jax.device_get(states[read]["params"]))
                    seen = f"read step {read}"
                except checkpoint.CheckpointError as e:
                    message = str(e)
                    assert "\n" not in message and len(message) < 600, (case, message)
                    endings = ("intact steps: 2, 4", "intact steps: 2, 4, 6", "use --checkpoint latest")
                    assert message.endswith(endings), (case, message)
                    seen = "refused"
                rundir.set_aside_damaged_best(copy)  # what the trainer does at start, then opens best/
                best = rundir.best(copy)
                assert checkpoint.best_metrics(best) in ({"val_loss": 1.5}, None), case
                best.close()
                it = _iterator(c)
                with caplog.at_level(logging.WARNING):
                    state, resumed = _resume(copy, _abstract(c), it)
                _assert_identical(state, states[resumed])  # a step's own state, never another's
                assert it.get_state() == positions[resumed], case
                assert resumed == 6 or kind == rundir.CHECKPOINTS, case  # damage in best/ never costs checkpoints/
                assert {2, 4} <= {int(n) for n in os.listdir(os.path.join(copy, rundir.CHECKPOINTS))}, case
                outcomes[case] = (seen, resumed)
                shutil.rmtree(copy)
    assert len(outcomes) > 80
    # What a reader refuses the trainer never resumes from. Much damage is harmless to both (the
    # commit markers, orbax's step metadata, OCDBT data files that the final manifest no longer uses):
    # those cases read back exactly what was saved, as checked above.
    latest = {case: outcome for case, outcome in outcomes.items() if case.startswith(rundir.CHECKPOINTS)}
    assert all(resumed == 4 for seen, resumed in latest.values() if seen == "refused"), latest
    assert any(seen == "refused" for seen, _ in latest.values())


def test_a_changed_number_in_the_config_or_stream_item_is_found_by_its_checksum(run):
    """A damaged byte that still parses and fits (another learning rate, another seed in the stream's
    state) passes every other check; the items' checksums find it."""
    c, workdir, states, positions = run
    _edit_item(os.path.join(workdir, rundir.CHECKPOINTS, "6"), "config",
               lambda config: {**config, "lr": config["lr"] * 2})
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"is damaged \(config: checksum mismatch\); intact steps: 2, 4$"):
        rundir.restore_params(workdir)
    _edit_item(os.path.join(workdir, rundir.CHECKPOINTS, "4"), checkpoint.STREAM,
               lambda position: {**position, "extra": 1})
    state, step = _resume(workdir, _abstract(c), _iterator(c))
    assert step == 2
    _assert_identical(state, states[2])
