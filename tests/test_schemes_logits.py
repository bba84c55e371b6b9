"""Tests of the schemes that enter through the logits hook: Shaw, DeBERTa and CoPE
(REFERENCE.md sections 8, 9 and 12).

Expected numbers are copied from REFERENCE.md, worked out by hand in the comments, or
computed here by small float64 numpy oracles written from the formulas; none comes from
the code under test.

Tolerances: whole-model comparisons that only reorder integer position arithmetic are
held to 1e-5 (float32, a few layers); comparisons of one float32 hook against a float64
oracle use 1e-5 relative (sums of a few dozen float32 products); claims that are exact by
construction (zero tables, bucket ids, sums of halves) are compared bit for bit.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pe_jax import model, schemes
from pe_jax.schemes import base, cope, deberta, shaw
from tests import helpers

SCHEMES = ["shaw", "deberta", "cope"]
OPTIONS = {"shaw": {"shaw_values": True, "shaw_clip": 3}, "deberta": {}, "cope": {}}
LENGTH = 8
PER_LAYER = {"shaw": ("key_table", "value_table"), "deberta": ("pos_key", "pos_query"),
             "cope": ("table",)}  # parameters stacked along a leading layer axis
VARIANTS = {"eager": lambda f, **kw: f, "jit": jax.jit}  # kw: static_argnums


def _cfg(name, **overrides):
    return helpers.tiny_config(name, **{**OPTIONS[name], **overrides})


@functools.lru_cache(maxsize=None)
def _model(name, dtype="float32"):
    """Decoder, params with the scheme's parameters drawn at random, tokens, positions
    and ``apply``.

    The draws (std 0.5) replace the init values so that every scheme has a live
    positional term (CoPE's table starts at zero). ``apply`` runs eagerly: on two CPU
    cores the per-operation cache shared by all tests is cheaper than one compilation
    per scheme.
    """
    if dtype != "float32":  # parameters are float32 whatever the compute dtype
        _, params, tokens, positions, _ = _model(name)
        decoder = model.Decoder(_cfg(name, compute_dtype=dtype))
        return decoder, params, tokens, positions, decoder.apply
    decoder, params, tokens, positions = helpers.init(_cfg(name), length=LENGTH)
    params = dict(params)
    params["scheme"] = _random_like(params["scheme"], seed=7)
    return decoder, params, tokens, positions, decoder.apply


def _random_like(tree, seed, std=0.5):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(std * rng.normal(size=x.shape), jnp.float32), tree)


def _zero_scheme(params):
    out = dict(params)
    out["scheme"] = jax.tree.map(jnp.zeros_like, params["scheme"])
    return out


def _scheme(name, dims, **options):
    """A scheme module and random parameters of the shapes its init would give."""
    options = {**HOOK_OPTIONS[name], **options}
    module = schemes.build(name, dims, ml_collections.ConfigDict(options))
    b, l, h, d = 1, dims.max_len, dims.num_heads, dims.head_dim
    pos = jax.ShapeDtypeStruct((b, l), jnp.int32)
    qk = jax.ShapeDtypeStruct((b, l, h, d), jnp.float32)
    shapes = jax.eval_shape(
        functools.partial(module.init, method="logits"), jax.random.key(0),
        jax.ShapeDtypeStruct((b, h, l, l), jnp.float32), qk, qk, pos, pos,
        jax.ShapeDtypeStruct((b, l, l), bool), 0,
    )
    return module, _random_like(shapes, seed=11)


DIMS = base.ModelDims(d_model=16, num_heads=2, head_dim=8, num_layers=2, max_len=6)
# Small tables for hook-level tests, so that positions up to ~100 reach every regime
# (Shaw's clip, DeBERTa's log buckets and clamp, CoPE's cap).
HOOK_OPTIONS = {"shaw": {"shaw_clip": 3, "shaw_values": True},
                "deberta": {"deberta_buckets": 8, "deberta_max_position": 32},
                "cope": {"cope_npos": 8}}


# --------------------------------------------------------------------------------------
# Contracts shared by the three schemes.


@pytest.mark.parametrize("name", SCHEMES)
def test_hook_returns_float32_logits_for_bfloat16_q_and_k(name):
    module, variables = _scheme(name, DIMS)
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.normal(size=(2, 6, 2, 8)), jnp.bfloat16) for _ in range(2))
    pos = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (2, 6))
    mask = model.causal_mask(pos, pos)
    out = module.apply(variables, jnp.zeros((2, 2, 6, 6), jnp.bfloat16), q, k, pos, pos,
                       mask, 1, method="logits")
    chex.assert_shape(out, (2, 2, 6, 6))
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("name", SCHEMES)
def test_hook_under_jit_grad_and_vmap_agrees_with_eager(name):
    """At the hook, where compiling is cheap. (The whole decoder under jit, grad and vmap
    is covered for every registered scheme by test_all_schemes; eager gradients of the
    whole decoder are taken by the causality test below.)"""
    module, variables = _scheme(name, DIMS)
    rng = np.random.default_rng(6)
    q, k = (jnp.asarray(rng.normal(size=(2, 6, 2, 8)), jnp.float32) for _ in range(2))
    logits = jnp.asarray(rng.normal(size=(2, 2, 6, 6)), jnp.float32)
    pos = jnp.asarray(np.sort(rng.integers(0, 40, size=(2, 6)), axis=-1), jnp.int32)
    mask = model.causal_mask(pos, pos)

    def loss(v, q_, k_, layer):
        out = module.apply(v, logits, q_, k_, pos, pos, mask, layer, method="logits")
        return jnp.sum(jnp.where(mask[:, None], out, 0.0) ** 2)

    eager = module.apply(variables, logits, q, k, pos, pos, mask, 1, method="logits")
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(
        variables, q, k, jnp.int32(1))  # a traced layer index
    # Same math, fused differently by XLA: float32 rounding only.
    np.testing.assert_allclose(value, jnp.sum(jnp.where(mask[:, None], eager, 0.0) ** 2),
                               rtol=1e-5)
    chex.assert_tree_all_finite(grads)
    param_grads, q_grad, k_grad = grads
    assert float(jnp.abs(q_grad).max()) > 0
    if name == "deberta":  # Shaw and CoPE see k only through the logits they are given
        assert float(jnp.abs(k_grad).max()) > 0
    for path, g in jax.tree_util.tree_leaves_with_path(param_grads["params"]):
        leaf = path[0].key
        if leaf == "value_table":  # read by the values hook only (covered by the model)
            continue
        if leaf in PER_LAYER[name]:  # the layer argument picks one slice of the stack
            assert float(jnp.abs(g[1]).max()) > 0 and float(jnp.abs(g[0]).max()) == 0, leaf
        else:
            assert float(jnp.abs(g).max()) > 0, leaf

    # vmap over single rows equals the batched call (rounding only).
    def one_row(q_, k_, logits_, pos_, mask_):
        return module.apply(variables, logits_[None], q_[None], k_[None], pos_[None],
                            pos_[None], mask_[None], 1, method="logits")[0]

    per_row = jax.vmap(one_row)(q, k, logits, pos, mask)
    np.testing.assert_allclose(per_row, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SCHEMES)
def test_model_logits_unchanged_when_all_positions_shift_by_a_constant(name):
    decoder, params, tokens, positions, apply = _model(name)
    reference = apply({"params": params}, tokens, positions)
    shifted = positions + jnp.array([[5], [1000]], jnp.int32)  # a different shift per row
    # The schemes read only differences of positions (CoPE none at all), so the only
    # change allowed is float32 noise; in practice the results are identical.
    np.testing.assert_allclose(apply({"params": params}, tokens, shifted), reference,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("bad", ["float", "rank1"])
def test_hook_refuses_positions_of_wrong_dtype_or_rank(name, bad):
    module, variables = _scheme(name, DIMS)
    pos = jnp.arange(6, dtype=jnp.int32)[None]
    bad_pos = pos.astype(jnp.float32) if bad == "float" else pos[0]
    q = jnp.ones((1, 6, 2, 8))
    mask = jnp.ones((1, 6, 6), bool)
    match = "integer" if bad == "float" else "shape"
    with pytest.raises(ValueError, match=f"positions must .*{match}"):
        module.apply(variables, jnp.zeros((1, 2, 6, 6)), q, q, bad_pos, pos, mask, 0,
                     method="logits")
    with pytest.raises(ValueError, match=f"positions must .*{match}"):
        module.apply(variables, jnp.zeros((1, 2, 6, 6)), q, q, pos, bad_pos, mask, 0,
                     method="logits")


@pytest.mark.parametrize("name", SCHEMES)
def test_default_config_keys_build_the_scheme(name):
    from configs import default

    config = default.get_config()
    options = schemes.get(name).make_options(config)
    assert options == schemes.get(name).make_options(None)  # config defaults = code defaults


# --------------------------------------------------------------------------------------
# Shaw (REFERENCE.md section 8).


def test_shaw_index_matrix_matches_reference_for_L4_k2():
    expected = np.array([[2, 3, 4, 4], [1, 2, 3, 4], [0, 1, 2, 3], [0, 0, 1, 2]])
    for start in (0, 100):  # the rows depend on differences only
        pos = jnp.arange(start, start + 4, dtype=jnp.int32)[None]
        np.testing.assert_array_equal(shaw.relative_index(pos, pos, 2)[0], expected)


def test_shaw_distances_beyond_clip_share_the_edge_rows():
    pos = jnp.arange(12, dtype=jnp.int32)[None]
    idx = np.asarray(shaw.relative_index(pos, pos, 3)[0])
    distance = np.arange(12)[None, :] - np.arange(12)[:, None]  # j - i
    np.testing.assert_array_equal(idx[distance <= -3], 0)
    np.testing.assert_array_equal(idx[distance >= 3], 6)
    inside = np.abs(distance) < 3
    np.testing.assert_array_equal(idx[inside], distance[inside] + 3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shaw_gathered_terms_equal_naive_einsum_over_gathered_table(variant):
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 7, 3, 4)).astype(np.float32)
    probs = rng.dirichlet(np.ones(9), size=(2, 3, 7)).astype(np.float32)  # 2x3x7x9
    table = rng.normal(size=(5, 4)).astype(np.float32)  # k = 2
    q_pos = np.array([[0, 1, 2, 5, 6, 9, 20], [3, 4, 5, 6, 7, 8, 9]], np.int32)
    k_pos = np.array([[0, 1, 2, 3, 5, 6, 9, 20, 21], [0, 2, 4, 6, 8, 10, 12, 14, 16]], np.int32)

    idx = np.clip(k_pos[:, None, :] - q_pos[:, :, None], -2, 2) + 2  # oracle: j - i, clipped
    gathered = table.astype(np.float64)[idx]  # 2x7x9x4, the memory-hungry form
    naive_key = np.einsum("blhd,blkd->bhlk", q.astype(np.float64), gathered)
    naive_value = np.einsum("bhlk,blkd->blhd", probs.astype(np.float64), gathered)

    index_fn = VARIANTS[variant](shaw.relative_index, static_argnums=2)
    got_idx = index_fn(jnp.asarray(q_pos), jnp.asarray(k_pos), 2)
    np.testing.assert_array_equal(got_idx, idx)
    key = VARIANTS[variant](shaw.key_term)(q, table, got_idx)
    value = VARIANTS[variant](shaw.value_term)(probs, table, got_idx)
    np.testing.assert_allclose(key, naive_key, rtol=1e-5, atol=1e-5)  # float32 sums of 4
    np.testing.assert_allclose(value, naive_value, rtol=1e-5, atol=1e-6)  # sums of 9


def test_shaw_logit_term_is_scaled_like_content_logits():
    module, variables = _scheme("shaw", DIMS, shaw_clip=2, shaw_values=False)
    rng = np.random.default_rng(2)
    table = rng.normal(size=(2, 5, 8)).astype(np.float32)
    variables = {"params": {"key_table": jnp.asarray(table)}}
    q = rng.normal(size=(1, 6, 2, 8)).astype(np.float32)
    pos = jnp.arange(6, dtype=jnp.int32)[None]
    out = module.apply(variables, jnp.zeros((1, 2, 6, 6)), q, q, pos, pos,
                       jnp.ones((1, 6, 6), bool), 1, method="logits")
    idx = np.clip(np.arange(6)[None, :] - np.arange(6)[:, None], -2, 2) + 2
    expected = np.einsum("lhd,lkd->hlk", q[0].astype(np.float64), table[1][idx]) / math.sqrt(8)
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)  # layer 1's table


def test_shaw_with_zero_tables_equals_nope_exactly():
    decoder, params, tokens, positions, apply = _model("shaw")
    zero = apply({"params": _zero_scheme(params)}, tokens, positions)
    nope = model.Decoder(helpers.tiny_config("none")).apply
    plain = {k: v for k, v in params.items() if k != "scheme"}
    # Adding exact zeros to the logits and to the attention output changes no bit.
    np.testing.assert_array_equal(zero, nope({"params": plain}, tokens, positions))


@pytest.mark.parametrize("clip", [0, -3])
def test_shaw_nonpositive_clip_is_refused_naming_the_value(clip):
    with pytest.raises(ValueError, match=f"shaw_clip must be a positive integer, got {clip}"):
        schemes.get("shaw").make_options(ml_collections.ConfigDict({"shaw_clip": clip}))
    with pytest.raises(ValueError, match="shaw_clip"):
        model.Decoder(helpers.tiny_config("shaw", shaw_clip=clip)).init(
            jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.arange(4)[None])


def test_shaw_values_must_be_a_bool():
    with pytest.raises(ValueError, match="shaw_values"):
        shaw.options_from_config({"shaw_values": "yes"})


# --------------------------------------------------------------------------------------
# DeBERTa (REFERENCE.md section 9).

BUCKETS_256_512 = {  # rel -> bucket, bucket_size=256, max_position=512 (REFERENCE)
    0: 0, 1: 1, -1: -1, 127: 127, 128: 128, 129: 129, 130: 130, 200: 169, 255: 192,
    256: 192, 300: 207, 511: 255, 512: 256, 1000: 317, -129: -129, -130: -130,
    -511: -255, -1000: -317,
}
BUCKETS_8_32 = {  # bucket_size=8, max_position=32 (REFERENCE)
    0: 0, 3: 3, 4: 4, 5: 5, 6: 5, 8: 6, 10: 6, 16: 7, 31: 7, 32: 8, 100: 9, -5: -5, -16: -7,
}


def _np_log_bucket(r, size, max_position):
    """Float64 oracle written from REFERENCE.md section 9."""
    mid = size // 2
    r = np.asarray(r, np.int64)
    dist = np.maximum(np.abs(r), mid).astype(np.float64)
    far = mid + np.ceil(np.log(dist / mid) / np.log((max_position - 1) / mid) * (mid - 1))
    return np.where(np.abs(r) <= mid, r, np.sign(r) * far).astype(np.int64)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size,max_position,table", [(256, 512, BUCKETS_256_512),
                                                     (8, 32, BUCKETS_8_32)])
def test_deberta_log_buckets_match_reference_tables(variant, size, max_position, table):
    fn = VARIANTS[variant](lambda r: deberta.log_bucket_position(r, size, max_position))
    got = fn(jnp.array(list(table), jnp.int32))
    chex.assert_type(got, jnp.int32)
    np.testing.assert_array_equal(got, list(table.values()))  # integers: exact


@pytest.mark.parametrize("size,max_position",
                         [(8, 32), (64, 512), (256, 512), (6, 13), (10, 35), (12, 22)])
def test_deberta_buckets_are_odd_monotone_and_exact_near_zero(size, max_position):
    r = np.arange(-3 * max_position, 3 * max_position + 1)
    got = np.asarray(deberta.log_bucket_position(jnp.asarray(r, jnp.int32), size, max_position))
    np.testing.assert_array_equal(got, -got[::-1])  # b(-r) = -b(r)
    assert np.all(np.diff(got) >= 0)
    near = np.abs(r) <= size // 2
    np.testing.assert_array_equal(got[near], r[near])
    # Up to max_position the float64 formula decides. (6, 13) puts |r| = 6 and 12 on
    # exact integer ratios, ln(2)/ln(4) * 2 = 1 and 2; for (10, 35) and (12, 22) a plain
    # float32 evaluation gives one bucket too many at |r| = M - 1 (34 and 21).
    upto = np.abs(r) <= max_position
    np.testing.assert_array_equal(got[upto], _np_log_bucket(r[upto], size, max_position))


def test_deberta_c2p_rows_match_reference_for_att_span_256():
    opts = deberta.DebertaOptions(buckets=256, max_position=512)
    q_pos = jnp.array([[1000]], jnp.int32)
    k_pos = jnp.array([[1000, 2000, 0]], jnp.int32)  # delta = q - k = 0, -1000, 1000
    np.testing.assert_array_equal(deberta.relative_rows(q_pos, k_pos, opts)[0, 0],
                                  [256, 0, 511])  # 511 is clamped from 573


def _random_deberta(rng, size=8, max_position=32):
    module, variables = _scheme("deberta", DIMS, deberta_buckets=size,
                                deberta_max_position=max_position)
    return module, _random_like(variables, seed=int(rng.integers(1000)), std=1.0)


def test_deberta_with_zero_rel_embeddings_logits_are_c2c_over_sqrt_3d():
    rng = np.random.default_rng(3)
    module, variables = _random_deberta(rng)
    params = dict(variables["params"])
    params["rel_embeddings"] = jnp.zeros_like(params["rel_embeddings"])
    params["rel_norm"] = {"scale": params["rel_norm"]["scale"],
                          "bias": jnp.zeros_like(params["rel_norm"]["bias"])}
    q = rng.normal(size=(2, 6, 2, 8)).astype(np.float32)
    k = rng.normal(size=(2, 6, 2, 8)).astype(np.float32)
    pos = jnp.asarray(rng.integers(0, 50, size=(2, 6)), jnp.int32)
    c2c = np.einsum("blhd,bkhd->bhlk", q.astype(np.float64), k.astype(np.float64))
    attend_logits = jnp.asarray(c2c / math.sqrt(8), jnp.float32)  # what attend passes in
    out = module.apply({"params": params}, attend_logits, q, k, pos, pos,
                       jnp.ones((2, 6, 6), bool), 0, method="logits")
    # 1/sqrt(3d), not 1/sqrt(d); float32 rounding of two products only.
    np.testing.assert_allclose(out, c2c / math.sqrt(3 * 8), rtol=1e-6, atol=1e-6)


def test_deberta_position_terms_match_a_loop_over_pairs():
    """c2p reads bucket(pos_i - pos_j), p2c reads bucket(pos_j - pos_i): a sign slip in
    either shows up here because the positions are asymmetric and reach the clamp."""
    rng = np.random.default_rng(4)
    size, max_position, d = 8, 32, 8
    module, variables = _random_deberta(rng, size, max_position)
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"])
    q = rng.normal(size=(1, 5, 2, d)).astype(np.float32)
    k = rng.normal(size=(1, 7, 2, d)).astype(np.float32)
    q_pos = np.array([[3, 10, 17, 40, 90]], np.int32)
    k_pos = np.array([[0, 2, 3, 9, 18, 41, 60]], np.int32)
    layer = 1

    rel = p["rel_embeddings"]
    mean, var = rel.mean(-1, keepdims=True), rel.var(-1, keepdims=True)
    rel = (rel - mean) / np.sqrt(var + 1e-7) * p["rel_norm"]["scale"] + p["rel_norm"]["bias"]
    k_rel = np.einsum("rd,dhe->rhe", rel, p["pos_key"][layer])
    q_rel = np.einsum("rd,dhe->rhe", rel, p["pos_query"][layer])

    expected = np.zeros((2, 5, 7))
    for i in range(5):
        for j in range(7):
            c2p_row = np.clip(_np_log_bucket(q_pos[0, i] - k_pos[0, j], size, max_position)
                              + size, 0, 2 * size - 1)
            p2c_row = np.clip(_np_log_bucket(k_pos[0, j] - q_pos[0, i], size, max_position)
                              + size, 0, 2 * size - 1)
            for h in range(2):
                expected[h, i, j] = (q[0, i, h] @ k_rel[c2p_row, h]
                                     + k[0, j, h] @ q_rel[p2c_row, h]) / math.sqrt(3 * d)

    out = module.apply(variables, jnp.zeros((1, 2, 5, 7)), q, k, jnp.asarray(q_pos),
                       jnp.asarray(k_pos), jnp.ones((1, 5, 7), bool), layer, method="logits")
    # LayerNorm plus two projections in float32 against float64: 1e-5 relative.
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)


def test_deberta_bad_options_are_refused_naming_them():
    with pytest.raises(ValueError, match="deberta_buckets must be at least 2, got 1"):
        deberta.options_from_config({"deberta_buckets": 1})
    with pytest.raises(ValueError, match="deberta_max_position .* got 5"):
        deberta.options_from_config({"deberta_buckets": 8, "deberta_max_position": 5})


# --------------------------------------------------------------------------------------
# CoPE (REFERENCE.md section 12).


def _toy_cope():
    """One layer, one head, Dh 2, npos 4, e[:, 0] = [1, 2, 4, 8], q = [1, 0]:
    then z_i[p] = q . e[p] = [1, 2, 4, 8]."""
    dims = base.ModelDims(d_model=2, num_heads=1, head_dim=2, num_layers=1, max_len=3)
    module, _ = _scheme("cope", dims, cope_npos=4)
    table = np.array([[[1.0, 5.0], [2.0, 5.0], [4.0, 5.0], [8.0, 5.0]]], np.float32)
    q = jnp.array([[[[1.0, 0.0]]] * 3], jnp.float32)  # 1x3x1x2
    return module, {"params": {"table": jnp.asarray(table)}}, q


@pytest.mark.parametrize("variant", VARIANTS)
def test_cope_toy_vector_from_reference(variant):
    module, variables, q = _toy_cope()
    pos = jnp.arange(3, dtype=jnp.int32)[None]
    mask = model.causal_mask(pos, pos)
    logits = jnp.zeros((1, 1, 3, 3))  # scaled logits [0, 0, 0] -> every gate is 0.5

    positions = VARIANTS[variant](cope.contextual_positions, static_argnums=2)(logits, mask, 4)
    np.testing.assert_array_equal(positions[0, 0, 2], [1.5, 1.0, 0.5])  # sums of halves: exact

    apply = VARIANTS[variant](functools.partial(module.apply, method="logits"))
    out = apply(variables, logits, q, q, pos, pos, mask, 0)
    # p = 1.5: (z[1] + z[2]) / 2 = 3; p = 1: z[1] = 2; p = 0.5: (z[0] + z[1]) / 2 = 1.5.
    np.testing.assert_array_equal(out[0, 0, 2], [3.0, 2.0, 1.5])
    # Row 0 sees only itself: p_00 = g_00 = 0.5 (not 0) -> (z[0] + z[1]) / 2 = 1.5.
    np.testing.assert_array_equal(out[0, 0, 0, 0], 1.5)


def test_cope_counts_follow_the_gates_and_ignore_hidden_keys():
    pos = jnp.arange(6, dtype=jnp.int32)[None]
    mask = model.causal_mask(pos, pos)
    tril = np.tril(np.ones((6, 6), bool))
    i, j = np.indices((6, 6))

    # All gates 1 (logits +30: sigmoid rounds to 1 in float32): p_ij = i - j + 1.
    p = np.asarray(cope.contextual_positions(jnp.full((1, 1, 6, 6), 30.0), mask, 64))[0, 0]
    np.testing.assert_array_equal(p[tril], (i - j + 1)[tril])
    # All gates ~0 (logits -30): p -> 0 (below 1e-12 each, six of them).
    p = np.asarray(cope.contextual_positions(jnp.full((1, 1, 6, 6), -30.0), mask, 64))[0, 0]
    assert np.all(p < 1e-11)
    # The cap: p never exceeds npos - 1.
    p = np.asarray(cope.contextual_positions(jnp.full((1, 1, 6, 6), 30.0), mask, 3))[0, 0]
    np.testing.assert_array_equal(p[tril], np.minimum(i - j + 1, 2)[tril])

    # Hidden (future) keys count for nothing, whatever their logits.
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(1, 1, 6, 6)).astype(np.float32)
    future = np.where(tril, logits, rng.normal(size=(6, 6)) * 50).astype(np.float32)
    a = cope.contextual_positions(jnp.asarray(logits), mask, 64)
    b = cope.contextual_positions(jnp.asarray(future), mask, 64)
    np.testing.assert_array_equal(np.asarray(a)[0, 0][tril], np.asarray(b)[0, 0][tril])
    # The diagonal holds the query's own gate, and masked entries are 0.
    np.testing.assert_allclose(np.diag(np.asarray(a)[0, 0]),
                               1 / (1 + np.exp(-np.diag(logits[0, 0].astype(np.float64)))),
                               rtol=1e-6)  # float32 sigmoid
    np.testing.assert_array_equal(np.asarray(a)[0, 0][~tril], 0.0)


def test_cope_with_zero_table_equals_nope_exactly():
    decoder, params, tokens, positions, apply = _model("cope")
    zero = apply({"params": _zero_scheme(params)}, tokens, positions)
    nope = model.Decoder(helpers.tiny_config("none")).apply
    plain = {k: v for k, v in params.items() if k != "scheme"}
    # q . 0 interpolated is exactly 0, so the logits do not change by a bit.
    np.testing.assert_array_equal(zero, nope({"params": plain}, tokens, positions))


def test_cope_table_starts_at_zero():
    module = schemes.build("cope", DIMS, None)
    pos = jnp.zeros((1, 6), jnp.int32)
    q = jnp.zeros((1, 6, 2, 8))
    init = jax.jit(functools.partial(module.init, method="logits"))
    variables = init(jax.random.key(0), jnp.zeros((1, 2, 6, 6)), q, q, pos, pos,
                     jnp.ones((1, 6, 6), bool), 0)
    chex.assert_shape(variables["params"]["table"], (2, 64, 8))  # [N, cope_npos, Dh]
    np.testing.assert_array_equal(variables["params"]["table"], 0.0)


@pytest.mark.parametrize("npos", [0, -1])
def test_cope_nonpositive_npos_is_refused_naming_the_value(npos):
    with pytest.raises(ValueError, match=f"cope_npos must be a positive integer, got {npos}"):
        cope.options_from_config({"cope_npos": npos})
