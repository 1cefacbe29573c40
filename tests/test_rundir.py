"""A run's folder: the lock, the same-run checks of a resume, finished runs, --fresh, and the faults
of a run (a NaN at a save, a full disk, an unwritable workdir, Ctrl-C) as one line that loses nothing."""
import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from aed_jax import checkpoint
from aed_jax import rundir
from aed_jax import train
from test_train import ROOT, _launch, _wait_for_checkpoint, config_file, data_dir, small_config  # noqa: F401


def _steps(workdir, kind=rundir.CHECKPOINTS):
    folder = os.path.join(workdir, kind)
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def _all_finite(workdir, which):
    params = rundir.restore_params(workdir, which)[0]
    return all(np.isfinite(p).all() for p in jax.tree_util.tree_leaves(params))


def _poison_update_at(monkeypatch, start, bad_step):
    """The train step of a run resumed at `start`, except that the update of step `bad_step`
    (1-based) makes every parameter NaN while the loss it reports (computed before the update)
    stays finite: the fault that a loss check alone lets through to a checkpoint."""
    compile_train_step = train.compile_train_step

    def compile_poisoned(*args, **kwargs):
        step_fn, calls = compile_train_step(*args, **kwargs), []

        def step(params, opt_state, batch, rng, lr):
            params, opt_state, metrics = step_fn(params, opt_state, batch, rng, lr)
            calls.append(1)
            if start + len(calls) == bad_step:
                params = jax.tree_util.tree_map(lambda p: p * np.nan, params)
            return params, opt_state, metrics
        return step
    monkeypatch.setattr(train, "compile_train_step", compile_poisoned)


def test_non_finite_parameters_at_a_checkpoint_step_are_never_saved(data_dir, tmp_path, monkeypatch):
    workdir = str(tmp_path)
    train.train_and_evaluate(small_config(data_dir, train_steps=4, est_interval=2), workdir)
    best_before = _steps(workdir, rundir.BEST)
    _poison_update_at(monkeypatch, start=4, bad_step=6)
    with pytest.raises(train.TrainError) as e:
        train.train_and_evaluate(small_config(data_dir, train_steps=8, est_interval=2), workdir)
    message = str(e.value)
    assert "\n" not in message
    assert "step 6 produced non-finite parameters" in message and "last finite checkpoint is step 4" in message
    assert _steps(workdir) == [2, 4] and _steps(workdir, rundir.BEST) == best_before
    assert _all_finite(workdir, "latest") and _all_finite(workdir, "best")
    monkeypatch.undo()  # the fault is gone: the run goes on from step 4
    assert train.train_and_evaluate(small_config(data_dir, train_steps=8, est_interval=2), workdir).step == 8


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    workdir = str(tmp_path)
    train.train_and_evaluate(small_config(data_dir, train_steps=4), workdir)
    _poison_update_at(monkeypatch, start=4, bad_step=5)  # step 6 computes its loss from NaN parameters
    with pytest.raises(train.TrainError, match=r"^loss is nan at step 6; stopped without saving it; the last "
                                               r"finite checkpoint is step 4 in \S+/checkpoints$"):
        train.train_and_evaluate(small_config(data_dir, train_steps=12), workdir)
    assert _steps(workdir) == [4] and _all_finite(workdir, "latest")


def test_a_huge_learning_rate_stops_before_saving_anything_non_finite(data_dir, tmp_path):
    """The issue's reproducer from a fresh workdir: lr 1e6, no warmup, a checkpoint every step."""
    workdir = str(tmp_path)
    c = small_config(data_dir, train_steps=40, est_interval=1, lr=1e6, min_lr=1e5, warmup_iters=0)
    with pytest.raises(train.TrainError, match="non-finite|nan|inf"):
        train.train_and_evaluate(c, workdir)
    for step in _steps(workdir):
        assert _all_finite(workdir, step), step
    if _steps(workdir, rundir.BEST):
        assert _all_finite(workdir, "best")


