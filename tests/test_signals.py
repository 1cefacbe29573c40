"""SIGTERM and Ctrl-C to every command, at a few phases of its life: one line and a truthful exit code,
never a silent death by the signal or a traceback.

The phases are read from the process itself, not guessed with sleeps (conftest's `stop_command`):
"start" is the moment its own SIGTERM handler is in place, so its libraries are still loading;
"working" is once a library function of its work has been called (jax loaded, the checkpoint or
config read, the program about to compile and run). The trainer's own phases (before, during and
after training) are tests/test_train.py's and test_multihost.py's; prepare's are
test_prepare_faults.py's; analyze's and evaluate's writing phases are their own files'.
"""
import os
import signal

import numpy as np
import pytest

from aed_jax import api
from aed_jax import config as config_lib
from aed_jax import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small GPT-2-vocabulary AED's checkpoint and a token folder beside it (no training needed)."""
    import jax
    root = tmp_path_factory.mktemp("signals")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 40_000), ("val", 40_000)):
        rng.integers(0, 50257, n).astype(np.uint16).tofile(data / f"{split}.bin")
    c = config_lib.load(os.path.join(ROOT, "configs", "tiny.py"))
    c.data_dir = str(data)
    model = model_lib.make_model(model_lib.ModelConfig.from_config(c))
    api.save_params(str(root / "run"), model_lib.init_params(model, jax.random.key(0)), c, 0)
    return root


# Each command, the line it ends with, and a function of its work to pause in (None: it trains or
# draws only once it has checked everything, which the "start" phase covers).
COMMANDS = {
    "evaluate": (["aed_jax.evaluate", "--workdir={run}/run", "--batches=2"], "before it printed its numbers",
                 ("aed_jax.metrics", "evaluate")),
    "sample": (["aed_jax.sample", "--workdir={run}/run", "--max_new_tokens=4"], "nothing was written",
               ("aed_jax.decoding", "generate")),
    "analyze": (["aed_jax.analyze", "--workdir={run}/run", "--out={run}/analysis", "--windows=20"], "it wrote nothing",
                ("aed_jax.analysis", "analyze_run")),
    "summary": (["aed_jax.summary", "--config=configs/tiny.py"], "nothing was written",
                ("aed_jax.model", "ModelConfig.from_config")),
    "interop": (["aed_jax.interop", "export", "--workdir={run}/run", "--out={run}/export/model.npz"],
                "what it writes appears whole or not at all", ("aed_jax.reference", "export")),
    "bench": (["aed_jax.bench", "--config=configs/tiny.py", "--steps=2"], "nothing was written",
              ("aed_jax.benchmark", "run")),
    "compare": (["experiments.compare", "--workdir={run}/run"], "each file is written whole or not at all", None),
    "plot": (["experiments.plot", "--suite=smoke", "--out={run}"], "each figure is written whole or not at all", None),
    "reproduce": (["experiments.reproduce", "--suite=smoke", "--out={run}/suite"], "no run had started", None),
}


def _assert_stopped(returncode, stderr, command, sig, what_stays):
    lines = stderr.strip().splitlines()
    assert returncode == 1, (returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert lines[-1].startswith(f"error: {command} was stopped by {sig.name}") and what_stays in lines[-1], lines[-3:]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_signal_while_a_command_starts_is_one_line_and_exit_1(run, stop_command, command, sig):
    argv, what_stays, _ = COMMANDS[command]
    returncode, _, stderr = stop_command([a.format(run=run) for a in argv], sig)
    _assert_stopped(returncode, stderr, command, sig, what_stays)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(name for name, (_, _, pause) in COMMANDS.items() if pause))
def test_sigterm_while_a_command_works_is_one_line_and_exit_1(run, stop_command, command):
    argv, what_stays, (module, function) = COMMANDS[command]
    returncode, _, stderr = stop_command([a.format(run=run) for a in argv], signal.SIGTERM,
                                         pause=(module, function, "before"))
    _assert_stopped(returncode, stderr, command, signal.SIGTERM, what_stays)
