"""Two processes on localhost, as a cluster runs them: `--distributed`, the JAX_* variables, CPU
collectives through gloo, one shared workdir.

Checked against one process with the same global batch: the same losses, resumes across process
counts, SIGTERM to one or every process, and a dead peer.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from test_train import ROOT, data_dir, small_config  # noqa: F401

pytestmark = pytest.mark.slow
STEPS = 8  # estimates and checkpoints at 4 and 8


@pytest.fixture(scope="module")
def config_file(data_dir, tmp_path_factory):  # noqa: F811
    c = small_config(data_dir, train_steps=STEPS)
    c.model_config.update(dict(n_embed=64, alphabet_size=128))  # arrays big enough for FSDP to split
    path = tmp_path_factory.mktemp("config") / "small.py"
    path.write_text("import ml_collections\n\n\ndef get_config():\n"
                    f"    return ml_collections.ConfigDict({c.to_dict()!r})\n")
    return str(path)


def _free_port(low: int = 20000, high: int = 65535) -> int:
    """A port in [low, high] that is free now, drawn at random: two test sessions on one machine (or
    one started right after another) must not both take the first free one and meet each other's
    coordinator."""
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def _cluster_env(n: int, slurm: bool) -> dict:
    """What every process of n is told of the cluster: by the JAX_* variables, or as SLURM tells it
    (the coordinator's port then follows from the job id)."""
    if slurm:
        return dict(SLURM_JOB_ID=str(_free_port(61440, 65535) - 61440), SLURM_STEP_NODELIST="localhost",
                    SLURM_NTASKS=str(n))
    return dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES=str(n))


def _process_env(p: int, slurm: bool) -> dict:
    return dict(SLURM_PROCID=str(p), SLURM_LOCALID=str(p)) if slurm else dict(JAX_PROCESS_ID=str(p))


class Run:
    """`n` processes of `python -m aed_jax.main ... --distributed` (one plain process when n is 1),
    their output in files beside the workdir (pipes could fill and block a process)."""

    def __init__(self, config_file, workdir, n, *flags, slurm=False, devices=1, sample_tokens=0, started=None):
        self.logs, self.procs = [], []
        cluster = _cluster_env(n, slurm) if n > 1 else {}
        for p in range(n if started is None else started):
            env = dict(os.environ, **cluster, **(_process_env(p, slurm) if n > 1 else {}), JAX_PLATFORMS="cpu",
                       XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
            out, err = f"{workdir}.out{p}", f"{workdir}.err{p}"
            self.logs.append((out, err))
            with open(out, "w") as o, open(err, "w") as e:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "aed_jax.main", f"--config={config_file}", f"--workdir={workdir}",
                     f"--sample_tokens={sample_tokens}", *(["--distributed"] if n > 1 else []), *flags],
                    cwd=ROOT, env=env, stdout=o, stderr=e))

    def wait(self, timeout=240) -> list[int]:
        deadline = time.time() + timeout
        try:
            return [p.wait(max(1, deadline - time.time())) for p in self.procs]
        finally:
            for p in self.procs:
                p.kill()

    def out(self, p) -> str:
        return open(self.logs[p][0]).read()

    def err(self, p) -> str:
        return open(self.logs[p][1]).read()


def _metrics(workdir) -> dict[int, dict]:
    rows = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        row = json.loads(line)
        rows.setdefault(row.pop("step"), {}).update(row)
    return rows


def _assert_same_losses(got, expected, steps):
    for step in steps:
        for key in ("loss", "ce", "train_loss", "val_loss"):
            if key in expected[step]:
                assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5), (step, key)


