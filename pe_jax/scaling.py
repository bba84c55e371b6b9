"""RoPE context-extension rules as pure functions of numbers.

Legend: Dh rotary (head) dimension, Dh2 = Dh / 2 rotary pairs (one inverse frequency each).

Each rule maps a head dimension, a base ("rope_theta") and a `RopeScaling` config to a pair
`(inv_freq_Dh2, attention_factor)`:

* `inv_freq_Dh2[k]` is the angular speed of pair k, so the rotation angle at position p is
  `p * inv_freq_Dh2[k]`;
* `attention_factor` multiplies cos and sin before q and k are rotated, so the attention logits
  are multiplied by its square (the convention of Hugging Face `modeling_rope_utils.py`).

Rules (names are the Hugging Face `rope_type` values):

* ``default``: plain RoPE, Su et al. 2021, "RoFormer", arXiv:2104.09864.
* ``linear``: position interpolation, Chen et al. 2023, arXiv:2306.15595 (also kaiokendev's
  SuperHOT): every frequency divided by the factor.
* ``ntk``: static "NTK-aware" base change (bloc97, 2023; no paper), `base' = base * s^(Dh/(Dh-2))`.
* ``dynamic``: dynamic NTK (emozilla, 2023; no paper), the same base change with an effective
  factor that grows with the current sequence length.
* ``yarn``: Peng et al. 2023, "YaRN", arXiv:2309.00071 (NTK-by-parts ramp plus temperature).
* ``longrope``: Ding et al. 2024, "LongRoPE", arXiv:2402.13753 (Phi-3 "su"): searched per-pair
  rescale factors, one set for short and one for long sequences.
* ``llama3``: the Llama 3.1 rule, Grattafiori et al. 2024, "The Llama 3 Herd of Models",
  arXiv:2407.21783: high frequencies kept, low frequencies divided, a smooth band between.

The formulas follow Hugging Face `transformers` `modeling_rope_utils.py` (the v4.4x functions
and the later ones with `mscale`, `mscale_all_dim`, `truncate`); where this module departs
from it, the docstring of the function says so.

Precision. Everything a config fixes is computed in numpy float64 and rounded to float32 once,
at the end, so each value is the float32 nearest the formula's. Hugging Face computes in torch
float32 throughout, so results can differ from it in the last float32 bit. A side effect that
the tests rely on: with factor 1 every rule returns exactly the bits of `default_inv_freq`
(each scaled frequency is the float64 plain frequency times a multiplier that is exactly 1.0
when the factor is 1); for dynamic NTK this holds up to `max_position_embeddings`, as its
formula still grows the base beyond it. The two rules that depend on the current sequence
length (``dynamic`` and ``longrope``) also accept a traced integer `seq_len` under `jax.jit`;
for dynamic NTK the length-dependent part is then computed with jnp in float32 (a few float32
ulps from the static result), while longrope selects between two precomputed tables.

Known shortcoming, by design: ``dynamic`` and ``longrope`` change the frequencies with the
sequence length. Keys stored in a KV cache after rotation keep the frequencies of the length at
which they were written, so they disagree with later queries once the length crosses the
threshold (the same inconsistency Hugging Face accepts). Cache unrotated keys, or recompute,
if exactness across that threshold matters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "ntk", "yarn", "llama3", "longrope")

# Legacy names found in older config.json files, mapped to the names above.
_ROPE_TYPE_ALIASES = {"su": "longrope"}

# Keys of a Hugging Face `rope_scaling` / `rope_parameters` dict that are not scaling settings
# (the base and the rotary fraction are arguments of `inv_freq_and_scale`); `from_hf` drops them.
_HF_IGNORED_KEYS = frozenset({"rope_theta", "partial_rotary_factor"})

# Per rope_type: (required keys, optional keys), besides `rope_type` / `type`. These are the sets
# Hugging Face's validators use, except that yarn may omit `factor` when it can be inferred.
_HF_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "default": (frozenset(), frozenset()),
    "linear": (frozenset({"factor"}), frozenset()),
    "ntk": (frozenset({"factor"}), frozenset()),
    "dynamic": (frozenset({"factor"}), frozenset({"original_max_position_embeddings"})),
    "yarn": (
        frozenset(),
        frozenset(
            {
                "factor",
                "original_max_position_embeddings",
                "attention_factor",
                "beta_fast",
                "beta_slow",
                "mscale",
                "mscale_all_dim",
                "truncate",
            }
        ),
    ),
    "longrope": (
        frozenset({"short_factor", "long_factor"}),
        frozenset({"factor", "original_max_position_embeddings", "attention_factor"}),
    ),
    "llama3": (
        frozenset(
            {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
        ),
        frozenset(),
    ),
}

# YaRN defaults (paper and Hugging Face): rotations that bound the ramp.
_YARN_BETA_FAST = 32.0
_YARN_BETA_SLOW = 1.0


def _is_real(value: Any) -> bool:
    """True for a finite int or float (numpy scalars included), False for bool and the rest."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return math.isfinite(float(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Settings of one RoPE scaling rule; field names match Hugging Face `rope_scaling` keys.

    Attributes:
      rope_type: one of `ROPE_TYPES`.
      factor: context-extension factor s >= 1. Required by linear, ntk, dynamic and llama3
        (ignored by default). For yarn and longrope `None` means "infer it as
        `max_position_embeddings / original_max_position_embeddings`", which needs both.
      original_max_position_embeddings: pre-training context length L0 (yarn, longrope,
        llama3; dynamic uses it only when `max_position_embeddings` is missing).
      max_position_embeddings: the model's maximum position. Dynamic NTK measures growth
        against it (as Hugging Face does); yarn and longrope use it to infer `factor` and as a
        fallback for L0.
      low_freq_factor, high_freq_factor: llama3 band edges, wavelengths L0 / low_freq_factor
        and L0 / high_freq_factor.
      beta_fast, beta_slow: yarn ramp bounds in rotations; None or 0 means 32 and 1.
      attention_factor: explicit attention factor for yarn or longrope (overrides the formula).
      mscale, mscale_all_dim: yarn (DeepSeek) temperature terms; used only when both are set
        and nonzero.
      truncate: yarn; round the ramp bounds to integers (floor / ceil). gpt-oss sets False.
      short_factor, long_factor: longrope per-pair rescale factors, Dh / 2 positive numbers
        each (lists are stored as tuples of floats).

    Fields a rule does not use are ignored (not rejected) here; `from_hf` rejects unknown keys.

    Raises:
      ValueError: unknown rope_type, a required field missing, or a value out of range.
    """

    rope_type: str = "default"
    factor: float | None = 1.0
    original_max_position_embeddings: int | None = None
    max_position_embeddings: int | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        rope_type = self.rope_type
        if rope_type not in ROPE_TYPES:
            raise ValueError(
                f"Unknown rope_type {rope_type!r}; accepted: {', '.join(ROPE_TYPES)}."
            )
        where = f"RopeScaling(rope_type={rope_type!r})"

        # Plain numbers: type check, then store as float so configs compare and hash cleanly.
        for name in (
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "beta_fast",
            "beta_slow",
            "attention_factor",
            "mscale",
            "mscale_all_dim",
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_real(value):
                raise ValueError(f"{where}: '{name}' must be a finite number, got {value!r}.")
            object.__setattr__(self, name, float(value))

        for name in ("original_max_position_embeddings", "max_position_embeddings"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{where}: '{name}' must be a positive integer, got {value!r}.")
            if value is not None:
                object.__setattr__(self, name, int(value))

        if not isinstance(self.truncate, (bool, np.bool_)):
            raise ValueError(f"{where}: 'truncate' must be a bool, got {self.truncate!r}.")
        object.__setattr__(self, "truncate", bool(self.truncate))

        for name in ("short_factor", "long_factor"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
                raise ValueError(
                    f"{where}: '{name}' must be a sequence of positive numbers, got {value!r}."
                )
            if not all(_is_real(x) and x > 0 for x in value):
                raise ValueError(
                    f"{where}: '{name}' must contain only positive finite numbers, got {value!r}."
                )
            object.__setattr__(self, name, tuple(float(x) for x in value))

        # Requirements and ranges per rule.
        if rope_type in ("linear", "ntk", "dynamic", "llama3") and self.factor is None:
            raise ValueError(f"{where} requires 'factor' (a number >= 1).")
        if rope_type != "default" and self.factor is not None and self.factor < 1.0:
            raise ValueError(f"{where}: 'factor' must be >= 1, got {self.factor}.")

        if rope_type == "llama3":
            for name in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if getattr(self, name) is None:
                    raise ValueError(f"{where} requires '{name}'.")
            if self.low_freq_factor <= 0:
                raise ValueError(
                    f"{where}: 'low_freq_factor' must be > 0, got {self.low_freq_factor}."
                )
            if self.low_freq_factor >= self.high_freq_factor:
                raise ValueError(
                    f"{where}: 'low_freq_factor' must be < 'high_freq_factor', got "
                    f"low_freq_factor={self.low_freq_factor}, "
                    f"high_freq_factor={self.high_freq_factor}."
                )

        if rope_type == "longrope":
            for name in ("short_factor", "long_factor"):
                if getattr(self, name) is None:
                    raise ValueError(f"{where} requires '{name}'.")

        if self.attention_factor is not None and self.attention_factor <= 0:
            raise ValueError(
                f"{where}: 'attention_factor' must be > 0, got {self.attention_factor}."
            )

        if rope_type == "yarn":
            # `or` on purpose: Hugging Face treats 0 like "not set".
            beta_fast = self.beta_fast or _YARN_BETA_FAST
            beta_slow = self.beta_slow or _YARN_BETA_SLOW
            if beta_fast < 0 or beta_slow < 0:
                raise ValueError(
                    f"{where}: 'beta_fast' and 'beta_slow' must be positive, got "
                    f"beta_fast={self.beta_fast}, beta_slow={self.beta_slow}."
                )
            if beta_fast < beta_slow:
                raise ValueError(
                    f"{where}: 'beta_fast' must be >= 'beta_slow', got beta_fast={beta_fast}, "
                    f"beta_slow={beta_slow} (None or 0 means 32 and 1)."
                )


def from_hf(
    rope_dict: Mapping[str, Any] | None,
    *,
    max_position_embeddings: int | None = None,
    original_max_position_embeddings: int | None = None,
) -> RopeScaling:
    """Parses a Hugging Face `rope_scaling` / `rope_parameters` dict from a config.json.

    The rule name is read from `rope_type`, or from the legacy key `type`; the legacy name "su"
    means "longrope". `rope_theta` and `partial_rotary_factor` (present in newer
    `rope_parameters` dicts) are dropped silently: pass the base and the rotary dimension to
    `inv_freq_and_scale` yourself. `None` or `{}` gives the default rule.

    Args:
      rope_dict: the dict, or None.
      max_position_embeddings: the model's top-level `max_position_embeddings`; needed by
        dynamic NTK and by the yarn/longrope factor inference.
      original_max_position_embeddings: a top-level `original_max_position_embeddings` (Phi-3
        keeps it outside `rope_scaling`); the dict's own key wins, and the two must agree if
        both are given.

    Departures from Hugging Face, which only logs warnings for most of these: a missing
    required key, an unknown key, a factor below 1, `low_freq_factor >= high_freq_factor`,
    `beta_fast < beta_slow` and non-positive attention factors raise `ValueError`. A yarn dict
    may omit `factor` if it has `original_max_position_embeddings` (the factor is then
    `max_position_embeddings / original_max_position_embeddings`, as in DeepSeek-V3 configs);
    a longrope dict without `factor` is treated the same way (Phi-3).

    Raises:
      ValueError: naming the offending key and what is accepted.
    """
    if rope_dict is None:
        rope_dict = {}
    if not isinstance(rope_dict, Mapping):
        raise ValueError(f"rope_scaling must be a dict or None, got {type(rope_dict).__name__}.")
    params = {k: v for k, v in rope_dict.items() if k not in _HF_IGNORED_KEYS}

    # Resolve the rule name from `rope_type` and/or the legacy `type`.
    accepted = ", ".join(ROPE_TYPES + tuple(_ROPE_TYPE_ALIASES))
    names = [params.pop(key) for key in ("rope_type", "type") if key in params]
    if not names:
        if params:
            raise ValueError(
                f"rope_scaling has no 'rope_type' (or legacy 'type') key; got keys "
                f"{sorted(params)}. Accepted rope_type values: {accepted}."
            )
        rope_type = "default"
    else:
        resolved = []
        for name in names:
            if not isinstance(name, str) or _ROPE_TYPE_ALIASES.get(name, name) not in ROPE_TYPES:
                raise ValueError(f"Unknown rope_type {name!r}; accepted: {accepted}.")
            resolved.append(_ROPE_TYPE_ALIASES.get(name, name))
        if len(set(resolved)) > 1:
            raise ValueError(
                f"rope_scaling sets 'rope_type'={names[0]!r} and 'type'={names[1]!r}, which "
                "disagree; give one of them."
            )
        rope_type = resolved[0]

    # Key sets, as Hugging Face's validators have them.
    required, optional = _HF_KEYS[rope_type]
    if rope_type == "yarn" and "original_max_position_embeddings" not in params:
        required = required | {"factor"}
    missing = sorted(required - params.keys())
    if missing:
        raise ValueError(
            f"rope_scaling for rope_type {rope_type!r} is missing required key(s) "
            f"{', '.join(repr(k) for k in missing)}."
        )
    unknown = sorted(params.keys() - required - optional)
    if unknown:
        allowed = sorted(required | optional | {"rope_type", "type"} | _HF_IGNORED_KEYS)
        raise ValueError(
            f"rope_scaling for rope_type {rope_type!r} has unknown key(s) "
            f"{', '.join(repr(k) for k in unknown)}; accepted keys: {', '.join(allowed)}."
        )

    # Top-level L0 (Phi-3 style) unless the dict has its own.
    dict_l0 = params.get("original_max_position_embeddings")
    if original_max_position_embeddings is not None:
        if dict_l0 is not None and dict_l0 != original_max_position_embeddings:
            raise ValueError(
                "'original_max_position_embeddings' is "
                f"{dict_l0!r} in rope_scaling but {original_max_position_embeddings!r} as an "
                "argument; they must agree."
            )
        params.setdefault("original_max_position_embeddings", original_max_position_embeddings)

    # A missing factor means "infer it" for yarn and longrope; RopeScaling's default is 1.0.
    if rope_type in ("yarn", "longrope"):
        params.setdefault("factor", None)
    return RopeScaling(
        rope_type=rope_type, max_position_embeddings=max_position_embeddings, **params
    )


def _check_head_dim_and_base(head_dim: Any, base: Any) -> None:
    if not _is_int(head_dim) or head_dim <= 0 or head_dim % 2:
        raise ValueError(
            f"head_dim must be a positive even integer (rotary pairs), got {head_dim!r}."
        )
    if not _is_real(base) or base <= 1:
        raise ValueError(f"base (rope_theta) must be a finite number > 1, got {base!r}.")


def _plain_inv_freq_f64(head_dim: int, base: float) -> np.ndarray:
    """`1 / base^(2k/Dh)` for k = 0 .. Dh/2 - 1, float64 numpy, shape [Dh2]."""
    exponent_Dh2 = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    return 1.0 / (float(base) ** exponent_Dh2)


def _to_f32(x_Dh2: np.ndarray) -> jax.Array:
    return jnp.asarray(np.asarray(x_Dh2, dtype=np.float64).astype(np.float32))


def default_inv_freq(head_dim: int, base: float) -> jax.Array:
    """Plain RoPE inverse frequencies (Su et al. 2021, arXiv:2104.09864).

    `inv_freq_Dh2[k] = 1 / base^(2k / head_dim)` for k = 0 .. head_dim/2 - 1, computed in
    float64 and rounded once to float32. For partial rotary, pass the rotary dimension.

    Raises:
      ValueError: head_dim not a positive even integer, or base not a number > 1.
    """
    _check_head_dim_and_base(head_dim, base)
    return _to_f32(_plain_inv_freq_f64(head_dim, base))


def _is_static_length(seq_len: Any) -> bool:
    """Python / numpy integers are static; jax arrays (tracers included) take the jnp path."""
    if _is_int(seq_len):
        if seq_len < 0:
            raise ValueError(f"seq_len must be >= 0 (max position + 1), got {seq_len}.")
        return True
    if isinstance(seq_len, (jax.Array, np.ndarray)):
        if seq_len.shape != () or not jnp.issubdtype(seq_len.dtype, jnp.integer):
            raise ValueError(
                "seq_len must be an integer scalar (shape ()), got an array of shape "
                f"{seq_len.shape} and dtype {seq_len.dtype}."
            )
        return False
    raise ValueError(
        f"seq_len must be None, an int, or an integer jax scalar, got {seq_len!r}."
    )


def _linear(head_dim: int, base: float, scaling: RopeScaling) -> tuple[jax.Array, float]:
    """Position interpolation (Chen et al. 2023, arXiv:2306.15595): frequencies / s."""
    return _to_f32(_plain_inv_freq_f64(head_dim, base) / scaling.factor), 1.0


def _ntk(head_dim: int, base: float, scaling: RopeScaling) -> tuple[jax.Array, float]:
    """Static NTK-aware scaling (bloc97): `base' = base * s^(Dh / (Dh - 2))`."""
    if head_dim <= 2:
        raise ValueError(f"rope_type 'ntk' needs head_dim > 2, got {head_dim}.")
    new_base = base * scaling.factor ** (head_dim / (head_dim - 2))
    return _to_f32(_plain_inv_freq_f64(head_dim, new_base)), 1.0


def _dynamic(
    head_dim: int, base: float, scaling: RopeScaling, seq_len: int | jax.Array | None
) -> tuple[jax.Array, float]:
    """Dynamic NTK (emozilla), a pure function of `seq_len`.

    With `L = max(seq_len, M)` (M = max_position_embeddings, as in Hugging Face; L0 only if M
    is missing) the base becomes `base * (s * L / M - (s - 1))^(Dh / (Dh - 2))`, written here as
    `base * r^(Dh / (Dh - 2))` with `r = 1 + s * (L - M) / M` (the same number, exactly 1 for
    L <= M). For `seq_len <= M` (and for None) the plain frequencies come back bit for bit;
    there is no cache, so a long call cannot leak into a later short one.

    A traced `seq_len` uses `plain * r^(-2k / (Dh - 2))` in float32, equal to `1 / base'^(2k/Dh)`
    up to float32 rounding.
    """
    if head_dim <= 2:
        raise ValueError(f"rope_type 'dynamic' needs head_dim > 2, got {head_dim}.")
    max_pos = scaling.max_position_embeddings or scaling.original_max_position_embeddings
    if max_pos is None:
        raise ValueError(
            "rope_type 'dynamic' needs 'max_position_embeddings' (or, failing that, "
            "'original_max_position_embeddings'); neither is set."
        )
    s = scaling.factor
    plain_Dh2 = _plain_inv_freq_f64(head_dim, base)

    if seq_len is None or _is_static_length(seq_len):
        length = max_pos if seq_len is None else max(int(seq_len), max_pos)
        growth = 1.0 + s * (length - max_pos) / max_pos
        new_base = base * growth ** (head_dim / (head_dim - 2))
        return _to_f32(_plain_inv_freq_f64(head_dim, new_base)), 1.0

    # Traced length: only r depends on it.
    length = jnp.maximum(seq_len, max_pos)
    growth = 1.0 + s * (length - max_pos).astype(jnp.float32) / max_pos
    exponent_Dh2 = _to_f32(np.arange(0, head_dim, 2, dtype=np.float64) / (head_dim - 2))
    plain32_Dh2 = _to_f32(plain_Dh2)
    scaled_Dh2 = plain32_Dh2 * jnp.power(growth, -exponent_Dh2)
    return jnp.where(length > max_pos, scaled_Dh2, plain32_Dh2), 1.0


def _inferred_factor(scaling: RopeScaling) -> float:
    """`factor`, or `max_position_embeddings / original_max_position_embeddings` when None."""
    if scaling.factor is not None:
        return scaling.factor
    l0, max_pos = scaling.original_max_position_embeddings, scaling.max_position_embeddings
    if l0 is None or max_pos is None:
        raise ValueError(
            f"rope_type {scaling.rope_type!r} has 'factor'=None, which needs both "
            "'original_max_position_embeddings' and 'max_position_embeddings' to infer it; got "
            f"{l0!r} and {max_pos!r}."
        )
    factor = max_pos / l0
    if factor < 1.0:
        raise ValueError(
            f"rope_type {scaling.rope_type!r}: inferred 'factor' = max_position_embeddings / "
            f"original_max_position_embeddings = {max_pos} / {l0} is below 1."
        )
    return factor


def _yarn_mscale(s: float, m: float = 1.0) -> float:
    """YaRN's `sqrt(1/t) = 0.1 * m * ln(s) + 1` for s > 1, else 1 (arXiv:2309.00071, eq. 22)."""
    return 1.0 if s <= 1.0 else 0.1 * m * math.log(s) + 1.0


