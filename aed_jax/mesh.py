"""Where every array of a run lives: the device mesh and its sharding rules, in one place.

Two mesh axes, named as nanodo and MaxText name them:
  data  the batch's rows are split over it; parameters are replicated along it.
  fsdp  the rows are split over it too, and so are the parameters and both AdamW moments
        (fully sharded data parallel, ZeRO-3): each array along its largest dimension that the
        axis divides; arrays too small to matter, or with no such dimension, stay replicated.
XLA's SPMD partitioner inserts the collectives (all-gather a layer's weights before use,
reduce-scatter its gradients, all-reduce over `data`); no collective is written by hand. The
default mesh puts every device on `data`, which replicates everything: plain data parallel.

An ensemble (K runs of one shape trained as one vmapped step, `ensemble`) adds a third axis before
them, `member`: each array of the K runs' state and batch is stacked on a leading member dimension
split over it, and each member's own rows and parameters follow the same rules over the devices
that member gets (`ensemble_mesh`).

The global batch of a step is one array whatever the mesh or the number of processes; each
process supplies the rows of its own devices (`rows`), so the data stream and the losses of a run
do not depend on the cluster's shape.
"""
from __future__ import annotations

import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from aed_jax import config as config_lib

AXES = ("data", "fsdp")
MEMBER = "member"  # an ensemble's leading axis: its members, split over their devices
MIN_SHARDED_SIZE = 2**12  # elements: smaller arrays (LayerNorm scales, biases) are replicated


# Dense bf16 peak FLOP/s per device (SXM parts, from the vendors' data sheets).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


class MeshError(config_lib.ConfigError):
    """A mesh the devices or the batch cannot have: one line naming the key."""


def peak_flops() -> float | None:
    """One device's known bf16 peak FLOP/s, the denominator of MFU (bench, the progress line); None where
    none is known (CPU, another accelerator)."""
    kind = jax.devices()[0].device_kind
    return next((peak for name, peak in PEAK_BF16.items() if name in kind), None)


def axis_sizes(c: ml_collections.ConfigDict, n_devices: int) -> tuple[int, int]:
    """(data, fsdp) for `c.mesh_data` and `c.mesh_fsdp` over `n_devices`, resolving a -1."""
    data, fsdp = c.mesh_data, c.mesh_fsdp
    for size, other_key, other in ((data, "mesh_fsdp", fsdp), (fsdp, "mesh_data", data)):
        if size == -1 and n_devices % other:
            raise MeshError(f"{other_key}={other} does not divide the {n_devices} devices")
    data = n_devices // fsdp if data == -1 else data
    fsdp = n_devices // data if fsdp == -1 else fsdp
    if data * fsdp != n_devices:
        raise MeshError(f"mesh_data x mesh_fsdp = {data} x {fsdp} = {data * fsdp} devices, but there are "
                        f"{n_devices}; set one of them to -1 to take every remaining device")
    return data, fsdp


def make_mesh(c: ml_collections.ConfigDict, devices=None) -> Mesh:
    """The (data, fsdp) mesh of `c` over `devices` (default: every device of every process).

    Devices keep jax's order (by process, then id), fsdp the inner axis: a process's devices are
    neighbours on it, so on a cluster the parameter all-gathers stay within a host where they can.
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices).reshape(axis_sizes(c, len(devices))), AXES)


def ensemble_mesh(c: ml_collections.ConfigDict, members: int, devices=None) -> Mesh:
    """The (member, data, fsdp) mesh of an ensemble of `members` runs of `c`: the member axis takes
    gcd(members, devices) of them, so members split evenly over as many devices as can be (8 members on
    8 devices: one each; 2 members on 8: 4 each, their rows over `c`'s data x fsdp mesh of those 4)."""
    devices = jax.devices() if devices is None else devices
    member = math.gcd(members, len(devices))
    return Mesh(np.asarray(devices).reshape((member, *axis_sizes(c, len(devices) // member))), (MEMBER, *AXES))


def stacked(sharding: NamedSharding) -> NamedSharding:
    """`sharding` (a rule of one member's array, on an ensemble mesh) for the members' arrays stacked on a
    leading dimension: that dimension over the member axis, the rest as the rule says."""
    return NamedSharding(sharding.mesh, P(MEMBER, *sharding.spec))


def spec(shape: tuple[int, ...], fsdp: int) -> P:
    """The rule for one parameter or optimizer array: split over `fsdp` along its largest dimension
    that `fsdp` divides (the first of equal ones); replicated when small or indivisible."""
    if fsdp == 1 or math.prod(shape) < MIN_SHARDED_SIZE:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            return P(*(("fsdp" if d == dim else None) for d in range(len(shape))))
    return P()


def state_shardings(mesh: Mesh, abstract_tree):
    """A NamedSharding for every array of `abstract_tree` (anything with .shape), by `spec`."""
    return jax.tree_util.tree_map(lambda a: NamedSharding(mesh, spec(a.shape, mesh.shape["fsdp"])), abstract_tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """A batch's rows split over every device (both axes)."""
    return NamedSharding(mesh, P(AXES))


def check_rows(key: str, n_rows: int, mesh: Mesh) -> None:
    """MeshError unless `n_rows` sequences split evenly over the mesh's devices and processes."""
    if n_rows % mesh.size:
        raise MeshError(f"{key}={n_rows} must be divisible by the mesh's {mesh.size} devices "
                        f"(mesh_data x mesh_fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']})")


def process_slice(n_rows: int) -> slice:
    """This process's rows of a global batch of `n_rows`: a contiguous block, as `make_mesh` orders
    the devices, so that `jax.make_array_from_process_local_data(batch_sharding(mesh), batch[process_slice])`
    rebuilds the one global batch."""
    per_process = n_rows // jax.process_count()
    return slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)


def to_global(mesh: Mesh, local_batch: dict) -> dict:
    """{name: this process's rows} as {name: one global array}, rows over every device."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def reading_mesh(config) -> Mesh:
    """For a reader of a checkpoint (evaluate): the run config's mesh if it fits this machine's devices,
    else every device on `data` (also for a config saved before there were mesh keys)."""
    keys = {"mesh_data": config.get("mesh_data", -1), "mesh_fsdp": config.get("mesh_fsdp", 1)}
    try:
        return make_mesh(ml_collections.ConfigDict(keys))
    except MeshError:
        return make_mesh(ml_collections.ConfigDict({"mesh_data": -1, "mesh_fsdp": 1}))


def place(params, mesh: Mesh):
    """`params` (host arrays) on `mesh`, sharded by the training rules."""
    return jax.device_put(params, state_shardings(mesh, params))


def padded_size(batch_size: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh's device count that holds `batch_size` rows."""
    return -(-batch_size // mesh.size) * mesh.size


def bytes_per_device(tree) -> int:
    """The bytes one device holds of `tree`'s arrays (abstract or concrete, each with a .sharding):
    what sharding saves, as the memory table of BENCHMARKS.md reports it."""
    total = 0
    for a in jax.tree_util.tree_leaves(tree):
        shard = a.sharding.shard_shape(a.shape)
        total += math.prod(shard) * np.dtype(a.dtype).itemsize
    return total
