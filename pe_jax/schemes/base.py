"""The positional-scheme interface and its registry.

Axis legend: B batch, L query positions, K key positions, H heads, D model width,
Dh head width, N layers.

A scheme is a Linen module with up to four hooks. Each hook has a neutral default,
so a scheme overrides only the points where it enters attention:

- ``embed(pos_BxL)``: a code ``BxLxD`` added to the token embeddings (sinusoidal,
  learned), or ``None``;
- ``rotate(q_BxLxHxDh, k_BxKxHxDh, q_pos_BxL, k_pos_BxK)``: transformed ``(q, k)``
  (RoPE and its relatives);
- ``bias(q_pos_BxL, k_pos_BxK, layer)``: a content-independent logit bias
  ``BxHxLxK`` (or anything broadcastable to it), or ``None`` (ALiBi, T5, Kerple...);
- ``logits(logits_BxHxLxK, q, k, q_pos, k_pos, mask, layer)``: content-dependent
  logit terms (Shaw, DeBERTa, CoPE), returning the new logits;
- ``values(probs_BxHxLxK, q_pos, k_pos, layer)``: a term ``BxLxHxDh`` added to the
  attention output (Shaw's value embeddings), or ``None``.

The decoder builds one scheme object and hands it to every layer, so a scheme owns
parameters shared by all layers (a T5 table) or stacks per-layer parameters along a
leading ``N`` axis and picks them with the ``layer`` argument. Parameters are created
in ``setup`` so every hook can reach them.

Positions are always explicit integer arrays; no hook builds an ``arange`` itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """Model sizes every scheme may need, fixed when the model is built."""

    d_model: int
    num_heads: int
    head_dim: int
    num_layers: int
    max_len: int  # longest position the config promises to train on


class PositionalScheme(nn.Module):
    """Base class: every hook is neutral. Subclasses override what they use."""

    dims: ModelDims
    options: Any = None  # the scheme's own frozen options dataclass

    # Class-level facts the rest of the library may read without instantiating.
    enters_at: ClassVar[tuple[str, ...]] = ()  # of embed, rotate, bias, logits, values
    # Axes of a token's position: 1 (BxL, every scheme); M-RoPE also takes 3xBxL (t, h, w).
    position_axes: ClassVar[int] = 1
    # False when a logit hook couples all keys of a row, so that blockwise attention
    # must give it whole rows (CoPE).
    key_blocks_independent: ClassVar[bool] = True

    def embed(self, pos_BxL: jax.Array) -> jax.Array | None:
        del pos_BxL
        return None

    def rotate(
        self,
        q_BxLxHxDh: jax.Array,
        k_BxKxHxDh: jax.Array,
        q_pos_BxL: jax.Array,
        k_pos_BxK: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        del q_pos_BxL, k_pos_BxK
        return q_BxLxHxDh, k_BxKxHxDh

    def bias(
        self, q_pos_BxL: jax.Array, k_pos_BxK: jax.Array, layer: int | jax.Array = 0
    ) -> jax.Array | None:
        del q_pos_BxL, k_pos_BxK, layer
        return None

    def logits(
        self,
        logits_BxHxLxK: jax.Array,
        q_BxLxHxDh: jax.Array,
        k_BxKxHxDh: jax.Array,
        q_pos_BxL: jax.Array,
        k_pos_BxK: jax.Array,
        mask_BxLxK: jax.Array,
        layer: int | jax.Array = 0,
    ) -> jax.Array:
        del q_BxLxHxDh, k_BxKxHxDh, q_pos_BxL, k_pos_BxK, mask_BxLxK, layer
        return logits_BxHxLxK

    def values(
        self,
        probs_BxHxLxK: jax.Array,
        q_pos_BxL: jax.Array,
        k_pos_BxK: jax.Array,
        layer: int | jax.Array = 0,
    ) -> jax.Array | None:
        del probs_BxHxLxK, q_pos_BxL, k_pos_BxK, layer
        return None

    def check_length(self, max_position: int) -> None:
        """Raise ValueError if positions up to ``max_position`` cannot be encoded."""
        del max_position


@dataclasses.dataclass(frozen=True)
class SchemeSpec:
    """A registry entry: the module class, how to build its options, a summary."""

    name: str
    cls: type[PositionalScheme]
    make_options: Callable[[Any], Any]  # config -> options dataclass (or None)
    summary: str


_REGISTRY: dict[str, SchemeSpec] = {}


def register(
    name: str,
    cls: type[PositionalScheme],
    make_options: Callable[[Any], Any] | None = None,
    summary: str = "",
) -> None:
    """Register ``cls`` under ``name``. Registering a name twice raises."""
    if name in _REGISTRY:
        raise ValueError(f"positional scheme {name!r} is already registered")
    _REGISTRY[name] = SchemeSpec(name, cls, make_options or (lambda config: None), summary)


def unregister(name: str) -> None:
    """Remove ``name`` (for notebooks that redefine a scheme)."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> SchemeSpec:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown positional scheme {name!r}; known schemes: {', '.join(names())}"
        )
    return _REGISTRY[name]


def build(name: str, dims: ModelDims, config: Any = None) -> PositionalScheme:
    """The scheme module for ``name``, its options read from ``config``."""
    spec = get(name)
    return spec.cls(dims=dims, options=spec.make_options(config))


def check_positions(pos: jax.Array, name: str = "positions") -> None:
    """Positions must be an integer array of rank 2 (B, L)."""
    if not jnp.issubdtype(pos.dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {pos.dtype}")
    if pos.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, length), got shape {pos.shape}")


def config_get(config: Any, key: str, default: Any) -> Any:
    """Read ``key`` from a ConfigDict/dict/None, falling back to ``default``."""
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