def test_a_second_trainer_is_refused_and_touches_nothing(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(small_config(data_dir, train_steps=2), workdir)
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(workdir, "**"), recursive=True)}
    holder = rundir.Lock(workdir)
    try:
        with pytest.raises(rundir.RunError, match=rf"in use by another trainer \(host .*, pid {os.getpid()},"):
            train.train_and_evaluate(small_config(data_dir, train_steps=4, lr=1e-3), workdir, fresh=True)
    finally:
        holder.release()
    after = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(workdir, "**"), recursive=True)}
    assert after == before
    assert train.train_and_evaluate(small_config(data_dir, train_steps=4), workdir).step == 4  # released


def test_two_trainers_on_one_workdir_from_the_command_line(config_file, tmp_path):
    """The second exits at once with one line naming the first (host, pid); the first goes on."""
    workdir = str(tmp_path / "run")
    first = _launch(config_file, workdir)
    try:
        _wait_for_checkpoint(workdir, first)
        second = subprocess.run([sys.executable, "-m", "aed_jax.main", f"--config={config_file}",
                                 f"--workdir={workdir}", "--config.lr=0.01"], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1].startswith(f"error: {workdir} is in use by another trainer")
        assert f"pid {first.pid}," in second.stderr and "Traceback" not in second.stderr
        first.send_signal(signal.SIGTERM)  # the first one never noticed: it saves and stops as usual
        out, _ = first.communicate(timeout=120)
        assert first.returncode == 0 and "stopped by SIGTERM" in out, out[-3000:]
    finally:
        first.kill()
    rundir.Lock(workdir).release()  # free again


def test_a_killed_trainer_leaves_no_lock(config_file, tmp_path):
    """kill -9 frees the workdir: the kernel drops the lock of a dead process."""
    workdir = str(tmp_path / "run")
    first = _launch(config_file, workdir)
    _wait_for_checkpoint(workdir, first)
    first.kill()
    first.communicate()
    rundir.Lock(workdir).release()


