"""A real full disk under the trainer, not a faked exception: a few-MB tmpfs where the tests may mount
one (root with CAP_SYS_ADMIN), and everywhere a file-size limit (RLIMIT_FSIZE, whose writes fail with
EFBIG as a full disk's fail with ENOSPC). Each ends in one `error:` line naming the path and the
remedy, leaves no half-written step behind and loses no intact checkpoint."""
import os
import subprocess
import sys
import tempfile

import pytest

from aed_jax import rundir
from test_train import ROOT, data_dir, small_config  # noqa: F401

pytestmark = pytest.mark.slow


def _config_file(path, data_dir, **overrides):  # noqa: F811
    c = small_config(data_dir, **overrides)
    path.write_text(f"import ml_collections\n\n\ndef get_config():\n    return ml_collections.ConfigDict({c.to_dict()!r})\n")
    return str(path)


def _command(module, *args, no_file_growth=False):
    """`python -m aed_jax.<module> args`; (exit code, stderr lines that are not absl's INFO/WARNING log,
    stderr). no_file_growth: under a file-size limit of 0 bytes (RLIMIT_FSIZE, set by the shell, SIGXFSZ
    ignored so that a write past it fails with EFBIG instead of killing the process)."""
    command = [sys.executable, "-m", f"aed_jax.{module}", *args]
    if no_file_growth:
        command = ["bash", "-c", 'trap "" XFSZ; ulimit -f 0; exec "$@"', "bash", *command]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if no_file_growth:  # its own compilation cache: entries cut short by the limit stay out of the suite's
        env["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="aed_jax_xla_cache_")
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in proc.stderr.splitlines() if not line[:1] in "IW" or not line[1:5].isdigit()]
    return proc.returncode, lines, proc.stderr


def _train(config, workdir, no_file_growth=False):
    """`python -m aed_jax.main` to the end (`_command`)."""
    return _command("main", f"--config={config}", f"--workdir={workdir}", "--sample_tokens=0",
                    no_file_growth=no_file_growth)


def _no_debris(workdir):
    for kind in (rundir.CHECKPOINTS, rundir.BEST):
        folder = os.path.join(workdir, kind)
        assert not [name for name in os.listdir(folder) if not name.isdigit()], os.listdir(folder)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs, or a skip where this machine does not let the tests mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN); the RLIMIT_FSIZE test covers it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_that_fills_during_training(small_disk, tmp_path, data_dir):  # noqa: F811
    config = _config_file(tmp_path / "c.py", data_dir, train_steps=400, est_interval=4)
    workdir = str(small_disk / "run")
    for attempt in range(2):  # the re-run, on the still full disk, ends the same way and loses nothing
        code, lines, stderr = _train(config, workdir)
        assert code == 1 and "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
        assert lines[0].startswith("error: saving step ") and lines[0].endswith(")"), lines
        assert ": No space left on device: free space on its disk (or choose another folder), then run the same " \
               "command to resume (the last finite checkpoint is step " in lines[0]
        _no_debris(workdir)
        params, _, step = rundir.restore_params(workdir)
        assert f"the last finite checkpoint is step {step} in" in lines[0] and step >= 4


def test_a_file_size_limit_on_a_resumed_run(tmp_path, data_dir):  # noqa: F811
    """The first write of the re-run that grows a file (its metrics.jsonl, its lock, a save) goes past a
    0-byte file-size limit: one line naming the path and the remedy; the first run's checkpoint restores."""
    workdir = str(tmp_path / "run")
    assert _train(_config_file(tmp_path / "c4.py", data_dir, train_steps=4, est_interval=4), workdir)[0] == 0
    code, lines, stderr = _train(_config_file(tmp_path / "c8.py", data_dir, train_steps=8, est_interval=4), workdir,
                                 no_file_growth=True)
    assert code == 1 and "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(f"error: {workdir}") and lines[0].endswith(
        ": File too large: free space on its disk (or choose another folder), then run the same command to resume"), \
        lines
    assert rundir.restore_params(workdir)[2] == 4
    _no_debris(workdir)


def test_analyze_and_prepare_with_no_room_are_one_line_and_write_nothing(tmp_path, data_dir):  # noqa: F811
    """The report writers under the same 0-byte file-size limit: one line naming where and what to do,
    and no file half-written (each appears whole or not at all)."""
    workdir = str(tmp_path / "run")
    assert _train(_config_file(tmp_path / "c.py", data_dir, train_steps=2, est_interval=2), workdir)[0] == 0
    out = tmp_path / "report"
    code, lines, stderr = _command("analyze", f"--workdir={workdir}", "--windows=4", "--noablations", f"--out={out}",
                                   no_file_growth=True)
    assert code == 1 and "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(f"error: --out {out}: File too large: free space on its disk (or choose another "
                               "folder), then run the same command again"), lines  # refused before any work
    assert not [p for p in out.iterdir() if p.stat().st_size] if out.exists() else True
    (tmp_path / "corpus.txt").write_text("Some text to tokenize. " * 2000)
    code, lines, stderr = _command("prepare", f"--input={tmp_path / 'corpus.txt'}", f"--out={tmp_path / 'tokens'}",
                                   no_file_growth=True)
    assert code == 1 and "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    assert ": File too large: free space on its disk (or choose another folder), then run the same command " \
           "again" in lines[0], lines
    assert not list((tmp_path / "tokens").glob("*.bin"))
