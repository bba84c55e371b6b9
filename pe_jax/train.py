"""The training loop: AdamW with warm-up and cosine decay, orbax checkpoints, resume.

``train_and_evaluate(config, workdir)`` trains one model into ``workdir``. A rerun with
the same workdir resumes from the latest checkpoint (and says so in the log); a workdir
that holds a run of another configuration is refused with the keys that differ.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state

from pe_jax import data, metrics, model, schemes

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
        max_len=config.seq_len,
        compute_dtype=config.compute_dtype,
        pe_config=config,
    )


def run_signature(config) -> dict[str, Any]:
    """What identifies a run: the shaping keys and the chosen scheme's own options."""
    signature = {key: config[key] for key in _RUN_KEYS}
    options = schemes.get(config.pe).make_options(config)
    if options is not None:
        signature["pe_options"] = json.loads(json.dumps(dataclasses.asdict(options), default=str))
    return signature


def validate(config) -> None:
    """Reject values no run could use, naming the value and what is accepted."""
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


def create_state(config, mcfg: model.ModelConfig) -> train_state.TrainState:
    decoder = model.Decoder(mcfg)
    tokens = jnp.zeros((1, config.seq_len), jnp.int32)
    positions = jnp.arange(config.seq_len, dtype=jnp.int32)[None]
    params = jax.jit(decoder.init)(jax.random.key(config.seed), tokens, positions)["params"]
    return train_state.TrainState.create(
        apply_fn=decoder.apply, params=params, tx=make_optimizer(config)
    )


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood in nats, float32."""
    logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets_BxL[..., None], axis=-1)[..., 0]


def train_step(state: train_state.TrainState, batch: dict[str, jax.Array]):
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, batch["inputs"], batch["positions"])
        return jnp.mean(cross_entropy(logits, batch["targets"]))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    metrics_ = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return state.apply_gradients(grads=grads), metrics_


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(
max_to_keep=2, create=True),
    )


def _check_workdir(workdir: str, config) -> None:
    """Write the run signature on first use; refuse a workdir of another run.

    ``config.json`` (the whole config, for eval.py) is rewritten on every accepted
    start, so a resumed run may change keys outside the signature, such as ``num_steps``.
    """
    path = os.path.join(workdir, "run.json")
    signature = run_signature(config)
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
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


def train_and_evaluate(config, workdir: str, corpus: data.Corpus | None = None) -> dict:
    """Train ``config`` into ``workdir``; returns the last logged metrics."""
    validate(config)
    os.makedirs(workdir, exist_ok=True)
    _check_workdir(workdir, config)
    mcfg = model_config(config)
    corpus = corpus or data.load(config.data, text_key=config.data_text_key,
                                 data_dir=config.data_dir or None)

    state = create_state(config, mcfg)
    manager = checkpoint_manager(workdir, config)
    start = manager.latest_step()
    if start is not None:
        state = manager.restore(start, args=ocp.args.StandardRestore(state))
        logging.info("resumed from step %d", start)
    start = int(start or 0)

    step_fn = jax.jit(train_step, donate_argnums=0)
    writer = metrics.Writer(workdir)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    tokens_per_step = config.batch_size * config.seq_len
    logging.info(
        "%s: %s, %d parameters, %d tokens/step, steps %d..%d",
        workdir, config.pe, num_params, tokens_per_step, start, config.num_steps,
    )

    last = {}
    progress = metrics.Progress(start, config.num_steps, label=config.pe)
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start, config.num_steps):
        batch = data.train_batch(
            corpus.train, step, config.batch_size, config.seq_len, config.seed
        )
        state, step_metrics = step_fn(state, batch)
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
                "tokens_per_s": window_steps * tokens_per_step / elapsed,
            }
            writer.write(done, last)
            progress.update(done, last)
            window_start, window_steps = time.perf_counter(), 0

        if done % config.checkpoint_every == 0 or done == config.num_steps:
            manager.save(done, args=ocp.args.StandardSave(state), force=True)

    manager.wait_until_finished()
    manager.close()
    writer.close()
    return last