@pytest.fixture(scope="module")
def runs(config_file, tmp_path_factory):
    """A one-process run and a two-process run of the same config, each to STEPS."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for n in (1, 2):
        workdir = str(root / f"{n}p")
        # The two processes end as the README's recipe does, with the closing samples: process 0 reads the
        # checkpoint alone, which must not wait for process 1 at orbax's barriers (it used to, 5 minutes).
        run = Run(config_file, workdir, n, slurm=True, sample_tokens=8)  # the resumes below use the JAX_* variables
        assert run.wait() == [0] * n, run.err(0)[-3000:]
        out[n] = (workdir, run)
    return out


def test_two_processes_train_as_one(runs):
    (one, _), (two, run) = runs[1], runs[2]
    assert "devices: 2 x cpu (2 processes)" in run.err(0)  # joined through the SLURM variables
    _assert_same_losses(_metrics(two), _metrics(one), range(1, STEPS + 1))
    assert "final: train loss" in run.out(0) and "step 4: train loss" in run.out(0)
    assert run.out(1) == ""  # process 0 alone reports; gloo's connection lines go to stderr
    assert run.err(1) == ""  # nor its log: process 0 speaks for the job
    assert "[Gloo] Rank 0 is connected" in run.err(0) and "[Gloo]" not in run.out(0)
    assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["4", "8"]


def test_the_readmes_by_hand_recipe_ends_with_exit_0(config_file, tmp_path):
    """The README's recipe as written: the JAX_* variables, --distributed, and the closing samples at their
    default length (this small model's vocabulary is not GPT-2's, so process 0 reads the checkpoint alone
    and says it cannot continue text: the read is what used to wait for process 1 and abort)."""
    run = Run(config_file, str(tmp_path / "run"), 2, sample_tokens=40)
    assert run.wait(timeout=240) == [0, 0], run.err(0)[-3000:]
    assert "final: train loss" in run.out(0) and run.out(1) == "" and run.err(1) == ""
    assert "no continuations printed" in run.err(0)


def _truncated_copy(workdir, target):
    """`workdir` as it was at step 4: a run to resume."""
    shutil.copytree(workdir, target, ignore=shutil.ignore_patterns(".lock"))
    for kind in ("checkpoints", "best"):
        shutil.rmtree(os.path.join(target, kind, "8"), ignore_errors=True)
    return target


@pytest.mark.parametrize("before,after", [(2, 2), (2, 1), (1, 2)])
def test_resume_with_any_number_of_processes(runs, config_file, tmp_path, before, after):
    """The stream's position and the state are global: a checkpoint of 2 processes resumes in 1 or 2,
    one of 1 in 2, and steps 5-8 are those of the straight run."""
    workdir = _truncated_copy(runs[before][0], str(tmp_path / "run"))
    run = Run(config_file, workdir, after)
    assert run.wait() == [0] * after, run.err(0)[-3000:]
    assert "resuming from step 4" in run.err(0)
    _assert_same_losses(_metrics(workdir), _metrics(runs[1][0]), range(1, STEPS + 1))


def test_fsdp_over_two_processes_saves_shards_any_mesh_restores(runs, config_file, tmp_path):
    """2 processes x 2 devices with every array split 4 ways: the same steps 5-8, and each process
    writes its own shards of a checkpoint that one process on one device restores and verifies."""
    workdir = _truncated_copy(runs[2][0], str(tmp_path / "run"))
    run = Run(config_file, workdir, 2, "--config.mesh_data=1", "--config.mesh_fsdp=-1", devices=2)
    assert run.wait() == [0, 0], run.err(0)[-3000:]
    assert "mesh: data 1 x fsdp 4" in run.err(0) and "resuming from step 4" in run.err(0)
    _assert_same_losses(_metrics(workdir), _metrics(runs[1][0]), range(1, STEPS + 1))
    check = Run(config_file, workdir, 1)
    assert check.wait() == [0], check.err(0)[-3000:]
    assert f"is already finished at step {STEPS}" in check.out(0)  # restored and verified first
    assert "damaged" not in check.err(0)


def _until(run, ready, timeout=180) -> None:
    """Waits until `ready()`, every process still running meanwhile (else the end of each one's log)."""
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline and all(p.poll() is None for p in run.procs), \
            [(p, run.procs[p].poll(), run.err(p)[-1500:]) for p in range(len(run.procs))]
        time.sleep(0.05)


def _training(run, workdir, timeout=180):
    """`run` once training has begun (its first metrics are written)."""
    metrics = os.path.join(workdir, "metrics.jsonl")
    _until(run, lambda: os.path.exists(metrics) and os.path.getsize(metrics), timeout)
    return run


def _start_long_run(config_file, workdir):
    return _training(Run(config_file, workdir, 2, "--config.train_steps=100000", "--config.est_interval=50000"),
                     workdir)


@pytest.mark.parametrize("signalled", [(1,), (0, 1)])
def test_sigterm_saves_one_step_every_process_agrees_on(config_file, tmp_path, signalled):
    workdir = str(tmp_path / "run")
    run = _start_long_run(config_file, workdir)
    for p in signalled:
        run.procs[p].send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == [0, 0], run.err(0)[-3000:]
    [step] = os.listdir(os.path.join(workdir, "checkpoints"))
    assert f"checkpoint saved at step {step}, exiting" in run.err(0) and run.err(1) == ""
    reason = "SIGTERM" if 0 in signalled else "a signal to another process"
    assert f"stopped by {reason} at step {step} of 100000, checkpoint saved" in run.out(0)


def test_a_dead_peer_is_one_line_not_a_hang(config_file, tmp_path):
    workdir = str(tmp_path / "run")
    run = _start_long_run(config_file, workdir)
    run.procs[1].kill()
    start = time.time()
    assert run.wait(timeout=120)[0] == 1
    assert time.time() - start < 60
    err = run.err(0)
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: process 0 of 2 lost contact with the others (")


def test_of_three_processes_one_dead_ends_both_others_in_one_line(config_file, tmp_path):
    """Process 2 killed while the others train and save every step: processes 0 and 1 each exit 1 with
    their own line (process 1 must not be ended by jax's abort when process 0, which hosts the
    coordination service, exits)."""
    workdir = str(tmp_path / "run")
    run = _training(Run(config_file, workdir, 3, "--config.train_steps=100000", "--config.batch_size=6",
                        "--config.gradient_accumulation_steps=1", "--config.est_interval=1", "--config.est_steps=1"),
                    workdir, timeout=240)
    run.procs[2].kill()
    start = time.time()
    assert run.wait(timeout=120)[:2] == [1, 1], [run.err(p)[-1500:] for p in (0, 1)]
    assert time.time() - start < 60
    for p in (0, 1):
        assert _last_line(run, p).startswith(f"error: process {p} of 3 lost "), run.err(p)[-1500:]


def _wait_for(run, p, text, timeout=180):
    _until(run, lambda: text in run.err(p), timeout)


def _last_line(run, p) -> str:
    err = run.err(p)
    assert "Traceback" not in err and "Fatal" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("victim", [0, 1])
def test_sigterm_before_training_ends_every_process_in_one_line(config_file, tmp_path, victim):
    """SIGTERM to either process once every process has joined, before training begins: both exit 1, each
    with one line, the other naming why, in seconds (it used to wait 5 minutes, then abort)."""
    run = Run(config_file, str(tmp_path / "run"), 2)
    _wait_for(run, 0, "devices: 2 x cpu (2 processes)")  # every process joined; the trainer is setting up
    run.procs[victim].send_signal(signal.SIGTERM)
    start = time.time()
    assert run.wait(timeout=120) == [1, 1]
    assert time.time() - start < 30
    assert _last_line(run, victim) == (f"error: process {victim} was stopped by SIGTERM before training began; "
                                       "there was nothing to save")
    other = 1 - victim
    assert _last_line(run, other) == (f"error: process {other} of 2: process {victim} was stopped by SIGTERM before "
                                      "training began; there was nothing to save; start every process again with "
                                      "the same command")
    assert not os.path.exists(os.path.join(str(tmp_path / "run"), "checkpoints", "1"))


@pytest.mark.parametrize("victim", [0, 1])
@pytest.mark.parametrize("when", ["importing", "joined"])
def test_a_process_dead_while_starting_ends_the_other_in_one_line(config_file, tmp_path, victim, when):
    """kill -9 of either process before it joined (the other gives up after --join_timeout, one line) or
    after: the survivor notices within STALE_S, one line. Process 0 too: the coordination service lives
    in a process of its own that outlives it (jax's client would otherwise abort process 1 at once)."""
    run = Run(config_file, str(tmp_path / "run"), 2, "--join_timeout=10")
    if when == "importing":
        time.sleep(0.5)
    else:
        _wait_for(run, 0, "devices: 2 x cpu (2 processes)")
    run.procs[victim].kill()
    start = time.time()
    survivor = 1 - victim
    assert run.wait(timeout=120)[survivor] == 1
    assert time.time() - start < 45  # jax's own: 100 s (heartbeat) or 300 s (joining), then an abort
    line = _last_line(run, survivor)
    assert line.startswith("error: --distributed: not every process joined within 10 s" if when == "importing" else
                           f"error: process {survivor} of 2 lost "), line


@pytest.mark.parametrize("after", [1.0, 2.5])
def test_a_peer_dead_while_the_other_saves_is_one_line_in_seconds(config_file, tmp_path, after):
    """A save every step, so that process 1 dies while process 0 is in orbax's save barriers or a step."""
    run = Run(config_file, str(tmp_path / "run"), 2, "--config.train_steps=100000", "--config.est_interval=1",
              "--config.est_steps=1")
    _wait_for(run, 0, "saved checkpoint at step 1")
    time.sleep(after)
    run.procs[1].kill()
    start = time.time()
    assert run.wait(timeout=120)[0] == 1
    assert time.time() - start < 45
    assert _last_line(run, 0).startswith("error: process 0 of 2 lost ")


def _at_the_end(config_file, tmp_path) -> "Run":
    """A two-process run once process 0 has printed its last losses: training has ended, process 0 reads
    the checkpoint for its closing samples, process 1 waits in the last barrier."""
    run = Run(config_file, str(tmp_path / "run"), 2, sample_tokens=40)
    _until(run, lambda: "final: train loss" in run.out(0))
    return run


def test_a_peer_dead_after_training_is_one_line_not_jaxs_shutdown_wait(config_file, tmp_path):
    """Process 1 killed while process 0 does its closing work: process 0 says so in a line within seconds
    and that the checkpoints are complete, where it used to wait in jax's shutdown barrier for 100 s and abort."""
    run = _at_the_end(config_file, tmp_path)
    run.procs[1].kill()
    start = time.time()
    assert run.wait(timeout=120)[0] == 1
    assert time.time() - start < 45
    line = _last_line(run, 0)
    assert line.startswith("error: process 0 of 2 lost process 1 ") and \
        line.endswith("Training had ended: the workdir's checkpoints are complete"), line


@pytest.mark.parametrize("victim", [0, 1])
def test_sigterm_after_training_ends_every_process_with_exit_0(config_file, tmp_path, victim):
    """SIGTERM to either process during the closing work: the run is complete, so every process goes
    through the last barrier and jax's shutdown and exits 0, the signalled one saying so in a line."""
    run = _at_the_end(config_file, tmp_path)
    run.procs[victim].send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == [0, 0], [run.err(p)[-1500:] for p in (0, 1)]
    assert _last_line(run, victim) == (f"process {victim} was stopped by SIGTERM after training ended; its "
                                       "checkpoints are saved")
    assert run.err(1) == ("" if victim == 0 else _last_line(run, 1) + "\n")


def test_a_taken_coordinator_port_is_one_line(config_file, tmp_path):
    """Process 0's coordination service cannot listen where JAX_COORDINATOR_ADDRESS says (another job holds
    the port): one line naming the address and what to do, at once."""
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0",
                   JAX_PLATFORMS="cpu")
        result = subprocess.run([sys.executable, "-m", "aed_jax.main", f"--config={config_file}",
                                 f"--workdir={tmp_path / 'run'}", "--distributed"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: --distributed: the coordination service cannot listen at [::]:{port} ("), \
        result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_process_that_never_joins_is_one_line_after_the_join_timeout(config_file, tmp_path):
    run = Run(config_file, str(tmp_path / "run"), 2, "--join_timeout=5", started=1)  # process 1 never starts
    assert run.wait(timeout=120) == [1]
    assert _last_line(run, 0) == ("error: --distributed: not every process joined within 5 s (--join_timeout); one "
                                  "may have failed to start or died while starting (see its log). Start every "
                                  "process again with the same command")


def test_the_installed_jax_is_one_the_multi_process_path_is_declared_for(monkeypatch):
    """An untested jax is one line at the start of a --distributed run, not a failure mid-job; the jax this
    suite runs on must be a declared one, so an upgrade past the range fails here first."""
    from aed_jax import cluster
    cluster.check_jax()  # the installed jax: declared, with both private names
    monkeypatch.delenv("AED_JAX_UNTESTED_JAX", raising=False)
    with pytest.raises(cluster.ClusterError, match=r"^--distributed is tested on jax 0\.8\.1 to 0\.11 \(excluded\), "
                                                   r"not 0\.11\.0: install a tested one .*AED_JAX_UNTESTED_JAX=1"):
        cluster.check_jax("0.11.0")
    with pytest.raises(cluster.ClusterError, match="not 0.8.0"):
        cluster.check_jax("0.8.0")
    monkeypatch.setenv("AED_JAX_UNTESTED_JAX", "1")
    cluster.check_jax("0.11.0")  # tried anyway: the names are there
    monkeypatch.delattr(cluster.distributed._jax, "get_distributed_runtime_service")
    with pytest.raises(cluster.ClusterError, match=r"needs jax\._src\.distributed\._jax\.get_distributed_runtime_"
                                                   r"service, which jax 0\.11\.0 lacks"):
        cluster.check_jax("0.11.0")