def test_a_different_dataset_is_refused_a_longer_run_continues(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(small_config(data_dir, train_steps=4), workdir)
    config_json = open(os.path.join(workdir, "config.json")).read()
    other = small_config(str(tmp_path / "other"), train_steps=8, dataset="other", lr=1e-3)
    os.makedirs(tmp_path / "other")
    for split in ("train", "val"):  # the same tokens, under another dataset name
        os.link(os.path.join(data_dir, f"synth_{split}.bin"), tmp_path / "other" / f"other_{split}.bin")
    with pytest.raises(rundir.RunError) as e:
        train.train_and_evaluate(other, workdir)
    message = str(e.value)
    assert "\n" not in message and "dataset ('synth' -> 'other')" in message and "lr (0.003 -> 0.001)" in message
    assert "--workdir" in message and "--fresh" in message
    assert open(os.path.join(workdir, "config.json")).read() == config_json  # only an accepted run writes it
    assert train.train_and_evaluate(small_config(data_dir, train_steps=6), workdir).step == 6  # longer: goes on
    assert json.load(open(os.path.join(workdir, "config.json")))["train_steps"] == 6


def test_a_run_recorded_before_a_key_existed_resumes_with_its_default(data_dir, tmp_path):
    """config.json of an earlier version lacks the keys added since: the run had their defaults, so it
    resumes; a config that sets such a key otherwise is another run."""
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(small_config(data_dir, train_steps=2), workdir)
    path = os.path.join(workdir, "config.json")
    old = json.load(open(path))
    del old["model_config"]["position_embedding_type"], old["mesh_fsdp"]
    json.dump(old, open(path, "w"))
    rope = small_config(data_dir, train_steps=4)
    rope.model_config.position_embedding_type = "ROPE"
    with pytest.raises(rundir.RunError, match=r"model_config\.position_embedding_type \('LEARNED' -> 'ROPE'\)"):
        train.train_and_evaluate(rope, workdir)
    assert train.train_and_evaluate(small_config(data_dir, train_steps=4), workdir).step == 4


def test_other_token_files_under_the_same_name_are_refused(data_dir, tmp_path):
    workdir, folder = str(tmp_path / "run"), tmp_path / "data"
    os.makedirs(folder)
    for split in ("train", "val"):
        np.fromfile(os.path.join(data_dir, f"synth_{split}.bin"), np.uint16).tofile(folder / f"synth_{split}.bin")
    train.train_and_evaluate(small_config(str(folder), train_steps=2), workdir)
    np.fromfile(os.path.join(data_dir, "synth_train.bin"), np.uint16)[:-100].tofile(folder / "synth_train.bin")
    with pytest.raises(rundir.RunError, match=r"train data \(synth_train.bin: 40,000 bytes -> synth_train.bin: "
                                              r"39,800 bytes\)"):
        train.train_and_evaluate(small_config(str(folder), train_steps=4), workdir)


def test_a_finished_run_says_so_and_trains_nothing(data_dir, tmp_path):
    workdir = str(tmp_path)
    done = train.train_and_evaluate(small_config(data_dir, train_steps=4), workdir)
    again = train.train_and_evaluate(small_config(data_dir, train_steps=4), workdir)
    assert again.already_finished and again.step == 4 and again.estimate == done.estimate
    assert done.estimate["step"] == 4 and np.isfinite(done.estimate["val_loss"])


@pytest.mark.slow  # over 10 s on one core: the quick step stays within its budget
def test_fresh_removes_old_tensorboard_events_and_metrics(data_dir, tmp_path):
    workdir = str(tmp_path)
    train.train_and_evaluate(small_config(data_dir, train_steps=2), workdir)
    old_events = set(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
    assert old_events
    time.sleep(1.1)  # event file names carry the second they were opened in
    train.train_and_evaluate(small_config(data_dir, train_steps=2, lr=1e-3), workdir, fresh=True)
    events = set(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
    assert len(events) == 1 and not events & old_events
    assert json.load(open(os.path.join(workdir, "config.json")))["lr"] == 1e-3


def _old_run(workdir, disk=None):
    """A workdir as a finished run leaves it (steps 10 and 20 in checkpoints/, 20 in best/, its record and
    metrics); with `disk`, checkpoints/ and best/ are links to folders there, as for a run kept on a bigger disk."""
    os.makedirs(workdir, exist_ok=True)
    for kind, steps in ((rundir.CHECKPOINTS, (10, 20)), (rundir.BEST, (20,))):
        folder = os.path.join(disk, kind) if disk else os.path.join(workdir, kind)
        for step in steps:
            os.makedirs(os.path.join(folder, str(step), "state"))
            open(os.path.join(folder, str(step), "state", "array"), "w").close()
        if disk:
            os.symlink(folder, os.path.join(workdir, kind))
    for name in (rundir.METRICS, rundir.CONFIG, rundir.DATA):
        open(os.path.join(workdir, name), "w").write("{}\n")


@pytest.mark.fast
def test_fresh_through_linked_checkpoint_folders_deletes_the_steps_and_keeps_the_links(tmp_path):
    """checkpoints/ and best/ linked to another disk: --fresh used to skip them (rmtree refuses a link,
    and its error was ignored) and delete the record, so the "fresh" run resumed at step 20 under a new curve."""
    workdir, disk = str(tmp_path / "run"), str(tmp_path / "disk")
    _old_run(workdir, disk)
    rundir.start_over(workdir)
    for kind in (rundir.CHECKPOINTS, rundir.BEST):
        assert os.path.islink(os.path.join(workdir, kind))  # the next steps still go to the bigger disk
        assert os.listdir(os.path.join(disk, kind)) == [] and _steps(workdir, kind) == []
    assert sorted(os.listdir(workdir)) == [rundir.BEST, rundir.CHECKPOINTS]


def test_fresh_that_cannot_delete_a_step_refuses_and_keeps_the_record(tmp_path, monkeypatch):
    """(Tests run as root, which no permission bit stops, so the refusal is simulated.)"""
    workdir = str(tmp_path / "run")
    _old_run(workdir)

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(path, "20"))
    monkeypatch.setattr(shutil, "rmtree", refuse)
    with pytest.raises(rundir.RunError) as e:
        rundir.start_over(workdir)
    folder = os.path.join(workdir, rundir.CHECKPOINTS)
    assert str(e.value) == (f"--fresh cannot delete {folder}/20 (Permission denied), so the new run would resume from "
                            f"the steps left there; nothing else was deleted: remove {folder} by hand (or make it "
                            "deletable), then run the same command")
    for name in (rundir.METRICS, rundir.CONFIG, rundir.DATA):
        assert os.path.isfile(os.path.join(workdir, name))
    assert _steps(workdir) == [10, 20]


@pytest.mark.slow
def test_fresh_with_a_linked_checkpoints_folder_trains_from_step_0(data_dir, tmp_path):
    workdir, disk = str(tmp_path / "run"), tmp_path / "disk"
    train.train_and_evaluate(small_config(data_dir, train_steps=4, est_interval=2), workdir)
    disk.mkdir()
    shutil.move(os.path.join(workdir, rundir.CHECKPOINTS), disk / "checkpoints")
    os.symlink(disk / "checkpoints", os.path.join(workdir, rundir.CHECKPOINTS))
    outcome = train.train_and_evaluate(small_config(data_dir, train_steps=2, est_interval=2, lr=1e-3), workdir,
                                       fresh=True)
    assert outcome.step == 2 and not outcome.already_finished
    assert sorted(os.listdir(disk / "checkpoints")) == ["2"]
    assert [row["step"] for row in rundir.read_metrics(workdir)[0]] == [1, 2]


def test_a_mistyped_dataset_is_one_line_before_the_workdir_is_made(data_dir, tmp_path):
    """It used to leave a workdir holding only .lock."""
    from aed_jax import data
    workdir = tmp_path / "run"
    with pytest.raises(data.DataError, match=r"^\S+/synht_train\.bin: no such file; make it with python -m "
                                              r"aed_jax\.prepare --input YOUR_CORPUS --out \S+ --name synht "):
        train.train_and_evaluate(small_config(data_dir, dataset="synht"), str(workdir))
    assert not workdir.exists()


def test_a_mistyped_built_in_dataset_suggests_its_name_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "aed_jax.main", "--config=configs/tiny.py",
                             "--config.dataset=wiki_vitl", f"--workdir={tmp_path / 'run'}"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data/wiki_vitl/wiki_vitl_train.bin: no such file; did you mean --config.dataset=wiki_vital? Else make "
        "it with python -m aed_jax.prepare --input YOUR_CORPUS --out data/wiki_vitl --name wiki_vitl (or --hf DATASET "
        "in place of --input)")
    assert not (tmp_path / "run").exists()


# Where the full disk shows: an OSError out of the save, or tensorstore's ValueError (RESOURCE_EXHAUSTED)
# out of orbax's manager, which checkpoint.save turns into the same OSError.
FULL_DISK = {
    "OSError": (checkpoint, "save", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))),
    "tensorstore": (ocp.CheckpointManager, "save", ValueError(
        'RESOURCE_EXHAUSTED: Error writing "params.token_embedding.embedding/0.0" in OCDBT database: '
        '[OS error 28: No space left on device]')),
}


