"""The training loop: AdamW with warm-up and cosine decay, orbax checkpoints, resume.

``train_and_evaluate(config, workdir)`` trains one model into ``workdir``. A rerun with
the same workdir resumes from the latest checkpoint (and says so in the log); a workdir
that holds a run of another configuration is refused with the keys that differ.

Sharding: the state is created directly on the device mesh of ``config.mesh_*`` (see
``pe_jax/sharding.py``), each parameter and its optimizer moments placed as the logical
axis rules say, and the train step is compiled once here with explicit in/out shardings
and the state donated. The default mesh is one device.

Mixed precision: parameters and optimizer state are float32, the model computes in
``config.compute_dtype``, the loss is float32. ``config.loss_scale = "dynamic"`` adds
dynamic loss scaling for float16 (``LossScale``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import struct
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec

from pe_jax import data, flops, metrics, model, positions, schemes, sharding

LOSS_SCALES = ("none", "dynamic")
MAX_LOSS_SCALE = 2.0**24  # growth stops here, so the scale stays finite

# Keys whose change makes an old checkpoint belong to a different experiment.
_RUN_KEYS = (
    "pe", "d_model", "num_layers", "num_heads", "mlp_ratio", "seq_len", "data", "seed",
)


def model_config(config) -> model.ModelConfig:
    """The frozen model description from a ConfigDict."""
    return model.ModelConfig(
        pe=config.pe,
        d_model=config.d_model,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        max_len=trained_positions(config),
        compute_dtype=config.compute_dtype,
        pe_config=config,
    )


def trained_positions(config) -> int:
    """How many positions training shows: ``seq_len``, or ``random_positions_max`` when
    training draws randomized positions (the learned table and other length-aware
    defaults cover that range)."""
    if config.get("random_positions", False):
        return int(config.random_positions_max)
    return int(config.seq_len)


def run_signature(config) -> dict[str, Any]:
    """What identifies a run: the shaping keys and the chosen scheme's own options."""
    signature = {key: config[key] for key in _RUN_KEYS}
    if config.get("loss_scale", "none") != "none":  # it adds a field to the checkpoint
        signature["loss_scale"] = config.loss_scale
    if config.get("random_positions", False):  # other positions, another experiment
        signature["random_positions_max"] = config.random_positions_max
    options = schemes.get(config.pe).make_options(config)
    if options is not None:
        signature["pe_options"] = json.loads(json.dumps(dataclasses.asdict(options), default=str))
    return signature


def validate(config) -> None:
    """Reject values no run could use, naming the value and what is accepted."""
    if config.get("random_positions", False) and not (
        int(config.random_positions_max) >= int(config.seq_len)
    ):
        raise ValueError(
            f"config.random_positions_max must be >= seq_len {config.seq_len}, got "
            f"{config.random_positions_max}"
        )
    for key in ("seq_len", "batch_size", "num_steps", "checkpoint_every", "log_every",
                "eval_tokens", "eval_batch_tokens"):
        if int(config[key]) <= 0:
            raise ValueError(f"config.{key} must be a positive integer, got {config[key]}")
    if not 0 <= config.warmup_steps:
        raise ValueError(f"config.warmup_steps must be >= 0, got {config.warmup_steps}")
    if not config.learning_rate > 0:
        raise ValueError(f"config.learning_rate must be > 0, got {config.learning_rate}")
    model_config(config)  # scheme name, sizes, dtype
    schemes.get(config.pe).make_options(config)  # the scheme's own options
    _validate_sharding_and_precision(config)
    init_from = config.get("init_from")
    if init_from and not os.path.exists(os.path.join(init_from, "config.json")):
        raise ValueError(
            f"config.init_from={init_from!r} is not a pe_jax workdir (no config.json there)"
        )


