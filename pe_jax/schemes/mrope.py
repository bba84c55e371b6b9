"""Multimodal RoPE (M-RoPE, Qwen2-VL: Wang et al. 2024, arXiv 2409.12191) and 2-D axial
RoPE for image patches.

Axis legend: B batch, L query positions, K key positions, H heads, Dh head width,
Dr rotated width, Dr2 = Dr / 2 rotary pairs (one frequency each), A = 3 position axes
(t, h, w).

M-RoPE. Every token has three integer positions (temporal, height, width), given as a
``3xBxL`` array. The rotary pairs are split into three consecutive bands of frequency
indices, ``mrope_section = (s_t, s_h, s_w)`` with ``s_t + s_h + s_w = Dr / 2``: pair ``k``
turns by ``pos_t * w_k`` when ``k < s_t``, by ``pos_h * w_k`` in the next ``s_h`` pairs and
by ``pos_w * w_k`` in the last ``s_w``; ``w_k`` are the plain RoPE frequencies over the
rotated width. The rotation itself is RoPE's (``rope.apply``), in either layout (Qwen2-VL
uses ``half``, our default). For text ``t = h = w = position``, so every pair turns by
``position * w_k`` and M-RoPE is RoPE exactly; the scheme therefore also accepts the
model's ordinary ``BxL`` positions and treats them as text.

Default sections. Qwen2-VL uses ``(16, 24, 24)`` for ``Dr / 2 = 64``: a quarter of the
pairs (the fastest frequencies) for time, three eighths each for height and width. For any
width we keep that split: ``s_t = floor(Dr2 / 4)``, the rest divided between h and w with
the odd pair (if any) going to h.

Position ids. ``position_ids`` builds the ``3xL`` ids of a sequence of text runs and image
grids as Qwen2-VL's ``get_rope_index`` does (REFERENCE.md section 14).

Axial 2-D RoPE (``axial_rope``) rotates the first half of the rotated dims by the column
(x) positions and the second half by the row (y) positions, each half a complete RoPE of
its own width (its own frequencies over ``Dr / 2``, half-split inside the half).

The model (``pe_jax.model.Decoder``) takes either ordinary ``BxL`` positions (text) or
the ``3xBxL`` ids, with dense attention; its causal mask then orders tokens by their ids
lexicographically over (t, h, w), which for ``position_ids``'s output is the token order.
Blockwise evaluation and cached decoding take ``BxL`` positions only (they refuse 3-axis
ids with a clear error).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pe_jax import scaling
from pe_jax.schemes import base, rope

NUM_AXES = 3  # temporal, height, width


def default_section(num_pairs: int) -> tuple[int, int, int]:
    """Split ``num_pairs`` rotary pairs into (t, h, w) bands in Qwen2-VL's 1/4, 3/8, 3/8."""
    if num_pairs < 1:
        raise ValueError(f"M-RoPE needs at least one rotary pair, got {num_pairs}")
    t = num_pairs // 4
    rest = num_pairs - t
    return (t, rest - rest // 2, rest // 2)


def check_section(section: Sequence[int], num_pairs: int) -> tuple[int, int, int]:
    """``section`` as a tuple of three non-negative ints summing to ``num_pairs``."""
    section = tuple(section)
    if len(section) != NUM_AXES or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in section
    ):
        raise ValueError(
            f"mrope_section must be three non-negative integers (t, h, w), got {section!r}"
        )
    if sum(section) != num_pairs:
        raise ValueError(
            f"mrope_section {section!r} sums to {sum(section)}, but the rotated width has "
            f"{num_pairs} rotary pairs (rotary dims / 2); the sections must sum to that"
        )
    return tuple(int(s) for s in section)


