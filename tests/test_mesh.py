"""The (data, fsdp) mesh: the sharded step is the same function, and checkpoints move between meshes.

The equivalence checks run in one subprocess with 8 virtual CPU devices (XLA_FLAGS must be set
before jax starts, and this test process has started it with one).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from aed_jax import config as config_lib
from aed_jax import mesh as mesh_lib
from test_train import ROOT

MESHES = ((8, 1), (4, 2), (2, 4), (1, 8))

EIGHT_DEVICES = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from aed_jax import checkpoint, config as config_lib, mesh as mesh_lib, model as model_lib, optim, rundir, train

    def small(model_type):
        c = config_lib.base_config(model_type)
        c.model_config.update(dict(n_embed=64, n_head=2, n_layer=2, context_size=16, alphabet_size=128))
        c.batch_size, c.gradient_accumulation_steps = 8, 2
        return c

    def host(tree):
        return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))

    out = {}
    x = np.random.default_rng(0).integers(0, 128, (16, 17)).astype(np.int32)
    for model_type in ("aed", "baseline"):
        c = small(model_type)
        model, opt = model_lib.from_config(c), optim.make_optimizer(c)
        state0 = host(train.init_state(jax.random.key(0), model=model, optimizer=opt))
        results = {}
        for data, fsdp in [(1, 1)] + [tuple(m) for m in json.loads(sys.argv[1])]:
            c.mesh_data, c.mesh_fsdp = data, fsdp
            mesh = mesh_lib.make_mesh(c, jax.devices()[:data * fsdp])
            shardings = jax.tree_util.tree_map(lambda a: a.sharding, train.abstract_state(model, opt, mesh))
            state = jax.device_put(state0, shardings)
            batch = mesh_lib.to_global(mesh, {"x": x[:, :-1], "y": x[:, 1:]})
            step = train.compile_train_step(c, model, opt, mesh)
            params, opt_state, metrics = step(state["params"], state["opt_state"], batch, jax.random.key(1),
                                              optim.step_learning_rate(c)(0))
            sharded = [a for a in jax.tree_util.tree_leaves((params, opt_state))
                       if a.sharding.shard_shape(a.shape) != a.shape]
            results[f"{data}x{fsdp}"] = {
                "loss": float(metrics["loss"]), "params": host(params),
                "sharded_arrays": len(sharded), "devices": len(params["token_embedding"]["embedding"].sharding.device_set),
                "kept_sharding": all(a.sharding == b for a, b in zip(jax.tree_util.tree_leaves(params),
                                                                     jax.tree_util.tree_leaves(shardings["params"]))),
                "state_bytes_per_device": mesh_lib.bytes_per_device((params, opt_state))}
            if (data, fsdp) == (4, 2):
                saved = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}  # the trainer saves the step it reached
        one = results.pop("1x1")
        out[model_type] = {
            name: {"loss_diff": abs(r["loss"] - one["loss"]),
                   "param_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(
                       jax.tree_util.tree_leaves(r["params"]), jax.tree_util.tree_leaves(one["params"]))),
                   **{k: r[k] for k in ("sharded_arrays", "devices", "kept_sharding", "state_bytes_per_device")}}
            for name, r in results.items()}

        # A checkpoint saved under 4x2 restores under 8x1 and 1x8 with identical parameters.
        workdir = os.path.join(sys.argv[2], model_type)
        checkpoint.save(rundir.checkpoints(workdir), 1, saved, c)
        restored = {}
        for data, fsdp in ((8, 1), (1, 8)):
            c.mesh_data, c.mesh_fsdp = data, fsdp
            mesh = mesh_lib.make_mesh(c)
            state, step = checkpoint.restore_latest(rundir.checkpoints(workdir), train.abstract_state(model, opt, mesh), None, os.path.join(workdir, rundir.DAMAGED))
            fsdp_spec = [a.sharding.spec for a in jax.tree_util.tree_leaves(state["params"])]
            restored[f"{data}x{fsdp}"] = {
                "step": step, "equal": all(np.array_equal(a, b) for a, b in zip(
                    jax.tree_util.tree_leaves(host(state["params"])), jax.tree_util.tree_leaves(host(saved["params"])))),
                "sharded": any("fsdp" in str(s) for s in fsdp_spec)}
        out[model_type]["restored"] = restored
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    result = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, json.dumps(MESHES), str(tmp_path_factory.mktemp("ck"))],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])


@pytest.mark.slow  # this and the next two share eight_devices, over a minute on 2 cores
@pytest.mark.parametrize("model_type", ["aed", "baseline"])
@pytest.mark.parametrize("data,fsdp", MESHES)
def test_sharded_step_equals_one_device(eight_devices, model_type, data, fsdp):
    r = eight_devices[model_type][f"{data}x{fsdp}"]
    assert r["devices"] == 8
    assert r["loss_diff"] < 1e-5 and r["param_diff"] < 1e-5, r
    assert r["kept_sharding"], "the step's outputs left the mesh's sharding"
    assert (r["sharded_arrays"] > 0) == (fsdp > 1), r


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["aed", "baseline"])
def test_fsdp_divides_the_state_per_device(eight_devices, model_type):
    per_device = {m: eight_devices[model_type][f"{m[0]}x{m[1]}"]["state_bytes_per_device"] for m in MESHES}
    assert per_device[(8, 1)] > per_device[(4, 2)] > per_device[(2, 4)] > per_device[(1, 8)]
    assert per_device[(1, 8)] < per_device[(8, 1)] / 4  # all but the small replicated arrays split 8 ways


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["aed", "baseline"])
def test_checkpoint_moves_between_meshes(eight_devices, model_type):
    restored = eight_devices[model_type]["restored"]
    assert restored["8x1"] == {"step": 1, "equal": True, "sharded": False}
    assert restored["1x8"] == {"step": 1, "equal": True, "sharded": True}


def test_the_rule_shards_the_largest_divisible_dimension():
    assert mesh_lib.spec((50257, 768), 4) == P(None, "fsdp")  # 50,257 is odd: the width is split
    assert mesh_lib.spec((768, 3072), 4) == P(None, "fsdp")
    assert mesh_lib.spec((12, 3072, 768), 8) == P(None, "fsdp", None)  # a scanned stack: not the layer axis
    assert mesh_lib.spec((768,), 4) == P()  # small: replicated
    assert mesh_lib.spec((4099, 4099), 2) == P()  # no dimension divisible
    assert mesh_lib.spec((768, 3072), 1) == P()


def _mesh(data, fsdp):
    c = config_lib.base_config("baseline")
    c.mesh_data, c.mesh_fsdp = data, fsdp
    return c


@pytest.mark.parametrize("data,fsdp,n,expected", [(-1, 1, 8, (8, 1)), (-1, 2, 8, (4, 2)), (2, -1, 8, (2, 4)),
                                                  (1, 8, 8, (1, 8)), (-1, 1, 1, (1, 1))])
def test_axis_sizes(data, fsdp, n, expected):
    assert mesh_lib.axis_sizes(_mesh(data, fsdp), n) == expected


@pytest.mark.parametrize("data,fsdp,n,message", [
    (-1, 3, 8, "mesh_fsdp=3 does not divide the 8 devices"),
    (3, -1, 8, "mesh_data=3 does not divide the 8 devices"),
    (2, 2, 8, "mesh_data x mesh_fsdp = 2 x 2 = 4 devices, but there are 8"),
])
def test_bad_mesh_is_one_line(data, fsdp, n, message):
    with pytest.raises(mesh_lib.MeshError, match=message):
        mesh_lib.axis_sizes(_mesh(data, fsdp), n)


def test_bad_mesh_keys_are_config_errors():
    for data, fsdp, message in ((0, 1, "mesh_data: must be a positive integer or -1"),
                                (-1, -1, "at most one mesh axis can be -1")):
        with pytest.raises(config_lib.ConfigError, match=message):
            config_lib.validate(_mesh(data, fsdp))


@pytest.mark.parametrize("flag,message", [
    ("--config.mesh_fsdp=3", "error: mesh_fsdp=3 does not divide the 2 devices"),
    ("--config.batch_size=3", "error: batch_size=3 must be divisible by the mesh's 2 devices "
                              "(mesh_data x mesh_fsdp = 2 x 1)"),
])
def test_bad_mesh_from_the_command_line(tmp_path, flag, message):
    result = subprocess.run(
        [sys.executable, "-m", "aed_jax.main", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", flag],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("size,width,layers,heads", [("small", 768, 12, 12), ("medium", 1024, 24, 16)])
@pytest.mark.fast
def test_gpt2_size_configs(size, width, layers, heads):
    """GPT-2's shapes for the baseline, and an AED of the same width whose encoder + decoder depth is
    the baseline's; each docstring states the parameter count the summary gives."""
    from aed_jax import summary
    for name in (f"gpt2_{size}_baseline", f"gpt2_{size}"):
        path = os.path.join(ROOT, "configs", f"{name}.py")
        c = config_lib.load(path)
        m = c.model_config
        assert (m.n_embed, m.n_head, m.context_size, m.alphabet_size) == (width, heads, 1024, 50257)
        assert (m.n_layer if c.model_type == "baseline" else 2 * m.n_layer) == layers
        assert (c.mesh_data, c.mesh_fsdp) == (1, -1) and c.scan_layers and c.remat
        count = summary.summarize(c).splitlines()[-1].removeprefix("params: ")
        assert f"({count} params)" in " ".join(open(path).read().split())
