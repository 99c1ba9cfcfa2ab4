"""Each shipped config validates and builds its model, adapters and shardings abstractly
(`nnx.eval_shape`: no weights, no memory), on an 8-device mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import qwen3_0_6b, qwen3_coder_30b_a3b, tiny_coder
from jaxdiff.model import ModelConfig, Qwen3
from jaxdiff.model.lora import HEADS, add_length_head, add_lora
from jaxdiff.model.mask_token import add_mask_token
from jaxdiff.parallel import make_mesh
from jaxdiff.train import config as cfg_lib
from jaxdiff.train import state as st


def _abstract(c, mcfg, dtype):
    def build():
        m = Qwen3(mcfg, dtype=dtype, rngs=nnx.Rngs(0))
        add_mask_token(m, mask_token_id=151669)
        for h in HEADS:
            add_lora(m, h, cfg_lib.lora_spec(c, h))
        add_length_head(m, cfg_lib.length_edges(c), hidden=c.length_head.hidden)
        return m
    return nnx.eval_shape(build)


@pytest.mark.parametrize("module, params_b, dtype", [(qwen3_coder_30b_a3b, 30.5, jnp.bfloat16),
                                                     (qwen3_0_6b, 0.596, jnp.bfloat16)])
def test_large_configs_build_abstractly(module, params_b, dtype):
    c = module.get_config()
    c.model.checkpoint = "/ckpt/placeholder"
    cfg_lib.validate(c)
    mcfg = ModelConfig.from_hf(module.reference_hf_config())
    model = _abstract(c, mcfg, dtype)
    _, frozen, trainable = st.split(model)
    n_base = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(frozen) if x.dtype != jnp.float32 or x.ndim > 1)
    assert abs(n_base / 1e9 - params_b) / params_b < 0.02, n_base
    ranks = {np.asarray(x.shape).min() for x in jax.tree.leaves(trainable) if x.ndim == 2}
    assert c.lora.diffusion.rank in ranks and c.lora.length.rank in ranks
    mesh = make_mesh({"fsdp": 2, "expert": 4} if mcfg.is_moe else {"fsdp": 4, "tensor": 2})
    shard = st.state_shardings(frozen, mesh)
    if mcfg.is_moe:  # FP8 experts split over the expert axis
        w = frozen["model"]["layers"][0]["mlp"]["experts"]["gate_proj"]["weight"]
        assert w.dtype == jnp.float8_e4m3fn
        assert shard["model"]["layers"][0]["mlp"]["experts"]["gate_proj"]["weight"].spec[0] == "expert"


def test_tiny_config_validates_and_bad_variant_is_named():
    cfg_lib.validate(tiny_coder.get_config())
    cfg_lib.validate(tiny_coder.get_config("runlocal"))
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        tiny_coder.get_config("huge")
