"""attention="block_diffusion": the x0 ⊕ xt visibility from per-token descriptors (block rank, noisy
flag) equals BD3LM's `block_diff_mask`, and its defining property holds through the model: each
noisy block's logits equal those of a separate forward over [clean prefix, that noisy block] alone at
the same positions, for every attention implementation, several block sizes and prompt lengths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.model import KVCache, ModelOptions, abstract_model, build_model
from jaxdiff.model.attention import allowed_mask
from jaxdiff.model.transformer import block_diffusion_layout, visibility_ranks
from tests.bd3lm_reference import MASK, np_block_diff_mask
from tests.model import tiny


def test_descriptors_give_bd3lm_block_diff_mask():
    length = 12
    valid = jnp.ones((1, 2 * length), bool)
    pos, noisy = block_diffusion_layout(valid)
    np.testing.assert_array_equal(np.asarray(pos)[0], np.tile(np.arange(length), 2))   # xt reuses x0's positions
    for block_size, plen in ((4, 0), (3, 0), (5, 0), (4, 5), (2, 11), (16, 2)):
        rank = visibility_ranks("block_diffusion", pos, block_size=block_size, prompt_lengths=jnp.array([plen]))
        got = np.asarray(allowed_mask(rank, rank, valid, noisy, noisy))[0, 0]
        p = np.arange(length)
        block_id = np.where(p < plen, 0, 1 + (p - plen) // block_size)
        np.testing.assert_array_equal(got, np_block_diff_mask(block_id), err_msg=f"{block_size=} {plen=}")


def test_without_noisy_tokens_the_rule_is_the_rank_rule():
    rs = np.random.RandomState(0)
    q, k = jnp.asarray(rs.randint(0, 4, (2, 5))), jnp.asarray(rs.randint(0, 4, (2, 7)))
    valid = jnp.asarray(rs.rand(2, 7) < 0.8)
    clean = jnp.zeros((2, 5), bool), jnp.zeros((2, 7), bool)
    np.testing.assert_array_equal(np.asarray(allowed_mask(q, k, valid, *clean)), np.asarray(allowed_mask(q, k, valid)))


@pytest.fixture(scope="module")
def base():
    cfg = tiny.dense(mask_token_id=MASK)
    return cfg, nnx.state(build_model(cfg, seed=0))


def _forward(base, impl):
    """A jitted forward of the tiny dense model computing with `impl` (chunk 8: the chunked path
    really runs chunk by chunk on these lengths)."""
    cfg, state = base
    graphdef = nnx.graphdef(abstract_model(cfg, options=ModelOptions(attention_impl=impl, attention_chunk=8)))
    return jax.jit(lambda tokens, **kw: nnx.merge(graphdef, state)(tokens, **kw),
                   static_argnames=("attention", "block_size"))


# the rule is shared by every path; each path builds its masks from the descriptors its own way
@pytest.mark.parametrize("impl, block_sizes", [("reference", (3, 4)), ("chunked", (4,)), ("fused", (3,))])
def test_noisy_block_logits_equal_a_forward_over_its_clean_prefix_alone(base, impl, block_sizes):
    forward = _forward(base, impl)
    rs = np.random.RandomState(1)
    length = 14
    plen = np.array([0, 3, 5, 8])                     # a pretraining row and SFT prompts
    x0 = rs.randint(0, 250, (4, length)).astype(np.int32)
    xt = np.where((rs.rand(4, length) < 0.6) & (np.arange(length)[None] >= plen[:, None]), MASK, x0)
    for block_size in block_sizes:
        both = np.asarray(forward(jnp.asarray(np.concatenate([x0, xt], 1)), attention="block_diffusion",
                                  block_size=block_size, prompt_lengths=jnp.asarray(plen)))
        # every (row, noisy block) as its own row: [x0 before the block, the block of xt], left-padded
        # to `length` (positions skip padding: they are the block's positions in x0 ⊕ xt); then the
        # rows of x0 alone (the clean copy never sees the noisy one: a block-causal forward of x0)
        rows, pads, plens, spans = list(x0), [np.ones(length, bool)] * 4, list(plen), []
        for r in range(4):
            for start in range(plen[r], length, block_size):
                end = min(start + block_size, length)
                rows.append(np.pad(np.concatenate([x0[r, :start], xt[r, start:end]]), (length - end, 0)))
                pads.append(np.arange(length) >= length - end)
                plens.append(plen[r])
                spans.append((r, start, end))
        alone = np.asarray(forward(jnp.asarray(np.stack(rows)), attention="block", block_size=block_size,
                                   prompt_lengths=jnp.asarray(plens), padding_mask=jnp.asarray(np.stack(pads))))
        for i, (r, start, end) in enumerate(spans, start=4):
            np.testing.assert_allclose(both[r, length + start:length + end], alone[i, length - (end - start):],
                                       atol=1e-5, rtol=0, err_msg=f"{impl} {block_size=} row {r} at {start}")
        np.testing.assert_allclose(both[:, :length], alone[:4], atol=1e-5, rtol=0)


def test_block_diffusion_refuses_a_cache_and_an_odd_length(base):
    cfg, state = base
    model = nnx.merge(nnx.graphdef(abstract_model(cfg)), state)
    with pytest.raises(ValueError, match="even length"):
        model(jnp.zeros((1, 5), jnp.int32), attention="block_diffusion", block_size=2)
    with pytest.raises(ValueError, match="decode with attention='block'"):
        model(jnp.zeros((1, 4), jnp.int32), attention="block_diffusion", block_size=2,
              cache=KVCache.empty(model.config, 1, 8))