@pytest.mark.parametrize("where", sorted(FULL_DISK))
def test_a_full_disk_during_a_save_is_one_line_and_loses_nothing(data_dir, tmp_path, monkeypatch, where):
    owner, name, error = FULL_DISK[where]
    workdir = str(tmp_path)
    train.train_and_evaluate(small_config(data_dir, train_steps=4, est_interval=2), workdir)
    save = getattr(owner, name)

    def save_on_a_full_disk(first, step, *args, **kwargs):  # first: the manager, or its self
        if step == 6:
            raise error
        return save(first, step, *args, **kwargs)
    monkeypatch.setattr(owner, name, save_on_a_full_disk)
    with pytest.raises(train.TrainError) as e:
        train.train_and_evaluate(small_config(data_dir, train_steps=8, est_interval=2), workdir)
    assert str(e.value) == (f"saving step 6 in {workdir}: No space left on device: free space on its disk (or choose "
                            "another folder), then run the same command to resume (the last finite checkpoint is "
                            f"step 4 in {os.path.join(workdir, 'checkpoints')})")
    monkeypatch.undo()
    assert train.train_and_evaluate(small_config(data_dir, train_steps=8, est_interval=2), workdir).step == 8


def test_an_unwritable_workdir_is_one_line(data_dir, tmp_path, monkeypatch):
    """(Tests run as root, which no permission bit stops, so the refusal is simulated.)"""
    makedirs = os.makedirs

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return makedirs(path, *args, **kwargs)
    monkeypatch.setattr(os, "makedirs", refuse)
    with pytest.raises(rundir.RunError, match=r"^\S+/run: cannot write the workdir \(Permission denied\)$"):
        train.train_and_evaluate(small_config(data_dir, train_steps=2), str(tmp_path / "run"))


