"""Sharded training on the 8 fake CPU devices of tests/conftest.py.

On a (data 2, fsdp 2, tensor 2) mesh every registered scheme must give the loss and the
gradients of one device, and arrays must land where the logical axis rules say. The
model is tiny (width 32, 4 heads, 1 layer, 16 positions, batch 8) so that the whole file
costs three compilations for the sixteen-odd schemes plus a few for the train step.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import default as default_config
from configs import gpu as gpu_config
from configs import tpu as tpu_config
from pe_jax import data, model, schemes, sharding, train

ALL = schemes.names()
MESH_2x2x2 = {"mesh_data": 2, "mesh_fsdp": 2, "mesh_tensor": 2}
BATCH_SPLIT = ("data", "fsdp")  # the batch axis is split over both
# XLA:CPU without its LLVM optimisations compiles these graphs about twice as fast.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compiled(fn, *args, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs)`` compiled for ``args`` with ``FAST_COMPILE``."""
    return jax.jit(fn, **jit_kwargs).lower(*args).compile(FAST_COMPILE)


def tiny(pe: str = "rope", **overrides) -> ml_collections.ConfigDict:
    config = default_config.get_config()
    config.update(dict(pe=pe, d_model=32, num_layers=1, num_heads=4, seq_len=16,
                       batch_size=8, num_steps=4, warmup_steps=0))  # lr > 0 at step 0
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def batch():
    tokens = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)
    return data.train_batch(tokens, 0, 8, 16, 0)


def _loss_fn(decoder):
    def loss(params, batch_):
        logits = decoder.apply({"params": params}, batch_["inputs"], batch_["positions"])
        return jnp.mean(train.cross_entropy(logits, batch_["targets"]))

    return loss


# --- mesh and rules ---------------------------------------------------------------


def test_mesh_data_minus_one_takes_the_devices_the_other_axes_leave():
    assert sharding.mesh_shape(-1, 2, 1, 8) == (4, 2, 1)
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"mesh_data": -1, "mesh_tensor": 2}))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    assert dict(sharding.make_mesh().shape) == {"data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize(
    "sizes, message",
    [((2, 2, 4, 8), "needs 16 devices, but only 8"),
     ((-1, 3, 1, 8), "not divisible by mesh_fsdp \\* mesh_tensor = 3"),
     ((0, 1, 1, 8), "mesh_data must be a positive integer or -1, got 0"),
     ((1, 0, 1, 8), "mesh_fsdp must be a positive integer, got 0")],
)
def test_impossible_meshes_are_refused_naming_the_sizes(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding.mesh_shape(*sizes)


def test_rules_come_from_the_config_json_lists_included():
    assert sharding.rules_from_config(tiny()) == sharding.DEFAULT_RULES
    as_json = ml_collections.ConfigDict(
        {"logical_axis_rules": [["batch", ["data", "fsdp"]], ["heads", "tensor"], ["kv", None]]}
    )
    assert sharding.rules_from_config(as_json) == (
        ("batch", ("data", "fsdp")), ("heads", "tensor"), ("kv", None))
    with pytest.raises(ValueError, match=r"unknown mesh axes \['model'\]"):
        sharding.rules_from_config(
            ml_collections.ConfigDict({"logical_axis_rules": (("heads", "model"),)}))


def test_logical_names_map_to_mesh_axes_and_uneven_dims_stay_whole():
    mesh = sharding.make_mesh(ml_collections.ConfigDict(MESH_2x2x2))
    rules = sharding.DEFAULT_RULES
    spec = sharding.logical_sharding(("embed", "qkv", "heads", "kv"), mesh, rules).spec
    assert spec == P("fsdp", None, "tensor", None)
    # 3 heads do not split over 2 devices: that dimension is replicated, not padded.
    uneven = sharding.logical_sharding(("embed", "heads"), mesh, rules, shape=(32, 3)).spec
    assert uneven == P("fsdp", None)


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 6, **MESH_2x2x2}, "batch_size 6 is not divisible by mesh_data \\* "
                                      "mesh_fsdp = 4"),
    ({"mesh_tensor": 0}, "mesh_tensor must be a positive integer, got 0"),
    ({"loss_scale": "static"}, "loss_scale must be one of"),
])
def test_bad_sharding_and_precision_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        train.validate(tiny(**overrides))


def test_tpu_and_gpu_configs_load_and_validate():
    for module in (tpu_config, gpu_config):
        config = module.get_config()
        train.validate(config)
        assert config.compute_dtype == "bfloat16"
    assert sharding.make_mesh(tpu_config.get_config()).size == 8  # the 8 fake devices


# --- every scheme on the mesh -----------------------------------------------------


