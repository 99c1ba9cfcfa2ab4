"""The same logits on an 8-device CPU mesh, in several layouts, as on one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.model import build_model, flat_params, place
from jaxdiff.parallel import check_sharding_coverage, logical_to_spec, make_mesh, replicated_report, use_mesh
from tests.model import tiny

LAYOUTS = [
    {"data": 2, "fsdp": 2, "expert": 2},
    {"tensor": 2, "expert": 4},
    {"fsdp": 4, "tensor": 2},
]


def _forward(model, tokens, attention):
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, tokens):
        return nnx.merge(graphdef, state)(tokens, attention=attention, block_size=4,
                                          prompt_lengths=jnp.array([5, 3]))

    return f(state, tokens)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "x".join(f"{k}{v}" for k, v in l.items()))
@pytest.mark.parametrize("attention", ["causal", "block"])
def test_sharded_logits_match_single_device(layout, attention):
    assert jax.device_count() == 8
    cfg = tiny.moe(mlp_only_layers=(1,))
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 16)))
    ref = np.asarray(_forward(build_model(cfg, seed=1), tokens, attention))
    mesh = make_mesh(layout)
    model = build_model(cfg, seed=1)
    with use_mesh(mesh):
        place(model, mesh)
        out = _forward(model, tokens, attention)
    params = flat_params(model)
    expert_w = params["model.layers.0.mlp.experts.gate_proj.weight"]
    assert len(expert_w.sharding.device_set) == 8
    if layout.get("expert", 1) > 1:  # experts really split over the expert axis
        assert expert_w.addressable_shards[0].data.shape[0] == cfg.num_experts // layout["expert"]
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


def test_rules_skip_axes_that_do_not_divide():
    mesh = make_mesh({"tensor": 2, "expert": 4})
    # 5 is not divisible by tensor=2 -> stays unsharded; experts=8 over expert=4 -> sharded.
    assert logical_to_spec(("kv_heads", "embed"), (5, 64), mesh) == jax.sharding.PartitionSpec(None, None)
    assert logical_to_spec(("experts", "expert_mlp", "embed"), (8, 32, 64), mesh)[0] == "expert"


def test_coverage_check_reports_replicated_parameters():
    mesh = make_mesh({"fsdp": 8})
    cfg = tiny.dense(hidden_size=1024, intermediate_size=512, num_attention_heads=8, num_key_value_heads=8,
                     head_dim=128, vocab_size=512, num_hidden_layers=1)
    model = build_model(cfg)
    place(model, mesh)
    check_sharding_coverage(flat_params(model), min_bytes=1 << 20)  # all large params sharded
    replicated = {k: jax.device_put(v, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
                  for k, v in flat_params(model).items()}
    report = replicated_report(replicated, min_bytes=1 << 20)
    assert any("model.embed_tokens.weight" in r for r in report)
    with pytest.raises(ValueError, match="fully replicated"):
        check_sharding_coverage(replicated)


def test_make_mesh_errors_name_the_axis():
    with pytest.raises(ValueError, match="unknown axis"):
        make_mesh({"model": 2})
    with pytest.raises(ValueError, match="need 16 devices"):
        make_mesh({"data": 16})
    assert make_mesh({"data": -1, "tensor": 2}).shape["data"] == 4