def test_sigint_stops_with_a_resume_line_not_a_final_one(config_file, tmp_path):
    workdir = str(tmp_path / "run")
    proc = _launch(config_file, workdir)
    _wait_for_checkpoint(workdir, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "final:" not in out
    saved = rundir.resolve_step(workdir)[1]
    assert f"stopped by SIGINT at step {saved} of 100000, checkpoint saved; run the same command to resume" in out


@pytest.mark.parametrize("when", ["importing", "setting up"])
def test_ctrl_c_while_starting_is_one_line(config_file, tmp_path, when):
    proc = subprocess.Popen([sys.executable, "-m", "aed_jax.main", f"--config={config_file}",
                             f"--workdir={tmp_path / 'run'}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if when == "importing":
        time.sleep(0.3)
    else:  # the run has begun: data, model, restore, compile
        while "devices:" not in proc.stderr.readline():
            assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    if proc.returncode == 0:  # the loop had started: it saved and says how to resume
        assert "stopped by SIGINT" in out
    else:
        assert proc.returncode == 1
        assert err.strip().splitlines()[-1] == ("error: the run was stopped by SIGINT before training began; there "
                                                "was nothing to save")


def test_tensorboard_shows_each_step_once_after_a_resume_as_metrics_jsonl_does(data_dir, tmp_path):
    """A run killed after logging steps it had not saved: the re-run logs them again, and TensorBoard
    (through the purge event) and metrics.jsonl both keep one value a step, the re-run's."""
    from tensorboard.backend.event_processing import event_accumulator
    workdir = str(tmp_path)
    train.train_and_evaluate(small_config(data_dir, train_steps=6, est_interval=4), workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))  # as if killed before step 6's save
    time.sleep(1.1)  # a new event file, as a new process opens
    train.train_and_evaluate(small_config(data_dir, train_steps=6, est_interval=4), workdir)
    logged = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        row = json.loads(line)
        logged.setdefault(row.pop("step"), {}).update(row)
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]
    events = event_accumulator.EventAccumulator(workdir)
    events.Reload()
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([e.value for e in loss], [logged[s]["loss"] for s in range(1, 7)], rtol=1e-6)
    assert [e.step for e in events.Scalars("val_loss")] == [4, 6]


@pytest.mark.parametrize("name", [rundir.CHECKPOINTS, rundir.BEST, rundir.DAMAGED])
@pytest.mark.fast
def test_a_file_where_the_run_keeps_a_folder_is_one_line_before_training(data_dir, tmp_path, name):
    workdir = str(tmp_path)
    (tmp_path / name).write_text("not a folder")
    with pytest.raises(rundir.RunError, match=rf"^{tmp_path / name} is not a folder, and the run keeps its {name} "
                                              r"checkpoints there: move it away, then run the same command$"):
        train.train_and_evaluate(small_config(data_dir, train_steps=2), workdir)
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))  # said before any step, not at the save


def test_a_step_a_kill_left_beyond_keep_checkpoints_goes_at_the_next_save(tmp_path):
    """A kill between a new step landing and the oldest's deletion leaves keep + 1 steps; the next save
    (orbax's max_to_keep, over every step it finds) brings them back to keep."""
    import ml_collections
    config, state = ml_collections.ConfigDict({"a": 1}), {"x": np.ones(3, np.float32)}
    folder = str(tmp_path / rundir.CHECKPOINTS)
    for step in (2, 4, 6, 8):  # keep 3, and the kill: 8 landed, 2 still there
        checkpoint.save(checkpoint.manager(folder, keep=10), step, state, config)
    saves = checkpoint.manager(folder, keep=3)
    assert saves.all_steps() == [2, 4, 6, 8]
    checkpoint.save(saves, 10, state, config)
    assert sorted(saves.all_steps()) == [6, 8, 10] and sorted(os.listdir(folder)) == ["10", "6", "8"]
