"""KERPLE: kernelized relative position biases (Chi et al. 2022, arXiv 2205.09921).

Axis legend: B batch, L query positions, K key positions, H heads, N layers.

With the distance ``d = i - j`` (query minus key position, taken from the explicit
position arrays) each head adds a bias to its logits, after the ``1/sqrt(Dh)`` scaling as
in the authors' gpt-neox code:

- ``kerple_log``:   ``bias = -r1 * log(1 + r2 * d)``   (the paper's best variant);
- ``kerple_power``: ``bias = -r1 * d^r2``, ``0 < r2 <= 2``  (r1 = slope, r2 = 1 is ALiBi).

``r1, r2`` are learned per head and per layer: two ``[N, H]`` parameters, the row picked by
the ``layer`` argument (a Python int or a traced integer). Initial values follow the
reference code (chijames/KERPLE): log ``r1 ~ U(0, 2)``, ``r2 ~ U(0, 1)``; power
``r1 ~ U(0, 1)``, ``r2 ~ U(0, 2)``.

Constraints. The reference clamps the stored parameters in place at every forward (to
``>= 1e-2``, the power also to ``<= 2``): projected gradient descent. Here the same clamp
is applied inside the forward, ``jnp.clip(param, 1e-2[, 2])``, so the effective value is
always in range whatever the optimizer does to the stored one. Known difference, by
design (no side effects on parameters in Flax): ``clip`` has zero derivative outside its
range, so a stored value pushed past a bound stops receiving gradient and stays there
(only weight decay moves it back), whereas the reference resets it to the bound, from
which it can move back at once. An exact equivalent would be an optax projection of the
two parameters after each update.

Keys in the future (``d < 0``) are masked by the caller; their distance is clamped to 0 so
the bias stays finite there (a NaN, even masked, would poison the gradients). The power
variant uses a safe base so that its gradient at ``d = 0`` is finite: ``d^r2`` is
evaluated as ``where(d > 0, d_safe^r2, 0)`` with ``d_safe = 1`` where ``d = 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pe_jax.schemes import base

EPS = 1e-2  # lower bound of every KERPLE parameter, as in the reference
MAX_POWER = 2.0  # upper bound of the power r2 (conditionally positive definite up to 2)


def distance(q_pos_BxL: jax.Array, k_pos_BxK: jax.Array) -> jax.Array:
    """float32 ``max(i - j, 0)`` as ``BxLxK`` from integer positions."""
    diff_BxLxK = q_pos_BxL[:, :, None] - k_pos_BxK[:, None, :]
    return jnp.maximum(diff_BxLxK, 0).astype(jnp.float32)


def log_bias(distance_BxLxK: jax.Array, r1_H: jax.Array, r2_H: jax.Array) -> jax.Array:
    """``-r1 log(1 + r2 d)`` as float32 ``BxHxLxK`` (parameters used as given)."""
    d_Bx1xLxK = distance_BxLxK[:, None]
    r1, r2 = r1_H[None, :, None, None], r2_H[None, :, None, None]
    return -r1 * jnp.log1p(r2 * d_Bx1xLxK)


def power_bias(distance_BxLxK: jax.Array, r1_H: jax.Array, r2_H: jax.Array) -> jax.Array:
    """``-r1 d^r2`` as float32 ``BxHxLxK``, 0 at ``d = 0`` with finite gradients."""
    d_Bx1xLxK = distance_BxLxK[:, None]
    r1, r2 = r1_H[None, :, None, None], r2_H[None, :, None, None]
    positive = d_Bx1xLxK > 0
    d_safe = jnp.where(positive, d_Bx1xLxK, 1.0)
    return -r1 * jnp.where(positive, d_safe**r2, 0.0)


def _uniform(high: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=0.0, maxval=high)

    return init


class _Kerple(base.PositionalScheme):
    """Shared machinery; subclasses set the bounds, the initial ranges and the kernel."""

    enters_at = ("bias",)
    # Class constants, deliberately unannotated: Flax turns annotated attributes into
    # constructor fields.
    r1_init_high = 1.0
    r2_init_high = 1.0
    r2_max = None  # no upper bound on r2

    def setup(self):
        shape_NxH = (self.dims.num_layers, self.dims.num_heads)
        self.r1_NxH = self.param("r1", _uniform(self.r1_init_high), shape_NxH)
        self.r2_NxH = self.param("r2", _uniform(self.r2_init_high), shape_NxH)

    def effective_params(self, layer: int | jax.Array = 0) -> tuple[jax.Array, jax.Array]:
        """The clamped ``(r1_H, r2_H)`` the forward of ``layer`` uses."""
        r1_H = jnp.clip(self.r1_NxH[layer], EPS)
        r2_H = jnp.clip(self.r2_NxH[layer], EPS, self.r2_max)
        return r1_H, r2_H

    def _kernel(self, distance_BxLxK, r1_H, r2_H):
        raise NotImplementedError

    def bias(self, q_pos_BxL, k_pos_BxK, layer=0):
        base.check_positions(q_pos_BxL, "query positions")
        base.check_positions(k_pos_BxK, "key positions")
        r1_H, r2_H = self.effective_params(layer)
        return self._kernel(distance(q_pos_BxL, k_pos_BxK), r1_H, r2_H)


class KerpleLog(_Kerple):
    r1_init_high = 2.0  # the reference's bias_p (multiplier) ~ U(0, 2)
    r2_init_high = 1.0  # the reference's bias_a (inside the log) ~ U(0, 1)

    def _kernel(self, distance_BxLxK, r1_H, r2_H):
        return log_bias(distance_BxLxK, r1_H, r2_H)


class KerplePower(_Kerple):
    r1_init_high = 1.0  # the reference's bias_a (multiplier) ~ U(0, 1)
    r2_init_high = 2.0  # the reference's bias_p (power) ~ U(0, 2)
    r2_max = MAX_POWER

    def _kernel(self, distance_BxLxK, r1_H, r2_H):
        return power_bias(distance_BxLxK, r1_H, r2_H)


base.register(
    "kerple_log", KerpleLog, summary="learned per-head -r1 log(1 + r2 (i-j)) bias on logits"
)
base.register(
    "kerple_power", KerplePower, summary="learned per-head -r1 (i-j)^r2 bias on logits"
)
