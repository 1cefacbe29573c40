"""prepare killed or stopped at the worst moments: the folder keeps its complete old files or gets
the complete new ones, no worker process outlives prepare, and the next run leaves no litter.

Each test runs prepare in a child process that stops itself at a chosen moment (a monkeypatched
os.rename/os.replace that SIGKILLs it, or a pause after the first encoded block while we signal it).
"""
import contextlib
import fcntl
import glob
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from aed_jax import config as config_lib
from aed_jax import data, prepare

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads processes from /proc")

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "mine"
OURS = ["meta.json", f"{NAME}_train.bin", f"{NAME}_val.bin"]
CHILD = r"""
import json, os, signal, sys, time
from absl import flags
from aed_jax import cli
from aed_jax import prepare

args = json.loads(sys.argv[1])
if "kill_before" in args:  # [function, n]: SIGKILL this process just before the n-th call of os.<function>
    function, n = args["kill_before"]
    real, calls = getattr(os, function), []

    def dying(*a, **k):
        calls.append(a)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)

    setattr(os, function, dying)
if "pause" in args:  # two workers on small blocks; after the first block, say so and wait for the go file
    prepare._BLOCK_CHARS = 2000
    prepare._worker_count = lambda total: 2
    encoded = prepare._encoded

    def paused(blocks, workers):
        for i, item in enumerate(encoded(blocks, workers)):
            yield item
            if i == 0:
                open(args["pause"], "w").close()
                while not os.path.exists(args["go"]):
                    time.sleep(0.02)

    prepare._encoded = paused
prepare.define_flags()
cli.reporting(prepare.main)(flags.FLAGS(["prepare", *args["argv"]]))
"""


def corpus(path: pathlib.Path, word: str) -> str:
    """About 40,000 characters of short lines: many blocks of 2,000 characters."""
    path.write_text("".join(f"{word} line {i}, with a few words.\n" for i in range(1200)), encoding="utf-8")
    return str(path)


@pytest.fixture
def folders(tmp_path):
    """An --out folder holding the old corpus's files and a user's own files, and the files the new
    corpus gives (prepared elsewhere); returns (out, new input, {"old": files, "new": files})."""
    old_input, new_input = corpus(tmp_path / "old.txt", "Old"), corpus(tmp_path / "new.txt", "New")
    out, reference = tmp_path / "out", tmp_path / "reference"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    (out / "train.bin").write_bytes(b"\x01\x00" * 50)  # nanoGPT's name: not ours, never touched
    prepare.prepare_input(old_input, str(out), NAME, progress=False)
    prepare.prepare_input(new_input, str(reference), NAME, progress=False)
    expected = {"old": ours(out), "new": ours(reference)}
    assert expected["old"] != expected["new"]
    return out, new_input, expected


def ours(folder: pathlib.Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OURS}


def read_through_data(out: pathlib.Path) -> dict[str, bytes]:
    """What a reader gets: data.split_paths's two files and the meta.json beside them."""
    config = config_lib.base_config("baseline")
    config.dataset, config.data_dir = NAME, str(out)
    train_path, val_path = data.split_paths(config)
    assert (train_path, val_path) == (str(out / OURS[1]), str(out / OURS[2]))
    return ours(out)


def check_next_run(out: pathlib.Path, new_input: str, expected: dict) -> None:
    """The next run gives the new files and leaves only them beside the user's: no hidden folder."""
    prepare.prepare_input(new_input, str(out), NAME, progress=False)
    assert sorted(os.listdir(out)) == sorted(OURS + ["notes.txt", "train.bin"])
    assert ours(out) == expected["new"]
    assert (out / "notes.txt").read_text() == "the user's" and (out / "train.bin").read_bytes() == b"\x01\x00" * 50
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train"]["file"] == OURS[1] and meta["val"]["file"] == OURS[2]


def start_child(out: pathlib.Path, new_input: str, **args) -> subprocess.Popen:
    args["argv"] = ["--input", new_input, "--out", str(out), "--name", NAME]
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# Renames in order: the finished staging folder to the commit folder (the commit point), then
# each file out of it, in name order: meta.json, mine_train.bin, mine_val.bin.
@pytest.mark.parametrize("kill_before, survivor", [
    (["rename", 1], "old"),  # every file written, not committed
    (["replace", 1], "new"),  # committed, nothing moved yet
    (["replace", 2], "new"),  # the new meta.json beside the old .bin files
    (["replace", 3], "new"),  # the new meta.json and train file beside the old val file
], ids=["before-commit", "committed", "meta-moved", "meta-and-train-moved"])
def test_killed_between_renames(folders, kill_before, survivor):
    out, new_input, expected = folders
    child = start_child(out, new_input, kill_before=kill_before)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL and stdout == stderr == ""
    assert read_through_data(out) == expected[survivor]
    check_next_run(out, new_input, expected)


def children(pid: int) -> set[int]:
    """The pids of pid's child processes (every thread's)."""
    found = set()
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError), open(path) as f:
            found.update(int(child) for child in f.read().split())
    return found


def running(pid: int) -> bool:
    """pid exists and is not a zombie (one whose parent has not reaped it yet is dead too)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_stopped_while_encoding_with_workers(folders, tmp_path, sig):
    out, new_input, expected = folders
    pause, go = tmp_path / "paused", tmp_path / "go"
    child = start_child(out, new_input, pause=str(pause), go=str(go))
    deadline = time.monotonic() + 120
    while not pause.exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never got to its first block"
        time.sleep(0.05)
    workers = children(child.pid)
    assert len(workers) >= 2  # the two workers (and multiprocessing's resource tracker)
    assert any(name.startswith(".prepare-") for name in os.listdir(out))  # the files being written
    os.kill(child.pid, sig)
    go.touch()
    stdout, stderr = child.communicate(timeout=120)
    deadline = time.monotonic() + 10
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if running(pid)], "worker processes outlived prepare"
    if sig != signal.SIGKILL:  # stopped at the next block: cleaned up, one line
        assert child.returncode == 1 and stdout == ""
        assert stderr == f"error: prepare stopped by {sig.name}; {out} keeps the files it had\n"
        assert sorted(os.listdir(out)) == sorted(OURS + ["notes.txt", "train.bin"])
    else:  # nothing to say but multiprocessing's resource tracker, which frees the pool's semaphores
        assert child.returncode == -signal.SIGKILL and stdout == ""
        assert all("resource_tracker" in line for line in stderr.splitlines()[::2]), stderr
    assert read_through_data(out) == expected["old"]
    check_next_run(out, new_input, expected)


def test_a_second_prepare_into_the_same_folder_is_refused(folders):
    out, new_input, expected = folders
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running prepare holds it
        with pytest.raises(data.DataError, match=f"^{out}: another prepare is writing this folder"):
            prepare.prepare_input(new_input, str(out), NAME, progress=False)
    finally:
        os.close(fd)
    assert ours(out) == expected["old"]
    check_next_run(out, new_input, expected)


def test_workers_import_neither_grain_nor_jax():
    """Each worker imports prepare's module afresh (spawn): it must stay small (tens of MB, not hundreds)."""
    result = subprocess.run([sys.executable, "-c", "import sys, aed_jax.prepare; "
                             "print(sorted(m for m in ('grain', 'jax', 'orbax') if m in sys.modules))"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"
