"""The <|mask|> token: a spare embedding row, mean-initialised, recorded in the config."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.model import build_model, flat_params
from jaxdiff.model.mask_token import MASK_TOKEN, add_mask_token
from tests.model import tiny


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["def f(x):\n    return x + 1\n"] * 20,
                            trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<|endoftext|>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def test_mask_token_takes_the_next_spare_row_with_the_mean_embedding():
    tok = _tokenizer()
    n = len(tok)
    model = build_model(tiny.dense(vocab_size=n + 16))
    table = np.asarray(flat_params(model)["model.embed_tokens.weight"])
    mid = add_mask_token(model, tokenizer=tok)
    assert mid == n and tok.convert_tokens_to_ids(MASK_TOKEN) == n and model.config.mask_token_id == n
    new = np.asarray(flat_params(model)["model.embed_tokens.weight"])
    np.testing.assert_allclose(new[mid], table[:n].mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.delete(new, mid, 0), np.delete(table, mid, 0))
    assert add_mask_token(model, tokenizer=tok) == mid   # idempotent


def test_trainable_mask_row_is_its_own_variable():
    model = build_model(tiny.dense())
    add_mask_token(model, mask_token_id=250, trainable=True)
    model.model.embed_tokens.mask_vector.set_value(jnp.full((64,), 3.0))
    x = model.model.embed_tokens(jnp.array([[250, 1]]), 250)
    np.testing.assert_array_equal(np.asarray(x[0, 0]), np.full(64, 3.0))


def test_mask_token_must_fit_the_embedding():
    with pytest.raises(ValueError, match="outside the embedding"):
        add_mask_token(build_model(tiny.dense()), mask_token_id=256)
