"""FIRE: functional interpolation for relative positions (Li et al. 2023, arXiv 2310.04418).

Axis legend: B batch, L query positions, K key positions, H heads, N layers, M MLP width.

A small MLP of a normalised distance gives each head's logit bias:

    u_ij = psi(i - j) / (psi(max(i, L)) + eps),   psi(x) = log(|c x| + 1),   eps = 1e-6
    bias[h, i, j] = MLP(u_ij)[h],                 MLP: 1 -> M (32) -> ReLU -> H

with ``i`` the query and ``j`` the key position (query minus key, from the explicit
position arrays), ``c`` learned (init 0.1) and the threshold ``L = |L_multiplier * init_L|``
with ``L_multiplier`` learned (init 1.0) and ``init_L`` fixed.

Threshold. The reference fixes ``init_L = 512``. Our default (``fire_init_L = 0``) is the
training length ``max_len`` instead: with 128-token training and L = 512 every training
query sits below the threshold, so the MLP only ever sees ``u <= psi(127) / psi(512) ~
0.66`` and longer evaluations feed it unseen inputs up to 1; with L equal to the training
length it is trained on nearly all of [0, 1], and the interpolation ``u = psi(i - j) /
psi(i)`` for ``i > L`` keeps every longer input inside that range. Set ``fire_init_L =
512`` to follow the reference.

Shift invariance. While every query position is at most ``L`` the normaliser is the
constant ``psi(L)`` and the bias depends on ``i - j`` only. Past ``L`` it is ``psi(i)``, a
function of the absolute query position, so shifting all positions by a constant changes
the bias: FIRE is exactly relative only below its threshold (by design: that is the
interpolation).

Placement. The bias is added after the ``1/sqrt(Dh)`` scaling of the content logits, like
every bias hook here; the reference adds it before (``(QK^T + bias) / sqrt(Dh)``). The two
differ only by a factor ``sqrt(Dh)`` in the MLP's output scale, which the learned last
layer absorbs; at initialisation our bias is ``sqrt(Dh)`` times louder.

Parameters are per layer, as in the paper: every parameter is stacked along a leading
``N`` axis and the ``layer`` argument (an int or a traced integer) picks the row. The MLP
is initialised as PyTorch's ``nn.Linear`` (the reference's): weights and biases
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. Flax's zero bias would make the ReLU layer linear in
``u >= 0`` at initialisation (a unit is then either always on or always off).

Memory. The MLP's second layer is written as a broadcast product reduced over the M hidden
units, which XLA fuses into one pass producing the ``BxHxLxK`` bias without storing the
hidden layer; an ``einsum`` over a materialised ``BxLxKxM`` hidden layer needs about 4.8 GB
of scratch at B=8, L=2048 (measured with XLA's memory analysis on CPU). The backward pass
still keeps the hidden layer (fine at training lengths).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from pe_jax.schemes import base

EPS = 1e-6  # added to the normaliser, as in the reference


@dataclasses.dataclass(frozen=True)
class FireOptions:
    init_L: float = 0.0  # 0: the model's max_len (training length); the reference uses 512
    mlp_width: int = 32

    def __post_init__(self):
        if not (math.isfinite(self.init_L) and self.init_L >= 0):
            raise ValueError(f"fire_init_L must be >= 0 (0 = max_len), got {self.init_L}")
        if self.mlp_width < 1:
            raise ValueError(f"fire_mlp_width must be positive, got {self.mlp_width}")


def psi(x: jax.Array, c: jax.Array) -> jax.Array:
    """``log(|c x| + 1)`` in float32."""
    return jnp.log1p(jnp.abs(c * x.astype(jnp.float32)))


def normalized_distance(
    q_pos_BxL: jax.Array, k_pos_BxK: jax.Array, c: jax.Array, threshold: jax.Array
) -> jax.Array:
    """FIRE's MLP input ``u`` as float32 ``BxLxK`` (in [0, 1] for keys not after the query)."""
    rel_BxLxK = (q_pos_BxL[:, :, None] - k_pos_BxK[:, None, :]).astype(jnp.float32)
    norm_BxLx1 = jnp.maximum(q_pos_BxL.astype(jnp.float32), threshold)[:, :, None]
    return psi(rel_BxLxK, c) / (psi(norm_BxLx1, c) + EPS)


# Above this many hidden activations (B L K M) the MLP is evaluated fused, never storing
# its hidden layer; at or below it, as matmuls (much faster, the hidden layer is small).
MATMUL_MAX_HIDDEN = 1 << 25  # 128 MiB of float32


