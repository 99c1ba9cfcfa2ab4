"""Sampling a block-diffusion model: the block cache is exact by construction (it holds exactly the
clean blocks a noisy block may see), so its sample equals the uncached one, where every step runs the
training layout x0 ⊕ xt under the block-diffusion visibility; and `generate` picks both by default
for a model the block-diffusion objective trained."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.model import build_model
from jaxdiff.sample import generate
from jaxdiff.sample.sampler import resolve_attention
from tests.model import tiny

MASK, EOS = 255, 3


@pytest.fixture(scope="module")
def bd_model():
    model = build_model(tiny.dense(mask_token_id=MASK, eos_token_id=EOS), seed=3)
    model.objective_kind, model.objective_block_size = "block_diffusion", 4   # as the builder sets them
    return model


def test_block_cache_sample_equals_the_uncached_block_diffusion_sample(bd_model):
    x = np.random.RandomState(5).randint(4, 200, (3, 6)).astype(np.int32)
    mask = np.ones_like(x, bool)
    mask[0, :2] = mask[2, :4] = False          # mixed prompt lengths, left-padded
    kw = dict(gen_length=8, block_length=4, policy="threshold:0.02", prompt_mask=mask, stop_at_eos=False)
    assert resolve_attention(bd_model, "auto", 4) == "block_diffusion"
    ref, s_ref = generate(bd_model, x, attention="block_diffusion", cache="none", **kw)
    out, s_out = generate(bd_model, x, **kw)   # auto: block_diffusion attention, block cache
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    assert not (np.asarray(out)[:, 6:] == MASK).any()
    assert s_out.steps == s_ref.steps > 2        # threshold decoding, per block, as for any model
    # the block cache: + 1 prompt pass + 1 commit pass per finished block but the last
    assert s_out.forward_passes == s_ref.forward_passes + 1 + 1


def test_attention_choices_are_checked(bd_model):
    with pytest.raises(ValueError, match="attention='causal'"):
        generate(bd_model, jnp.ones((1, 3), jnp.int32), gen_length=4, block_length=4, attention="causal")
    with pytest.raises(ValueError, match="cache='dual' is Fast-dLLM's cache"):
        generate(bd_model, jnp.ones((1, 3), jnp.int32), gen_length=4, block_length=4, cache="dual")
    plain = build_model(tiny.dense(mask_token_id=MASK), seed=0)
    assert resolve_attention(plain, "auto", 4) == "bidirectional"       # a masked-diffusion model
