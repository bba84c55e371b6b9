"""The device mesh, the logical-axis rules, and the shardings derived from them.

Axis legend: B batch, L positions, D model width, H heads, Dh head width, F MLP width,
V vocabulary.

The mesh has three named axes (``MESH_AXES``):

- ``data``: the batch is split, parameters are replicated (plain data parallelism);
- ``fsdp``: the batch is split *and* every parameter's ``embed`` dimension is split
  (fully sharded data parallelism: XLA gathers a layer's weights just before use);
- ``tensor``: heads, MLP units and the vocabulary are split (Megatron-style tensor
  parallelism).

Code never names mesh axes. ``model.py`` gives parameters logical names through
``nn.with_logical_partitioning`` (``vocab``, ``embed``, ``heads``, ``kv``, ``qkv``,
``mlp``, ``norm``) and constrains activations with ``nn.with_logical_constraint``
(``activation_batch``, ``activation_length``, ``activation_heads``, ...); the rules, a
tuple of ``(logical name, mesh axis or axes or None)`` pairs read from the config, map
those names onto the mesh, the Flax/MaxText way. A logical name with no rule, and every
parameter without logical names (the positional schemes' tables, slopes and MLPs), is
replicated; so is any dimension that its mesh axes do not divide evenly.

Multi-host runs: ``initialize_distributed`` calls ``jax.distributed.initialize()`` when
``config.multihost`` is set or the environment says more than one process takes part
(``JAX_NUM_PROCESSES`` > 1 or ``JAX_COORDINATOR_ADDRESS`` set); on a TPU pod slice the
arguments are discovered by JAX itself.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or axes, or None = replicated). Names without a rule are
# replicated too; the None rules are listed to document every name the model uses.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # Inputs and activations.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_kv_length", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("mlp", "tensor"),
    ("norm", None),
)

BATCH_AXES = ("batch", "length")  # the logical names of every BxL input array

Rules = tuple[tuple[str, Any], ...]


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolve ``data = -1`` to the devices left over; check the product."""
    for name, size in (("mesh_fsdp", fsdp), ("mesh_tensor", tensor)):
        if int(size) < 1:
            raise ValueError(f"config.{name} must be a positive integer, got {size}")
    if data == -1:
        if num_devices % (fsdp * tensor):
            raise ValueError(
                f"mesh_data=-1 takes the devices left over, but {num_devices} devices are "
                f"not divisible by mesh_fsdp * mesh_tensor = {fsdp * tensor}"
            )
        data = num_devices // (fsdp * tensor)
    if int(data) < 1:
        raise ValueError(f"config.mesh_data must be a positive integer or -1, got {data}")
    if data * fsdp * tensor > num_devices:
        raise ValueError(
            f"the mesh (data {data}, fsdp {fsdp}, tensor {tensor}) needs "
            f"{data * fsdp * tensor} devices, but only {num_devices} are present"
        )
    return int(data), int(fsdp), int(tensor)


def make_mesh(config=None, devices: Sequence[Any] | None = None) -> Mesh:
    """The ``(data, fsdp, tensor)`` mesh of ``config.mesh_*`` (default 1, 1, 1).

    A mesh smaller than the device list uses its first devices. Axes are ``Auto``: XLA
    propagates shardings from the constraints and the jit in/out shardings.
    """
    get = (lambda key, default: config.get(key, default)) if config is not None else (
        lambda key, default: default
    )
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(
        int(get("mesh_data", 1)), int(get("mesh_fsdp", 1)), int(get("mesh_tensor", 1)),
        len(devices),
    )
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
        devices=devices[: math.prod(shape)],
    )


