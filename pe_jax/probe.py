"""How much absolute position a trained decoder carries at each depth: linear probes.

Axis legend: N layer boundaries (embeddings, then after each block), W windows,
L positions, D model width, T tokens (W x L flattened).

At every boundary ``k = 0 .. num_layers`` (0: token embeddings plus any additive code;
``k``: the residual stream leaving block ``k``) a ridge regression predicts each token's
absolute position from its hidden vector. The held-out text is cut into windows of ``L``
tokens that each start at position 0; the even windows fit the probe, the odd ones
score it, so a probe that memorised its fitting tokens gains nothing. The score is R^2
of the predicted positions (1: position is a linear function of the vector; 0: no
better than predicting the mean position).

The shuffled baseline fits the same probe to the fitting tokens with their positions
permuted, and scores it on the true positions of the scoring windows: what a probe of
this size finds where there is no position to find (about 0, or below).

This measures REFERENCE.md's claims 16-17 (a causal NoPE model learns absolute position
from the causal mask) and the brief's "additive absolute codes fade through depth".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pe_jax import data, model

RIDGE = 1e-3  # on standardised features: enough to keep D-wide solves well conditioned
SPREAD_FLOOR = 1e-4  # relative to the hidden vectors' RMS (see ridge_r2)


def residuals(mcfg: model.ModelConfig, params, tokens_WxL, pos_WxL,
              batch: int = 16) -> np.ndarray:
    """The residual stream at every layer boundary, float64 ``NxWxLxD``."""
    apply = _sown_residuals(mcfg)
    parts = []
    for start in range(0, tokens_WxL.shape[0], batch):
        stop = start + batch
        sown = apply(params, jnp.asarray(tokens_WxL[start:stop]), jnp.asarray(pos_WxL[start:stop]))
        parts.append(np.stack([np.asarray(x, np.float64) for x in sown]))
    return np.concatenate(parts, axis=1)


def _sown_residuals(mcfg: model.ModelConfig):
    decoder = model.Decoder(mcfg)

    @jax.jit
    def apply(params, tokens, positions):
        _, state = decoder.apply({"params": params}, tokens, positions,
                                 mutable=["intermediates"])
        return [x.astype(jnp.float32) for x in state["intermediates"]["residual"]]

    return apply


def ridge_r2(fit_X: np.ndarray, fit_y: np.ndarray, score_X: np.ndarray, score_y: np.ndarray,
             ridge: float = RIDGE) -> float:
    """R^2 on ``(score_X, score_y)`` of a ridge regression fitted on ``(fit_X, fit_y)``.

    Features are standardised with the fitting set's mean and spread; the intercept is
    the fitting set's mean target. The spread has a floor of ``SPREAD_FLOOR`` times the
    vectors' overall scale, so that a feature that is constant up to float32 rounding
    is not blown up into a signal (rounding noise of a mean over ``t`` equal values
    depends on ``t``, and an unfloored probe reads position out of it).
    """
    scale = np.sqrt(np.mean(fit_X**2))
    mean, spread = fit_X.mean(0), fit_X.std(0) + SPREAD_FLOOR * scale + 1e-30
    a, b = (fit_X - mean) / spread, (score_X - mean) / spread
    y_mean = fit_y.mean()
    gram = a.T @ a / len(a) + ridge * np.eye(a.shape[1])
    weights = np.linalg.solve(gram, a.T @ (fit_y - y_mean) / len(a))
    predicted = b @ weights + y_mean
    total = np.sum((score_y - score_y.mean()) ** 2)
    return float(1.0 - np.sum((score_y - predicted) ** 2) / total)


def position_probe(mcfg: model.ModelConfig, params, val_tokens: np.ndarray, length: int,
                   windows: int = 64, seed: int = 0) -> dict:
    """Probe R^2 per layer boundary, and the shuffled baseline.

    Returns ``{"r2": [N floats], "shuffled": [N floats], "windows": W, "length": L}``.
    """
    if windows < 2:
        raise ValueError(f"the probe needs at least 2 windows (fit and score), got {windows}")
    if length < 2:
        raise ValueError(f"the probe needs windows of at least 2 positions, got length {length}")
    if len(val_tokens) < windows * length + 1:
        raise ValueError(
            f"the probe's {windows} windows of {length} tokens need {windows * length + 1} "
            f"held-out tokens; the text has {len(val_tokens)}"
        )
    batch = data.eval_windows(val_tokens, length, windows * length)
    hidden_NxWxLxD = residuals(mcfg, params, batch["inputs"], batch["positions"])
    pos_WxL = batch["positions"].astype(np.float64)
    fit, score = slice(0, None, 2), slice(1, None, 2)
    fit_y, score_y = pos_WxL[fit].reshape(-1), pos_WxL[score].reshape(-1)
    shuffled_y = np.random.default_rng(seed).permutation(fit_y)
    width = hidden_NxWxLxD.shape[-1]
    r2, shuffled = [], []
    for hidden_WxLxD in hidden_NxWxLxD:
        fit_X = hidden_WxLxD[fit].reshape(-1, width)
        score_X = hidden_WxLxD[score].reshape(-1, width)
        r2.append(ridge_r2(fit_X, fit_y, score_X, score_y))
        shuffled.append(ridge_r2(fit_X, shuffled_y, score_X, score_y))
    return {"r2": r2, "shuffled": shuffled, "windows": int(hidden_NxWxLxD.shape[1]),
            "length": length}