def _yarn(head_dim: int, base: float, scaling: RopeScaling) -> tuple[jax.Array, float]:
    """YaRN (Peng et al. 2023, arXiv:2309.00071): NTK-by-parts ramp plus attention factor.

    `cd(r) = Dh * ln(L0 / (2 pi r)) / (2 ln base)` is the pair index whose wavelength fits r
    times into L0. The ramp runs from `low = cd(beta_fast)` to `high = cd(beta_slow)` (floor and
    ceil when `truncate`, then clipped to [0, Dh - 1] as Hugging Face does); pairs below `low`
    keep their frequency, pairs above `high` are divided by s, and between them
    `inv = plain * (ramp / s + (1 - ramp))`, which is Hugging Face's blend of the interpolated
    and extrapolated frequencies rearranged.

    L0 is `original_max_position_embeddings`, else `max_position_embeddings` (newer Hugging
    Face). Attention factor: `attention_factor` if given; else, if `mscale` and
    `mscale_all_dim` are both nonzero, `mscale(s, mscale) / mscale(s, mscale_all_dim)`
    (DeepSeek); else `0.1 ln s + 1`.
    """
    l0 = scaling.original_max_position_embeddings or scaling.max_position_embeddings
    if l0 is None:
        raise ValueError(
            "rope_type 'yarn' needs 'original_max_position_embeddings' (or "
            "'max_position_embeddings'); neither is set."
        )
    s = _inferred_factor(scaling)
    beta_fast = scaling.beta_fast or _YARN_BETA_FAST
    beta_slow = scaling.beta_slow or _YARN_BETA_SLOW

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(l0 / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # Avoids 0/0 in the ramp, as Hugging Face does.

    # ramp 0 -> keep (extrapolate), ramp 1 -> divide by s (interpolate).
    ramp_Dh2 = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    inv_freq_Dh2 = _plain_inv_freq_f64(head_dim, base) * (ramp_Dh2 / s + (1.0 - ramp_Dh2))

    if scaling.attention_factor is not None:
        attention_factor = scaling.attention_factor
    elif scaling.mscale and scaling.mscale_all_dim:
        attention_factor = _yarn_mscale(s, scaling.mscale) / _yarn_mscale(
            s, scaling.mscale_all_dim
        )
    else:
        attention_factor = _yarn_mscale(s)
    return _to_f32(inv_freq_Dh2), float(attention_factor)


def _longrope(
    head_dim: int, base: float, scaling: RopeScaling, seq_len: int | jax.Array | None
) -> tuple[jax.Array, float]:
    """LongRoPE (Ding et al. 2024, arXiv:2402.13753), as Phi-3 uses it.

    `inv_freq[k] = plain[k] / ext[k]` with `ext = long_factor` when `seq_len > L0` (strictly)
    and `short_factor` otherwise, including `seq_len = None` (Hugging Face's behaviour before
    any length is known). L0 is `original_max_position_embeddings`, else
    `max_position_embeddings`. Attention factor: `attention_factor` if given, else
    `sqrt(1 + ln s / ln L0)` for s > 1 and 1 otherwise, where s is `factor` or, when that is
    None, `max_position_embeddings / original_max_position_embeddings`. Hugging Face (v4.4x)
    instead always prefers the ratio when the model config has `original_max_position_embeddings`;
    here an explicit factor wins.
    """
    l0 = scaling.original_max_position_embeddings or scaling.max_position_embeddings
    if l0 is None:
        raise ValueError(
            "rope_type 'longrope' needs 'original_max_position_embeddings' (or "
            "'max_position_embeddings'); neither is set."
        )
    for name in ("short_factor", "long_factor"):
        got = len(getattr(scaling, name))
        if got != head_dim // 2:
            raise ValueError(
                f"rope_type 'longrope': '{name}' must have head_dim / 2 = {head_dim // 2} "
                f"entries (one per rotary pair), got {got}."
            )

    s = _inferred_factor(scaling)
    if scaling.attention_factor is not None:
        attention_factor = scaling.attention_factor
    elif s <= 1.0:
        attention_factor = 1.0
    else:
        if l0 < 2:
            raise ValueError(
                f"rope_type 'longrope' needs an L0 >= 2 for its attention factor, got {l0}."
            )
        attention_factor = math.sqrt(1.0 + math.log(s) / math.log(l0))

    plain_Dh2 = _plain_inv_freq_f64(head_dim, base)
    short_Dh2 = _to_f32(plain_Dh2 / np.asarray(scaling.short_factor, dtype=np.float64))
    long_Dh2 = _to_f32(plain_Dh2 / np.asarray(scaling.long_factor, dtype=np.float64))
    if seq_len is None:
        return short_Dh2, float(attention_factor)
    if _is_static_length(seq_len):
        return (long_Dh2 if seq_len > l0 else short_Dh2), float(attention_factor)
    return jnp.where(seq_len > l0, long_Dh2, short_Dh2), float(attention_factor)


def _llama3(head_dim: int, base: float, scaling: RopeScaling) -> tuple[jax.Array, float]:
    """Llama 3.1 rule (arXiv:2407.21783; Meta's reference code and Hugging Face).

    With wavelength `wl = 2 pi / inv`, `high_wl = L0 / high_freq_factor`,
    `low_wl = L0 / low_freq_factor`: `wl < high_wl` keeps the frequency, `wl > low_wl` divides
    it by s, and in between (both edges included)
    `inv * ((1 - smooth) / s + smooth)`, `smooth = (L0 / wl - low_freq_factor) /
    (high_freq_factor - low_freq_factor)`. Attention factor 1.
    """
    s = scaling.factor
    l0 = scaling.original_max_position_embeddings
    low_ff, high_ff = scaling.low_freq_factor, scaling.high_freq_factor

    plain_Dh2 = _plain_inv_freq_f64(head_dim, base)
    wavelen_Dh2 = 2 * math.pi / plain_Dh2
    smooth_Dh2 = (l0 / wavelen_Dh2 - low_ff) / (high_ff - low_ff)
    inv_freq_Dh2 = np.where(
        wavelen_Dh2 < l0 / high_ff,
        plain_Dh2,
        np.where(
            wavelen_Dh2 > l0 / low_ff,
            plain_Dh2 / s,
            plain_Dh2 * ((1.0 - smooth_Dh2) / s + smooth_Dh2),
        ),
    )
    return _to_f32(inv_freq_Dh2), 1.0


def inv_freq_and_scale(
    head_dim: int,
    base: float,
    scaling: RopeScaling,
    seq_len: int | jax.Array | None = None,
) -> tuple[jax.Array, float | jax.Array]:
    """Inverse frequencies and attention factor of a RoPE scaling rule.

    Args:
      head_dim: rotary dimension Dh (for partial rotary, the rotated part only), even.
      base: RoPE base ("rope_theta"), > 1.
      scaling: the rule and its settings.
      seq_len: current sequence length, i.e. the largest position + 1. Only `dynamic` and
        `longrope` read it; it may be a Python int or an integer jax scalar, traced under
        `jax.jit`. None means "not longer than the model's context".

    Returns:
      `(inv_freq_Dh2, attention_factor)`: float32 array of shape [Dh/2], and a Python float that
      the caller multiplies into cos and sin (so logits scale by its square).

    Raises:
      ValueError: bad head_dim, base, seq_len or settings, naming the value and what is
        accepted.
    """
    _check_head_dim_and_base(head_dim, base)
    if not isinstance(scaling, RopeScaling):
        raise ValueError(f"scaling must be a RopeScaling, got {type(scaling).__name__}.")
    if seq_len is not None:
        _is_static_length(seq_len)  # Validates; the rules that read it branch on it again.
    base = float(base)

    rope_type = scaling.rope_type
    if rope_type == "default":
        return default_inv_freq(head_dim, base), 1.0
    if rope_type == "linear":
        return _linear(head_dim, base, scaling)
    if rope_type == "ntk":
        return _ntk(head_dim, base, scaling)
    if rope_type == "dynamic":
        return _dynamic(head_dim, base, scaling, seq_len)
    if rope_type == "yarn":
        return _yarn(head_dim, base, scaling)
    if rope_type == "longrope":
        return _longrope(head_dim, base, scaling, seq_len)
    if rope_type == "llama3":
        return _llama3(head_dim, base, scaling)
    raise ValueError(f"Unknown rope_type {rope_type!r}; accepted: {', '.join(ROPE_TYPES)}.")