@pytest.fixture(scope="module")
def every_scheme(batch):
    """Loss and gradients of every scheme on one device and on the 2x2x2 mesh.

    One compilation per side for all schemes together (each scheme on its own would
    cost a minute on two shared cores).
    """
    decoders = {pe: model.Decoder(train.model_config(tiny(pe))) for pe in ALL}
    init_args = (jax.random.key(0), batch["inputs"], batch["positions"])

    def init_all(key, tokens, positions):
        return {pe: d.init(key, tokens, positions)["params"] for pe, d in decoders.items()}

    def grads_all(params, batch_):
        return {pe: jax.value_and_grad(_loss_fn(decoders[pe]))(params[pe], batch_)
                for pe in decoders}

    boxed = jax.eval_shape(init_all, *init_args)

    def one_device(key, tokens, positions, batch_):
        params = nn.unbox(init_all(key, tokens, positions))
        return params, grads_all(params, batch_)

    params, reference = compiled(one_device, *init_args, batch)(*init_args, batch)

    mesh = sharding.make_mesh(ml_collections.ConfigDict(MESH_2x2x2))
    rules = sharding.DEFAULT_RULES
    param_shardings = sharding.tree_shardings(boxed, mesh, rules)
    batch_shardings = sharding.batch_shardings(batch, mesh, rules)

    def sharded_grads(params_, batch_):
        with sharding.rules_in_effect(mesh, rules):
            return grads_all(params_, batch_)

    args = (jax.device_put(params, param_shardings), sharding.put_batch(batch, batch_shardings))
    sharded = compiled(
        sharded_grads, *args,
        in_shardings=(param_shardings, batch_shardings),
        out_shardings={pe: (None, param_shardings[pe]) for pe in ALL},
    )(*args)
    return params, reference, sharded, param_shardings


@pytest.mark.parametrize("pe", ALL)
def test_loss_and_grads_on_a_2x2x2_mesh_equal_one_device(pe, every_scheme):
    _, reference, sharded, _ = every_scheme
    (loss_1, grads_1), (loss_8, grads_8) = reference[pe], sharded[pe]
    assert len(loss_8.sharding.device_set) == 8
    # float32, same math in another order (partial sums across devices): 1e-5.
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5, atol=1e-5)
    for (path, g1), g8 in zip(jax.tree_util.tree_leaves_with_path(grads_1),
                              jax.tree.leaves(grads_8)):
        np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-5, atol=1e-5,
                                   err_msg=f"{pe}: {jax.tree_util.keystr(path)}")


def test_gradients_come_back_in_the_shardings_of_their_parameters(every_scheme):
    _, _, sharded, param_shardings = every_scheme
    for pe in ALL:
        got = jax.tree.map(lambda g: g.sharding.spec, sharded[pe][1])
        want = jax.tree.map(lambda s: s.spec, param_shardings[pe])
        assert got == want, pe
        # Scheme parameters carry no logical names: replicated everywhere.
        for spec in jax.tree.leaves(want.get("scheme", {}),
                                    is_leaf=lambda x: isinstance(x, P)):
            assert all(axis is None for axis in spec), (pe, spec)


def _constraints(jaxpr):
    """``(shape, spec)`` of every sharding constraint, nested jaxprs included."""
    from jax.extend.core import jaxprs_in_params

    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "sharding_constraint":
            yield eqn.invars[0].aval.shape, eqn.params["sharding"].spec
        for sub in jaxprs_in_params(eqn.params):
            yield from _constraints(sub)


@pytest.mark.parametrize("pe", ALL)
def test_positions_and_biases_are_split_along_batch_and_heads(pe):
    """Traced only (no compilation): the constraints the model puts on its arrays."""
    config = tiny(pe, **MESH_2x2x2)
    mesh, rules = sharding.make_mesh(config), sharding.rules_from_config(config)
    decoder = model.Decoder(train.model_config(config))
    tokens = jnp.zeros((8, 16), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (8, 16))
    params = nn.unbox(jax.eval_shape(decoder.init, jax.random.key(0), tokens, positions))

    def forward(params_, tokens_, positions_):
        with sharding.rules_in_effect(mesh, rules):
            return decoder.apply(params_, tokens_, positions_)

    found = list(_constraints(jax.make_jaxpr(forward)(params, tokens, positions).jaxpr))
    assert ((8, 16), P(BATCH_SPLIT, None)) in found  # the positions
    head_axis = [spec for shape, spec in found if shape == (8, 4, 16, 16)]
    uses_bias = "bias" in schemes.get(pe).cls.enters_at
    assert len(head_axis) == (2 if uses_bias else 1), (pe, head_axis)  # bias, logits
    assert all(spec == P(BATCH_SPLIT, "tensor", None, None) for spec in head_axis)
    assert ((8, 16, 256), P(BATCH_SPLIT, None, "tensor")) in found  # output logits