def _validate_sharding_and_precision(config) -> None:
    """Mesh sizes, axis rules and loss scaling (device counts are checked at start)."""
    sizes = {key: int(config.get(key, 1)) for key in ("mesh_data", "mesh_fsdp", "mesh_tensor")}
    for key, size in sizes.items():
        if size < 1 and not (key == "mesh_data" and size == -1):
            allowed = "a positive integer or -1" if key == "mesh_data" else "a positive integer"
            raise ValueError(f"config.{key} must be {allowed}, got {size}")
    if sizes["mesh_data"] != -1:
        batch_ways = sizes["mesh_data"] * sizes["mesh_fsdp"]
        if config.batch_size % batch_ways:
            raise ValueError(
                f"config.batch_size {config.batch_size} is not divisible by mesh_data * "
                f"mesh_fsdp = {batch_ways} (the batch is split over both)"
            )
    sharding.rules_from_config(config)
    loss_scale = config.get("loss_scale", "none")
    if loss_scale not in LOSS_SCALES:
        raise ValueError(f"config.loss_scale must be one of {LOSS_SCALES}, got {loss_scale!r}")
    if loss_scale == "dynamic":
        if not config.get("loss_scale_init", 2.0**15) >= 1:
            raise ValueError(f"config.loss_scale_init must be >= 1, got {config.loss_scale_init}")
        if int(config.get("loss_scale_period", 2000)) < 1:
            raise ValueError(
                f"config.loss_scale_period must be positive, got {config.loss_scale_period}"
            )


@struct.dataclass
class LossScale:
    """Dynamic loss scaling (for float16 compute).

    The loss is multiplied by ``scale`` before differentiation, so that small gradients
    survive float16's narrow range, and the gradients are divided by it afterwards. A
    step whose gradients are not all finite is skipped (parameters, optimizer state and
    step count unchanged) and the scale halves (not below 1); after ``period``
    consecutive finite steps it doubles (up to ``MAX_LOSS_SCALE``).
    """

    scale: jax.Array  # float32 scalar
    good_steps: jax.Array  # int32: finite steps since the scale last changed
    period: int = struct.field(pytree_node=False, default=2000)

    @classmethod
    def create(cls, scale: float = 2.0**15, period: int = 2000) -> "LossScale":
        return cls(jnp.asarray(scale, jnp.float32), jnp.zeros((), jnp.int32), int(period))

    def update(self, finite: jax.Array) -> "LossScale":
        grow = finite & (self.good_steps + 1 >= self.period)
        grown = jnp.where(grow, jnp.minimum(self.scale * 2.0, MAX_LOSS_SCALE), self.scale)
        scale = jnp.where(finite, grown, jnp.maximum(self.scale * 0.5, 1.0))
        good_steps = jnp.where(finite & ~grow, self.good_steps + 1, 0)
        return self.replace(scale=scale, good_steps=good_steps.astype(jnp.int32))


class ScaledTrainState(train_state.TrainState):
    """Flax's train state plus a dynamic loss scale.

    Used only with ``config.loss_scale = "dynamic"``: other runs keep Flax's own
    ``TrainState``, so their checkpoints keep the structure they always had.
    """

    loss_scale: LossScale | None = None


def make_optimizer(config) -> optax.GradientTransformation:
    warmup = min(config.warmup_steps, config.num_steps - 1)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=config.num_steps,
        end_value=0.1 * config.learning_rate,
    )
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=config.weight_decay),
    )


def create_state(
    config, mcfg: model.ModelConfig, mesh=None, rules: sharding.Rules | None = None
) -> train_state.TrainState:
    """A fresh state, initialised directly in its shardings on ``mesh``.

    ``mesh`` and ``rules`` default to the config's (``sharding.make_mesh``,
    ``sharding.rules_from_config``); the state's shardings are
    ``state_shardings(state)``.
    """
    mesh = sharding.make_mesh(config) if mesh is None else mesh
    rules = sharding.rules_from_config(config) if rules is None else rules
    decoder = model.Decoder(mcfg)
    tokens = jnp.zeros((1, config.seq_len), jnp.int32)
    positions = jnp.arange(config.seq_len, dtype=jnp.int32)[None]
    tx = make_optimizer(config)
    extra = {}
    state_class = train_state.TrainState
    if config.get("loss_scale", "none") == "dynamic":
        state_class = ScaledTrainState
        extra["loss_scale"] = LossScale.create(config.get("loss_scale_init", 2.0**15),
                                               config.get("loss_scale_period", 2000))

    def init(key, tokens_BxL, pos_BxL):  # boxed: parameters and moments carry axis names
        params = decoder.init(key, tokens_BxL, pos_BxL)["params"]
        return state_class.create(apply_fn=decoder.apply, params=params, tx=tx, **extra)

    args = (jax.random.key(config.seed), tokens, positions)
    shardings = sharding.tree_shardings(jax.eval_shape(init, *args), mesh, rules)
    return jax.jit(lambda *a: nn.unbox(init(*a)), out_shardings=shardings)(*args)