def rules_from_config(config=None) -> Rules:
    """``config.logical_axis_rules`` as a tuple of pairs (JSON lists accepted).

    An empty value (or no config) gives ``DEFAULT_RULES``. Every mesh axis named must
    be one of ``MESH_AXES``.
    """
    raw = config.get("logical_axis_rules", None) if config is not None else None
    if not raw:
        return DEFAULT_RULES
    rules = []
    for pair in raw:
        if len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(
                f"config.logical_axis_rules must hold (logical name, mesh axes) pairs, "
                f"got {pair!r}"
            )
        name, axes = pair
        if isinstance(axes, (list, tuple)):
            axes = tuple(axes)
            named = axes
        else:
            named = () if axes is None else (axes,)
        unknown = [a for a in named if a not in MESH_AXES]
        if unknown:
            raise ValueError(
                f"config.logical_axis_rules maps {name!r} to unknown mesh axes {unknown}; "
                f"the mesh axes are {MESH_AXES}"
            )
        rules.append((name, axes))
    return tuple(rules)


@contextlib.contextmanager
def rules_in_effect(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Make the model's logical constraints bind to ``mesh`` under ``rules``.

    Usable inside a function being traced by ``jax.jit`` (it sets the abstract mesh,
    not the concrete one) and eagerly. Outside it, the constraints are no-ops.
    """
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Drop the mesh axes of any dimension they do not divide evenly (replicate it)."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    fitted = []
    for size, axes in zip(shape, entries):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        ways = math.prod(mesh.shape[a] for a in names)
        fitted.append(axes if size % ways == 0 else None)
    return PartitionSpec(*fitted)


def logical_sharding(
    names: Sequence[str | None], mesh: Mesh, rules: Rules, shape: tuple[int, ...] | None = None
) -> NamedSharding:
    """The ``NamedSharding`` of one array whose dimensions carry logical ``names``."""
    spec = nn.logical_to_mesh_axes(tuple(names), rules)
    if shape is not None:
        spec = _fit(spec, shape, mesh)
    return NamedSharding(mesh, spec)


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """``NamedSharding``s for a (boxed, abstract) tree such as ``jax.eval_shape(init)``.

    The result has the structure of the *unboxed* tree: a leaf wrapped by
    ``nn.with_logical_partitioning`` gets its rule-mapped sharding, any other leaf (the
    schemes' parameters, step counters) is replicated.
    """
    specs = nn.get_partition_spec(abstract_tree)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = nn.unbox(abstract_tree)
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, _fit(spec, tuple(leaf.shape), mesh)),
        mesh_specs,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_shardings(batch: dict[str, Any], mesh: Mesh, rules: Rules) -> dict[str, NamedSharding]:
    """Every ``BxL`` array of a batch split along ``batch`` (data x fsdp)."""
    return {
        key: logical_sharding(BATCH_AXES[: np.ndim(value)], mesh, rules, np.shape(value))
        for key, value in batch.items()
    }


def put_batch(batch: dict[str, np.ndarray], shardings: dict[str, NamedSharding]) -> dict:
    """Global arrays from a host batch that every process holds in full.

    Each process copies only the slices its own devices hold, so the same call serves
    one host and many (``data.train_batch`` is a pure function of the step).
    """
    return {
        key: jax.make_array_from_callback(
            np.shape(value), shardings[key], lambda index, v=value: np.asarray(v)[index]
        )
        for key, value in batch.items()
    }


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    """The batch must split evenly over the data and fsdp axes."""
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % ways:
        raise ValueError(
            f"config.batch_size {batch_size} is not divisible by mesh_data * mesh_fsdp = "
            f"{ways} (the batch is split over both)"
        )


def multihost_requested(config=None, environ=None) -> bool:
    """Whether this process is one of several: a config flag or the usual env vars."""
    environ = os.environ if environ is None else environ
    if config is not None and bool(config.get("multihost", False)):
        return True
    if int(environ.get("JAX_NUM_PROCESSES", "1") or 1) > 1:
        return True
    return bool(environ.get("JAX_COORDINATOR_ADDRESS"))


def initialize_distributed(config=None) -> bool:
    """Call ``jax.distributed.initialize()`` once, if several processes take part.

    Must run before anything touches the devices. Returns whether it initialized.
    JAX reads ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
    from the environment, or discovers them on Cloud TPU and under SLURM.
    """
    if not multihost_requested(config) or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize()
    logging.info(
        "jax.distributed: process %d of %d, %d local of %d devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
    return True