def mlp_bias(
    u_BxLxK: jax.Array, w1_M: jax.Array, b1_M: jax.Array, w2_MxH: jax.Array, b2_H: jax.Array
) -> jax.Array:
    """``W2^T relu(w1 u + b1) + b2`` per head, as float32 ``BxHxLxK``.

    Small inputs (a training window whose positions all rows share) go through
    ``_mlp_matmul``; large ones (long evaluation) through the fused form below.
    """
    u_BxLxK = u_BxLxK.astype(jnp.float32)
    if u_BxLxK.size * w1_M.shape[0] <= MATMUL_MAX_HIDDEN:
        out_NxH = _mlp_matmul(u_BxLxK.reshape(-1), w1_M, b1_M, w2_MxH, b2_H)
        return jnp.moveaxis(out_NxH.reshape(*u_BxLxK.shape, -1), -1, 1)
    u_Bx1xLxKx1 = u_BxLxK[:, None, :, :, None]
    hidden_Bx1xLxKxM = jax.nn.relu(u_Bx1xLxKx1 * w1_M + b1_M)
    w2_1xHx1x1xM = w2_MxH.T[None, :, None, None, :]
    # An elementwise product reduced over M: XLA fuses it into one pass, never storing the
    # hidden layer (an einsum would materialise BxLxKxM first).
    return jnp.sum(hidden_Bx1xLxKxM * w2_1xHx1x1xM, axis=-1) + b2_H[None, :, None, None]


@jax.custom_vjp
def _mlp_matmul(u_N, w1_M, b1_M, w2_MxH, b2_H):
    """The MLP on ``N`` inputs as an ``NxM`` hidden layer and a matmul: ``NxH``."""
    hidden_NxM = jax.nn.relu(u_N[:, None] * w1_M + b1_M)
    return hidden_NxM @ w2_MxH + b2_H


def _mlp_matmul_fwd(u_N, w1_M, b1_M, w2_MxH, b2_H):
    return _mlp_matmul(u_N, w1_M, b1_M, w2_MxH, b2_H), (u_N, w1_M, b1_M, w2_MxH)


def _mlp_matmul_bwd(saved, g_NxH):
    # Every sum over the N inputs is written as a product with a vector, so that XLA's
    # CPU backend runs it as a matmul (its reduction kernels were ~10x slower here).
    u_N, w1_M, b1_M, w2_MxH = saved
    pre_NxM = u_N[:, None] * w1_M + b1_M
    hidden_NxM = jax.nn.relu(pre_NxM)
    ones_N = jnp.ones_like(u_N)
    g_pre_NxM = jnp.where(pre_NxM > 0, g_NxH @ w2_MxH.T, 0.0)
    return (
        g_pre_NxM @ w1_M,  # u
        u_N @ g_pre_NxM,  # w1
        ones_N @ g_pre_NxM,  # b1
        hidden_NxM.T @ g_NxH,  # w2
        ones_N @ g_NxH,  # b2
    )


_mlp_matmul.defvjp(_mlp_matmul_fwd, _mlp_matmul_bwd)


def _torch_linear_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


class Fire(base.PositionalScheme):
    enters_at = ("bias",)

    def _opts(self) -> FireOptions:
        return self.options or FireOptions()

    @property
    def init_L(self) -> float:
        return self._opts().init_L or float(self.dims.max_len)

    def setup(self):
        n, h, m = self.dims.num_layers, self.dims.num_heads, self._opts().mlp_width
        self.w1_NxM = self.param("w1", _torch_linear_init(1), (n, m))
        self.b1_NxM = self.param("b1", _torch_linear_init(1), (n, m))
        self.w2_NxMxH = self.param("w2", _torch_linear_init(m), (n, m, h))
        self.b2_NxH = self.param("b2", _torch_linear_init(m), (n, h))
        self.c_N = self.param("c", nn.initializers.constant(0.1), (n,))
        self.L_multiplier_N = self.param("L_multiplier", nn.initializers.ones, (n,))

    def threshold(self, layer: int | jax.Array = 0) -> jax.Array:
        """The learned threshold ``|L_multiplier * init_L|`` of ``layer``."""
        return jnp.abs(self.L_multiplier_N[layer] * self.init_L)

    def bias(self, q_pos_BxL, k_pos_BxK, layer=0):
        base.check_positions(q_pos_BxL, "query positions")
        base.check_positions(k_pos_BxK, "key positions")
        u_BxLxK = normalized_distance(q_pos_BxL, k_pos_BxK, self.c_N[layer], self.threshold(layer))
        return mlp_bias(
            u_BxLxK,
            self.w1_NxM[layer],
            self.b1_NxM[layer],
            self.w2_NxMxH[layer],
            self.b2_NxH[layer],
        )


def _options(config) -> FireOptions:
    return FireOptions(
        init_L=float(base.config_get(config, "fire_init_L", 0.0)),
        mlp_width=int(base.config_get(config, "fire_mlp_width", 32)),
    )


base.register("fire", Fire, _options, summary="learned MLP of a normalised log distance on logits")