def _parse_section(value) -> tuple[int, ...] | None:
    """Config value -> tuple of ints, or None for "derive the default"."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return tuple(int(part) for part in value.split(","))
        except ValueError:
            raise ValueError(
                f"mrope_section must be comma-separated integers such as '16,24,24', got "
                f"{value!r}"
            ) from None
    return tuple(value)


def check_mrope_positions(pos, name: str = "positions") -> jax.Array:
    """Accept ``BxL`` (text) or ``3xBxL`` integer positions; return ``3xBxL``."""
    if not jnp.issubdtype(pos.dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {pos.dtype}")
    if pos.ndim == 2:
        return jnp.broadcast_to(pos[None], (NUM_AXES, *pos.shape))
    if pos.ndim != 3 or pos.shape[0] != NUM_AXES:
        raise ValueError(
            f"{name} must have shape (batch, length) or (3, batch, length) for (t, h, w), "
            f"got shape {pos.shape}"
        )
    return pos


def axis_of_pair(section: Sequence[int]) -> np.ndarray:
    """The position axis (0 = t, 1 = h, 2 = w) that drives each rotary pair, int32 ``[Dr2]``."""
    return np.repeat(np.arange(NUM_AXES, dtype=np.int32), np.asarray(section, dtype=np.int64))


def angles(pos_AxBxL: jax.Array, inv_freq_Dr2: jax.Array, section: Sequence[int]) -> jax.Array:
    """float32 angles ``BxLxDr2``: pair ``k`` uses the axis its band assigns."""
    angle_AxBxLxDr2 = pos_AxBxL.astype(jnp.float32)[..., None] * inv_freq_Dr2.astype(jnp.float32)
    axis_Dr2 = axis_of_pair(section)
    # An exact selection (no arithmetic), so text (t = h = w) gives RoPE's angles bit for bit.
    return jnp.where(
        axis_Dr2 == 0,
        angle_AxBxLxDr2[0],
        jnp.where(axis_Dr2 == 1, angle_AxBxLxDr2[1], angle_AxBxLxDr2[2]),
    )


def cos_sin_from_angles(angle_BxLxDr2: jax.Array, layout: str) -> tuple[jax.Array, jax.Array]:
    """float32 cos and sin ``BxLx1xDr`` laid out like ``rope.cos_sin``."""
    if layout == "half":
        angle_BxLxDr = jnp.concatenate([angle_BxLxDr2, angle_BxLxDr2], axis=-1)
    else:
        angle_BxLxDr = jnp.repeat(angle_BxLxDr2, 2, axis=-1)
    return jnp.cos(angle_BxLxDr)[:, :, None, :], jnp.sin(angle_BxLxDr)[:, :, None, :]


def apply_mrope(
    x_BxLxHxDh: jax.Array,
    pos_AxBxL: jax.Array,
    inv_freq_Dr2: jax.Array,
    section: Sequence[int],
    layout: str = "half",
) -> jax.Array:
    """Rotate the first ``Dr = 2 len(inv_freq)`` dims of ``x`` by M-RoPE; cast back."""
    cos, sin = cos_sin_from_angles(angles(pos_AxBxL, inv_freq_Dr2, section), layout)
    return rope.apply(x_BxLxHxDh, cos, sin, layout)


def axial_rope(
    x_BxLxHxDh: jax.Array,
    pos_x_BxL: jax.Array,
    pos_y_BxL: jax.Array,
    theta: float = 10000.0,
    fraction: float = 1.0,
) -> jax.Array:
    """2-D axial RoPE for image patches (ViT-style; REFERENCE.md section 14).

    The first ``Dr = rotary_dim(Dh, fraction)`` dims rotate: dims ``[0, Dr/2)`` by the
    column positions ``pos_x`` and ``[Dr/2, Dr)`` by the row positions ``pos_y``; each half
    is a half-split RoPE of width ``Dr/2`` with its own frequencies ``theta^(-2k/(Dr/2))``.
    The remaining dims pass through. Positions are used as given: conventions such as
    MaxText's Llama-4 port (patches at ``x + 1, y + 1``, a class token at 0) are the
    caller's to choose. Angles in float32; the result is cast back to ``x``'s dtype.
    """
    base.check_positions(pos_x_BxL, "x (column) positions")
    base.check_positions(pos_y_BxL, "y (row) positions")
    head_dim = x_BxLxHxDh.shape[-1]
    d_rot = rope.rotary_dim(head_dim, fraction)
    if d_rot % 4:
        raise ValueError(
            f"axial RoPE splits the rotated dims into two halves of rotary pairs, so it needs "
            f"a multiple of 4; head_dim {head_dim} with fraction {fraction} gives {d_rot}"
        )
    d_half = d_rot // 2
    inv_freq = scaling.default_inv_freq(d_half, theta)

    x32 = x_BxLxHxDh.astype(jnp.float32)
    x_part, y_part, rest = x32[..., :d_half], x32[..., d_half:d_rot], x32[..., d_rot:]
    x_out = rope.apply(x_part, *rope.cos_sin(pos_x_BxL, inv_freq, "half"), "half")
    y_out = rope.apply(y_part, *rope.cos_sin(pos_y_BxL, inv_freq, "half"), "half")
    return jnp.concatenate([x_out, y_out, rest], axis=-1).astype(x_BxLxHxDh.dtype)


def position_ids(segments: Sequence[int | tuple[int, int, int]], start: int = 0):
    """M-RoPE ids ``3xL`` (numpy int32) for text runs and image/video grids, and the delta.

    ``segments`` lists, in order, text runs (an int: that many tokens) and vision blocks
    (a ``(T, H, W)`` tuple: the grid in LLM tokens, i.e. after spatial merging). Text
    tokens get ``t = h = w`` = a running index. A block starting at ``s`` (one past the
    largest id so far) gives its tokens ``(s + t, s + h, s + w)`` in row-major order over
    ``(t, h, w)``; the text after it resumes at one past the largest id so far.

    Returns ``(ids_3xL, delta)`` with ``delta = max id + 1 - L``: in cached decoding, new
    token ``n`` (0-based over the whole sequence) has id ``n + delta`` on every axis.
    Host-side preprocessing, like Qwen2-VL's ``get_rope_index``.
    """
    columns = []
    next_id = int(start)
    for segment in segments:
        if isinstance(segment, (int, np.integer)) and not isinstance(segment, bool):
            if segment < 0:
                raise ValueError(f"a text run needs a length >= 0, got {segment}")
            run = next_id + np.arange(segment, dtype=np.int64)
            columns.append(np.stack([run, run, run]))
            next_id += int(segment)
            continue
        grid = tuple(segment)
        if len(grid) != NUM_AXES or any(int(g) < 1 for g in grid):
            raise ValueError(
                f"a vision block needs a (T, H, W) grid of positive sizes, got {segment!r}"
            )
        t_idx, h_idx, w_idx = np.meshgrid(*(np.arange(int(g)) for g in grid), indexing="ij")
        block = np.stack([t_idx.ravel(), h_idx.ravel(), w_idx.ravel()]) + next_id
        columns.append(block)
        next_id = int(block.max()) + 1

    ids = np.concatenate(columns, axis=1) if columns else np.zeros((NUM_AXES, 0), np.int64)
    delta = (int(ids.max()) + 1 - ids.shape[1]) if ids.size else int(start)
    return ids.astype(np.int32), delta


@dataclasses.dataclass(frozen=True)
class MropeOptions:
    rope: rope.RopeOptions = rope.RopeOptions()
    section: tuple[int, ...] | None = None  # None: default_section of the rotated width

    def __post_init__(self):
        if self.rope.scaling.rope_type != "default":
            raise ValueError(
                "mrope applies plain RoPE frequencies; rope_scaling is not supported, got "
                f"rope_type {self.rope.scaling.rope_type!r}"
            )
        if self.rope.table_dtype != "float32":
            raise ValueError(
                "mrope builds its angles in float32 only; pe_table_dtype="
                f"{self.rope.table_dtype!r} is for rope, xpos and the sinusoidal codes"
            )


class Mrope(base.PositionalScheme):
    enters_at = ("rotate",)
    position_axes = NUM_AXES  # the model also accepts 3xBxL (t, h, w) ids

    def _opts(self) -> MropeOptions:
        return self.options or MropeOptions()

    @property
    def section(self) -> tuple[int, int, int]:
        opts = self._opts()
        num_pairs = rope.rotary_dim(self.dims.head_dim, opts.rope.fraction) // 2
        if opts.section is None:
            return default_section(num_pairs)
        return check_section(opts.section, num_pairs)

    def rotate(self, q_BxLxHxDh, k_BxKxHxDh, q_pos_BxL, k_pos_BxK):
        q_pos_AxBxL = check_mrope_positions(q_pos_BxL, "query positions")
        k_pos_AxBxK = check_mrope_positions(k_pos_BxK, "key positions")
        opts = self._opts()
        d_rot = rope.rotary_dim(self.dims.head_dim, opts.rope.fraction)
        inv_freq_Dr2 = scaling.default_inv_freq(d_rot, opts.rope.theta)
        section = self.section
        layout = opts.rope.layout

        def tables():
            return (cos_sin_from_angles(angles(q_pos_AxBxL, inv_freq_Dr2, section), layout),
                    cos_sin_from_angles(angles(k_pos_AxBxK, inv_freq_Dr2, section), layout))

        (q_cos, q_sin), (k_cos, k_sin) = rope.computed_once(tables, k_pos_AxBxK)
        return (rope.apply(q_BxLxHxDh, q_cos, q_sin, layout),
                rope.apply(k_BxKxHxDh, k_cos, k_sin, layout))


def _options(config) -> MropeOptions:
    return MropeOptions(
        rope=rope.options_from_config(config),
        section=_parse_section(base.config_get(config, "mrope_section", "")),
    )


base.register(
    "mrope", Mrope, _options, summary="RoPE with (t, h, w) position bands (Qwen2-VL M-RoPE)"
)