def state_shardings(state: train_state.TrainState) -> Any:
    """The shardings of every array of ``state`` (as ``create_state`` placed them)."""
    return jax.tree.map(lambda x: x.sharding, state)


def make_train_step(state_shardings_, batch_shardings, mesh, rules: sharding.Rules):
    """``train_step`` compiled for ``mesh``: explicit in/out shardings, state donated.

    The logical axis rules are put in effect while it is traced, so the model's
    activation constraints bind to ``mesh``. Metrics come back replicated.
    """

    def step(state, batch):
        with sharding.rules_in_effect(mesh, rules):
            return train_step(state, batch)

    return jax.jit(
        step,
        in_shardings=(state_shardings_, batch_shardings),
        out_shardings=(state_shardings_, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=0,
    )


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood in nats, float32."""
    logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets_BxL[..., None], axis=-1)[..., 0]


def train_step(state: train_state.TrainState, batch: dict[str, jax.Array]):
    """One optimizer step; with a dynamic loss scale, non-finite steps are skipped."""
    loss_scale = getattr(state, "loss_scale", None)
    scale = 1.0 if loss_scale is None else loss_scale.scale

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, batch["inputs"], batch["positions"])
        loss = jnp.mean(cross_entropy(logits, batch["targets"]))
        return loss * scale, loss

    (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if loss_scale is None:
        metrics_ = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return state.apply_gradients(grads=grads), metrics_

    grads = jax.tree.map(lambda g: g / scale, grads)
    finite = functools.reduce(
        jnp.logical_and, [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]
    )
    stepped = state.apply_gradients(grads=grads)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stepped, state)
    new_state = new_state.replace(loss_scale=loss_scale.update(finite))
    metrics_ = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "loss_scale": loss_scale.scale,
        "skipped": jnp.logical_not(finite).astype(jnp.int32),
    }
    return new_state, metrics_


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(
max_to_keep=2, create=True),
    )


def _with_new_option_defaults(stored: dict[str, Any], config) -> dict[str, Any]:
    """A stored signature whose scheme options lack fields added since: those fields
    take their defaults (the behaviour the run was trained with), so that a workdir made
    before an option existed still resumes and evaluates."""
    options = schemes.get(config.pe).make_options(config)
    if options is None or "pe_options" not in stored or stored.get("pe") != config.pe:
        return stored
    try:
        defaults = dataclasses.asdict(type(options)())
    except TypeError:  # an options class with required fields: nothing to fill
        return stored
    defaults = json.loads(json.dumps(defaults, default=str))
    return {**stored, "pe_options": {**defaults, **stored["pe_options"]}}


def _check_workdir(workdir: str, config) -> None:
    """Write the run signature on first use; refuse a workdir of another run.

    ``config.json`` (the whole config, for eval.py) is rewritten on every accepted
    start, so a resumed run may change keys outside the signature, such as ``num_steps``.
    """
    path = os.path.join(workdir, "run.json")
    signature = run_signature(config)
    if os.path.exists(path):
        with open(path) as f:
            stored = _with_new_option_defaults(json.load(f), config)
        differing = sorted(
            k for k in set(stored) | set(signature) if stored.get(k) != signature.get(k)
        )
        if differing:
            details = "; ".join(
                f"{k}: {stored.get(k)!r} there, {signature.get(k)!r} now" for k in differing
            )
            raise ValueError(
                f"workdir {workdir!r} holds a run of another configuration ({details}); "
                f"use a new workdir or the same config"
            )
    else:
        with open(path, "w") as f:
            json.dump(signature, f, indent=1, sort_keys=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=1))


def restore_latest(workdir: str, config) -> tuple[train_state.TrainState, int]:
    """The latest checkpointed state of ``workdir`` and its step (for evaluation)."""
    mcfg = model_config(config)
    state = create_state(config, mcfg)
    manager = checkpoint_manager(workdir, config)
    step = manager.latest_step()
    if step is None:
        raise ValueError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')!r}")
    state = manager.restore(step, args=ocp.args.StandardRestore(state))
    manager.close()
    return state, step


def restore_params(workdir: str, config, like_params: Any = None) -> tuple[Any, int]:
    """The params of ``workdir``'s latest checkpoint and its step, without building a state.

    The checkpoint is restored into an abstract state of ``config`` (``jax.eval_shape``:
    nothing is initialised or compiled). The params land in ``like_params``' shardings
    when given, else replicated on the config's mesh; the rest, dropped, replicated.

    Raises:
      ValueError: no checkpoint, or ``like_params`` of other paths or shapes.
    """
    abstract = jax.eval_shape(lambda: create_state(config, model_config(config)))
    if like_params is None:
        replicated = NamedSharding(sharding.make_mesh(config), PartitionSpec())
        like = {}
    else:
        like = {jax.tree_util.keystr(p): x
                for p, x in jax.tree_util.tree_leaves_with_path(like_params)}
        got = {jax.tree_util.keystr(p): x.shape
               for p, x in jax.tree_util.tree_leaves_with_path(abstract.params)}
        want = {k: x.shape for k, x in like.items()}
        if got != want:
            differing = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            details = "; ".join(
                f"{k}: {got.get(k)} there, {want.get(k)} here" for k in differing[:5]
            )
            raise ValueError(f"{workdir!r} holds parameters of another model ({details})")
        any_sharding = next(iter(like.values())).sharding
        replicated = (NamedSharding(any_sharding.mesh, PartitionSpec())
                      if isinstance(any_sharding, NamedSharding) else any_sharding)

    def struct(x, sharding_):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_)

    target = jax.tree.map(lambda x: struct(x, replicated), abstract)
    target = target.replace(params=jax.tree_util.tree_map_with_path(
        lambda p, x: struct(x, like[jax.tree_util.keystr(p)].sharding if like else replicated),
        abstract.params))
    manager = checkpoint_manager(workdir, config)
    step = manager.latest_step()
    if step is None:
        manager.close()
        raise ValueError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')!r}")
    state = manager.restore(step, args=ocp.args.StandardRestore(target))
    manager.close()
    return state.params, step


def params_from(source_workdir: str, like_params: Any) -> Any:
    """The latest params of ``source_workdir``, in ``like_params``' shapes and shardings.

    The source is read with its own config.json, so a fine-tune may change keys that
    leave the parameters alone (seq_len, rope_scaling, learning rate...). Optimizer
    state and step are not carried over.

    Raises:
      ValueError: no such workdir or checkpoint, or parameters of another shape.
    """
    from pe_jax import evaluate  # evaluate imports this module

    try:
        params, step = restore_params(
            source_workdir, evaluate.load_config(source_workdir), like_params
        )
    except ValueError as error:
        raise ValueError(
            f"init_from={source_workdir!r}: {error}; match its pe, d_model, num_layers, "
            f"num_heads and mlp_ratio"
        ) from None
    logging.info("initialised params from %s (step %d); fresh optimizer state",
                 source_workdir, step)
    return params


def train_and_evaluate(config, workdir: str, corpus: data.Corpus | None = None) -> dict:
    """Train ``config`` into ``workdir``; returns the last logged metrics."""
    validate(config)
    os.makedirs(workdir, exist_ok=True)
    _check_workdir(workdir, config)
    mcfg = model_config(config)
    corpus = corpus or data.load(config.data, text_key=config.data_text_key,
                                 data_dir=config.data_dir or None)

    mesh, rules = sharding.make_mesh(config), sharding.rules_from_config(config)
    sharding.check_batch_divisible(config.batch_size, mesh)
    state = create_state(config, mcfg, mesh, rules)
    shardings = state_shardings(state)
    manager = checkpoint_manager(workdir, config)
    start = manager.latest_step()
    if start is not None:
        state = manager.restore(start, args=ocp.args.StandardRestore(state))
        logging.info("resumed from step %d", start)
        if config.get("init_from"):
            logging.info("init_from ignored: the run resumes from its own checkpoint")
    elif config.get("init_from"):
        state = state.replace(params=params_from(config.init_from, state.params))
    start = int(start or 0)
    state = jax.device_put(state, shardings)  # a no-op unless params came from elsewhere

    template = data.train_batch(corpus.train, 0, config.batch_size, config.seq_len, config.seed)
    # Every row of a batch holds positions 0..L-1: one row serves them all, so position
    # tables and biases are computed once per step, not once per row (model.Decoder
    # broadcasts 1xL positions). Random positions differ per row and stay BxL.
    shared_positions = not config.get("random_positions", False)
    if shared_positions:
        template["positions"] = template["positions"][:1]
    batch_shardings = sharding.batch_shardings(template, mesh, rules)
    step_fn = make_train_step(shardings, batch_shardings, mesh, rules)
    logging.info("mesh %s on %d of %d devices (%d processes)", dict(mesh.shape), mesh.size,
                 jax.device_count(), jax.process_count())
    writer = metrics.Writer(workdir)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    tokens_per_step = config.batch_size * config.seq_len
    flops_per_token = flops.config_flops_per_token(config)
    # MFU's denominator: the float32 matmul speed of these devices, measured now.
    peak_flops = flops.matmul_flops_per_s(repeats=3) * mesh.size
    logging.info("%.1f model MFLOP/token; float32 matmul %.0f GFLOP/s on %d devices",
                 flops_per_token / 1e6, peak_flops / 1e9, mesh.size)
    logging.info(
        "%s: %s, %d parameters, %d tokens/step, steps %d..%d",
        workdir, config.pe, num_params, tokens_per_step, start, config.num_steps,
    )

    last = {}
    position_key = jax.random.key(config.seed + 1)
    progress = metrics.Progress(start, config.num_steps, label=config.pe)
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start, config.num_steps):
        batch = data.train_batch(
            corpus.train, step, config.batch_size, config.seq_len, config.seed
        )
        if config.get("random_positions", False):  # Ruoss et al.: training only
            batch["positions"] = np.asarray(positions.random_positions(
                jax.random.fold_in(position_key, step), config.batch_size, config.seq_len,
                int(config.random_positions_max),
            ))
        elif shared_positions:
            batch["positions"] = batch["positions"][:1]
        state, step_metrics = step_fn(state, sharding.put_batch(batch, batch_shardings))
        window_steps += 1
        done = step + 1
        if step == start:  # keep compilation out of the throughput figure
            jax.block_until_ready(step_metrics)
            window_start, window_steps = time.perf_counter(), 0

        if done % config.log_every == 0 or done == config.num_steps:
            loss = float(step_metrics["loss"])  # the one host sync per log window
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {done} ({config.pe})")
            elapsed = time.perf_counter() - window_start
            last = {
                "step": done,
                "loss": loss,
                "grad_norm": float(step_metrics["grad_norm"]),
            }
            if window_steps:  # none timed yet when the log falls on the compiling step
                last["tokens_per_s"] = window_steps * tokens_per_step / elapsed
                last["mfu"] = last["tokens_per_s"] * flops_per_token / peak_flops
            if "loss_scale" in step_metrics:
                last["loss_scale"] = float(step_metrics["loss_scale"])
            writer.write(done, last)
            progress.update(done, last)
            window_start, window_steps = time.perf_counter(), 0

        if done % config.checkpoint_every == 0 or done == config.num_steps:
            manager.save(done, args=ocp.args.StandardSave(state), force=True)

    manager.wait_until_finished()
    manager.close()
    writer.close()
    return last