# --- the train step ---------------------------------------------------------------


@pytest.fixture(scope="module")
def one_step(batch):
    """One train step of T5 (a replicated scheme table) on the 2x2x2 mesh."""
    config = tiny("t5", **MESH_2x2x2)
    mesh, rules = sharding.make_mesh(config), sharding.rules_from_config(config)
    state = train.create_state(config, train.model_config(config), mesh, rules)
    shardings = train.state_shardings(state)
    batch_shardings = sharding.batch_shardings(batch, mesh, rules)
    step = train.make_train_step(shardings, batch_shardings, mesh, rules)
    new_state, metrics = step(state, sharding.put_batch(batch, batch_shardings))
    return config, state, shardings, new_state, metrics


def test_train_step_on_the_mesh_equals_one_device(one_step, every_scheme):
    """The one-device side: ``every_scheme``'s gradients (the same seed gives the same
    initial parameters) through the same optimizer."""
    config, _, _, new_state, metrics = one_step
    params, reference, _, _ = every_scheme
    loss_1, grads_1 = reference["t5"]
    np.testing.assert_allclose(metrics["loss"], loss_1, rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads_1), rtol=1e-5)
    tx = train.make_optimizer(config)

    def adam_step(grads, params_):
        updates, _ = tx.update(grads, tx.init(params_), params_)
        return optax.apply_updates(params_, updates)

    expected = compiled(adam_step, grads_1, params["t5"])(grads_1, params["t5"])
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(new_state.params),
                            jax.tree.leaves(expected)):
        # Adam's first step moves each weight by about lr * sign(g): compare absolutely.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))


def test_train_step_places_state_and_metrics_as_the_rules_say(one_step):
    _, state, shardings, new_state, metrics = one_step
    specs = jax.tree.map(lambda x: x.sharding.spec, new_state.params)
    assert specs["embed"]["embedding"] == P("tensor", "fsdp")  # (vocab, embed)
    attn = specs["block_0"]["attn"]
    assert attn["qkv"]["kernel"] == P("fsdp", None, "tensor", None)  # (embed, qkv, heads, kv)
    assert attn["out"]["kernel"] == P("tensor", None, "fsdp")  # (heads, kv, embed)
    assert specs["block_0"]["mlp_in"]["kernel"] == P("fsdp", "tensor")  # (embed, mlp)
    assert specs["block_0"]["mlp_in"]["bias"] == P("tensor")
    assert specs["block_0"]["mlp_out"]["kernel"] == P("tensor", "fsdp")
    assert specs["head"]["kernel"] == P("fsdp", "tensor")  # (embed, vocab)
    assert specs["block_0"]["attn_norm"]["scale"] == P(None)
    assert new_state.params["scheme"]["table"].sharding.is_fully_replicated

    # Adam's moments follow their parameters; everything keeps its sharding.
    adam = new_state.opt_state[1][0]
    assert adam.mu["block_0"]["attn"]["qkv"]["kernel"].sharding.spec == attn["qkv"]["kernel"]
    assert jax.tree.map(lambda x: x.sharding, new_state) == shardings
    for value in metrics.values():
        assert value.sharding.is_fully_replicated and len(value.sharding.device_set) == 8
    # The state was donated to the step.
    assert state.params["head"]["kernel"].is_deleted()


@functools.lru_cache(maxsize=1)
def _alibi_forward_case():
    """Shared by both variants: the model, its boxed parameters, one-device logits."""
    config = tiny("alibi", **MESH_2x2x2)
    decoder = model.Decoder(train.model_config(config))
    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, 256)
    positions = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (8, 16))
    boxed = decoder.init(jax.random.key(0), tokens, positions)
    expected = decoder.apply(nn.unbox(boxed), tokens, positions)
    return config, decoder, tokens, positions, boxed, expected


class ShardedForwardTest(chex.TestCase):
    """The forward pass on the mesh, traced by jit and run op by op."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_alibi_logits_on_the_mesh_equal_one_device_and_split_as_the_rules_say(self):
        config, decoder, tokens, positions, boxed, expected = _alibi_forward_case()
        mesh, rules = sharding.make_mesh(config), sharding.rules_from_config(config)
        params = nn.unbox(boxed)

        @self.variant
        def forward(params_, tokens_, positions_):
            with sharding.rules_in_effect(mesh, rules):
                return decoder.apply(params_, tokens_, positions_)

        placed = jax.device_put(params, sharding.tree_shardings(boxed, mesh, rules))
        batch_sharding = sharding.logical_sharding(sharding.BATCH_AXES, mesh, rules)
        logits = forward(placed, jax.device_put(tokens, batch_sharding),
                         jax.device_put(positions, batch_sharding))
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
        assert logits.sharding.spec == P(BATCH_SPLIT, None, "tensor")
