"""config.model.checkpoint may name a training workdir: the run starts from that run's trained model
(every weight, mask row included) with its tokenizer, and keeps full training."""
import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiff import builder
from jaxdiff.config import load_config_file, schema
from tests.workdir_fixtures import ROOT, make_workdir


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("pre") / "run")


def _sft_config(checkpoint, workdir):
    c = load_config_file(os.path.join(ROOT, "configs", "sft_synthetic.py:runlocal"))
    c.model.checkpoint, c.workdir = str(checkpoint), str(workdir)
    return c


def test_a_workdir_as_model_checkpoint_gives_its_trained_model_and_tokenizer(pretrained, tmp_path):
    model0, tok0, _ = builder.load_workdir(pretrained)
    c = _sft_config(pretrained, tmp_path / "sft")
    schema.validate(c)
    tok = builder.tokenizer_for(c, str(tmp_path / "sft"))
    assert tok.get_vocab() == tok0.get_vocab() and not os.path.exists(tmp_path / "sft" / "tokenizer")
    model = builder.build_model_from_config(c, tok)
    assert model.config.mask_token_id == model0.config.mask_token_id == tok.convert_tokens_to_ids("<|mask|>")
    want, got = nnx.to_flat_state(nnx.state(model0)), nnx.to_flat_state(nnx.state(model))
    assert [k for k, _ in want] == [k for k, _ in got]
    for (k, a), (_, b) in zip(want, got):
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(k))
    # the saved weights, not a fresh init from the same seed (the fixture scaled them by 1.5)
    fresh = builder.build_model_from_config(load_config_file(os.path.join(ROOT, "configs", "tiny_coder.py:runlocal")), tok0)
    q = lambda m: np.asarray(m.model.layers[0].self_attn.q_proj.weight[...])  # noqa: E731
    np.testing.assert_allclose(q(model), 1.5 * q(fresh), rtol=1e-6)
    # full training: every weight is trainable, nothing frozen
    _, frozen, trainable = builder.split(model, full_training=True)
    assert not jax.tree.leaves(frozen) and len(jax.tree.leaves(trainable)) == len(want)


def test_a_lora_run_workdir_is_refused_naming_the_field(tmp_path):
    lora_run = make_workdir(tmp_path / "lora", full_training=False)
    c = _sft_config(lora_run, tmp_path / "sft")
    tok = builder.tokenizer_for(c, str(tmp_path / "sft"))
    with pytest.raises(schema.ConfigValueError, match="config.model.checkpoint=.*full-training"):
        builder.build_model_from_config(c, tok)


def test_the_saved_objective_sets_the_samplers_default_attention(pretrained):
    """A workdir's saved config says which objective trained it; the model the builder rebuilds
    carries it, and `generate`'s attention="auto" follows it (block_diffusion: the block cache)."""
    from jaxdiff.sample.sampler import resolve_attention

    saved = builder.saved_run_config(pretrained)
    assert saved.objective.kind == "masked"                    # the default, also for older workdirs
    saved.objective.kind, saved.objective.block_size = "block_diffusion", 4
    model, _, _ = builder.load_workdir(pretrained, config=saved)
    assert (model.objective_kind, model.objective_block_size) == ("block_diffusion", 4)
    assert resolve_attention(model, "auto", 4) == "block_diffusion"


def test_saved_config_holds_absolute_local_paths(tmp_path, monkeypatch):
    """A workdir trained from `runs/sft` (relative) loads from any directory: the saved config has
    the path made absolute; hub names and absent paths stay as given."""
    import json

    from jaxdiff.checkpoint import workdir as wd
    from jaxdiff.config import get_config

    monkeypatch.chdir(tmp_path)
    os.makedirs("runs/sft")
    c = get_config()
    c.model.checkpoint, c.tokenizer.path, c.data.path = "runs/sft", "Qwen/Qwen3-0.6B", "runs/missing.jsonl"
    saved = json.loads(wd.config_json(c))
    assert saved["model"]["checkpoint"] == str(tmp_path / "runs" / "sft")
    assert saved["tokenizer"]["path"] == "Qwen/Qwen3-0.6B" and saved["data"]["path"] == "runs/missing.jsonl"
