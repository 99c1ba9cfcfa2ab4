"""HF <-> jaxdiff conversion: bit-exact round trips, FP8, sharded restore, and bad inputs."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxdiff
from jaxdiff.checkpoint import fp8
from jaxdiff.checkpoint.safetensors_io import INDEX, SafetensorsFolder
from jaxdiff.model import flat_params
from jaxdiff.parallel import make_mesh
from tests.hf_fixtures import make_fp8_checkpoint, make_hf_checkpoint
from tools import convert_hf, export_hf, inspect_checkpoint

KINDS = {
    "dense-tied": ("dense", dict(tie_word_embeddings=True), None),
    "moe-mlp-only-sparse-step": ("moe", dict(mlp_only_layers=[1], decoder_sparse_step=1, norm_topk_prob=True), None),
    "moe-sharded": ("moe", dict(num_hidden_layers=2), "60KB"),
}


def _assert_same_hf_folder(a: str, b: str):
    fa, fb = SafetensorsFolder.open(a), SafetensorsFolder.open(b)
    assert fa.weight_map == fb.weight_map                      # same names, same file for each
    for name in fa.tensors:
        x, y = fa.array(name), fb.array(name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name                # bit-exact
    assert os.path.exists(os.path.join(a, INDEX)) == os.path.exists(os.path.join(b, INDEX))


@pytest.mark.parametrize("name", sorted(KINDS))
def test_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path, name):
    kind, kw, shard = KINDS[name]
    src = make_hf_checkpoint(tmp_path, kind, max_shard_size=shard, **kw)
    if shard:
        assert len(set(SafetensorsFolder.open(src).weight_map.values())) > 1
    assert convert_hf.main(["--hf_dir", src, "--out_dir", str(tmp_path / "jd"), "--quiet"]) == 0
    assert export_hf.main(["--ckpt_dir", str(tmp_path / "jd"), "--out_dir", str(tmp_path / "back"), "--quiet"]) == 0
    _assert_same_hf_folder(src, str(tmp_path / "back"))
    from transformers import AutoModelForCausalLM
    tokens = torch.tensor(np.random.RandomState(0).randint(0, 320, (2, 11)))
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(src).eval()(tokens).logits
        out = AutoModelForCausalLM.from_pretrained(str(tmp_path / "back")).eval()(tokens).logits
    assert torch.equal(ref, out)
    # and the converted checkpoint computes what transformers computes
    logits = np.asarray(jaxdiff.load_model(str(tmp_path / "jd"))(jnp.asarray(tokens.numpy())))
    assert np.abs(logits - ref.numpy()).max() <= 1e-4


@pytest.mark.parametrize("hidden", [64, 256])
def test_fp8_checkpoint_loads_within_e4m3_rounding_and_round_trips(tmp_path, hidden):
    src = make_hf_checkpoint(tmp_path, "moe", hidden_size=hidden, num_hidden_layers=2, mlp_only_layers=[0],
                             max_shard_size="200KB")
    fp8_dir = make_fp8_checkpoint(src, str(tmp_path / "fp8"))
    folder = SafetensorsFolder.open(fp8_dir)
    assert folder.tensors["model.layers.0.self_attn.q_proj.weight"].dtype == fp8.E4M3
    # kept as FP8 + scales
    kept = jaxdiff.load_model(fp8_dir)
    params = flat_params(kept)
    assert params["model.layers.1.mlp.experts.gate_proj.weight"].dtype == jnp.float8_e4m3fn
    assert "model.layers.1.mlp.experts.gate_proj.weight_scale_inv" in params
    # dequantized: within e4m3 rounding of the source weights
    deq = flat_params(jaxdiff.load_model(fp8_dir, dtype="float32"))
    source = flat_params(jaxdiff.load_model(src))
    quantized = {k[: -len("_scale_inv")] for k in params if k.endswith("weight_scale_inv")}
    assert len(quantized) == 1 * 4 + 3 + 1 * 4 + 3  # layer 0 dense: qkvo + mlp; layer 1: qkvo + experts
    for k, w in source.items():
        w, d = np.asarray(w), np.asarray(deq[k])
        if k in quantized:
            _, scale = fp8.quantize(w)   # per-block scale the checkpoint used
            tiny = fp8._expand(scale, w.shape, (128, 128)) * 2.0 ** -9   # e4m3 subnormal spacing
            assert np.all(np.abs(d - w) <= 2.0 ** -4 * np.abs(w) + tiny), k
            assert not np.array_equal(d, w)   # really quantized
        else:
            np.testing.assert_array_equal(d, w)   # norms, router, embeddings, lm_head untouched
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 320, (2, 9)))
    np.testing.assert_allclose(np.asarray(kept(tokens)), np.asarray(jaxdiff.load_model(fp8_dir, dtype="float32")(tokens)),
                               atol=1e-5)
    # HF -> jaxdiff -> HF keeps FP8 bit-exact; --dtype float32 dequantizes
    assert convert_hf.main(["--hf_dir", fp8_dir, "--out_dir", str(tmp_path / "jd"), "--quiet"]) == 0
    assert export_hf.main(["--ckpt_dir", str(tmp_path / "jd"), "--out_dir", str(tmp_path / "back"), "--quiet"]) == 0
    _assert_same_hf_folder(fp8_dir, str(tmp_path / "back"))
    with open(tmp_path / "back" / "config.json") as f:
        assert json.load(f)["quantization_config"]["weight_block_size"] == [128, 128]
    assert convert_hf.main(["--hf_dir", fp8_dir, "--out_dir", str(tmp_path / "jd32"), "--dtype", "float32",
                            "--quiet"]) == 0
    m32 = jaxdiff.load_model(str(tmp_path / "jd32"))
    assert m32.config.fp8_block_size is None
    p32 = flat_params(m32)
    assert not any(k.endswith("weight_scale_inv") for k in p32)
    np.testing.assert_array_equal(np.asarray(p32["model.layers.0.self_attn.q_proj.weight"]),
                                  np.asarray(deq["model.layers.0.self_attn.q_proj.weight"]))


def test_restore_directly_sharded_on_a_mesh(tmp_path):
    src = make_hf_checkpoint(tmp_path, "moe", num_hidden_layers=2)
    convert_hf.main(["--hf_dir", src, "--out_dir", str(tmp_path / "jd"), "--quiet"])
    mesh = make_mesh({"fsdp": 2, "expert": 4})
    model = jaxdiff.load_model(str(tmp_path / "jd"), mesh=mesh)
    w = flat_params(model)["model.layers.0.mlp.experts.up_proj.weight"]
    assert w.sharding.spec[0] == "expert" and w.addressable_shards[0].data.shape[0] == 2
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 320, (2, 9)))
    ref = np.asarray(jaxdiff.load_model(src)(tokens))
    from jaxdiff.parallel import use_mesh
    with use_mesh(mesh):
        out = np.asarray(jax.jit(lambda t: model(t))(tokens))
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_inspect_prints_tree_and_differences(tmp_path, capsys):
    src = make_hf_checkpoint(tmp_path, "moe", num_hidden_layers=1)
    convert_hf.main(["--hf_dir", src, "--out_dir", str(tmp_path / "jd"), "--quiet"])
    assert inspect_checkpoint.main([src]) == 0
    out = capsys.readouterr().out
    assert "model.layers.0.mlp.experts.gate_proj.weight  [8, 96, 64]" not in out  # shapes are [E, F, D]
    assert "model.layers.0.mlp.experts.gate_proj.weight" in out and "[8, 32, 64]" in out
    assert inspect_checkpoint.main([src, str(tmp_path / "jd")]) == 0
    other = make_hf_checkpoint(tmp_path, "moe", name="other", num_hidden_layers=1, moe_intermediate_size=16)
    assert inspect_checkpoint.main([src, other]) == 1
    assert "~ model.layers.0.mlp.experts.gate_proj.weight [8, 32, 64] float32 -> [8, 16, 64]" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad inputs
def _no_output_left(tmp_path, out="out"):
    left = [p for p in os.listdir(tmp_path) if p.startswith(out)]
    assert left == [], f"conversion left {left}"


def _convert_fails(tmp_path, src, capsys, *expected):
    rc = convert_hf.main(["--hf_dir", src, "--out_dir", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    for e in expected:
        assert e in err, err
    _no_output_left(tmp_path)
    return err


def test_missing_shard(tmp_path, capsys):
    src = make_hf_checkpoint(tmp_path, "moe", num_hidden_layers=2, max_shard_size="60KB")
    victim = sorted(set(SafetensorsFolder.open(src).weight_map.values()))[1]
    os.remove(os.path.join(src, victim))
    _convert_fails(tmp_path, src, capsys, victim, "missing")


def test_truncated_file(tmp_path, capsys):
    src = make_hf_checkpoint(tmp_path, "dense")
    path = os.path.join(src, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    _convert_fails(tmp_path, src, capsys, "model.safetensors", "truncated")


def test_wrong_architecture(tmp_path, capsys):
    src = make_hf_checkpoint(tmp_path, "dense")
    cfg_path = os.path.join(src, "config.json")
    cfg = json.load(open(cfg_path))
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    json.dump(cfg, open(cfg_path, "w"))
    _convert_fails(tmp_path, src, capsys, "model_type='llama'", "config.json")


def test_unsupported_config_field(tmp_path, capsys):
    src = make_hf_checkpoint(tmp_path, "dense")
    cfg_path = os.path.join(src, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["use_sliding_window"] = True
    cfg["attn_logit_softcapping"] = 30.0
    json.dump(cfg, open(cfg_path, "w"))
    _convert_fails(tmp_path, src, capsys, "attn_logit_softcapping")


def _rewrite(src, edit):
    from jaxdiff.checkpoint.safetensors_io import write_file
    folder = SafetensorsFolder.open(src)
    tensors = {k: np.array(folder.array(k)) for k in folder.tensors}
    edit(tensors)
    write_file(os.path.join(src, "model.safetensors"), tensors)


def test_unknown_and_missing_tensors_are_all_listed(tmp_path, capsys):
    src = make_hf_checkpoint(tmp_path, "moe", num_hidden_layers=1)

    def edit(t):
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(4, np.float32)
        t["model.layers.0.mlp.experts.9.up_proj.weight"] = np.zeros((32, 64), np.float32)
        del t["model.layers.0.mlp.experts.3.down_proj.weight"]
        del t["model.norm.weight"]

    _rewrite(src, edit)
    _convert_fails(tmp_path, src, capsys, "rotary_emb.inv_freq", "experts.9.up_proj.weight",
                   "experts.3.down_proj.weight", "model.norm.weight", "missing 2", "unexpected 2")


def test_wrong_shape_is_named(tmp_path, capsys):
    src = make_hf_checkpoint(tmp_path, "dense")
    _rewrite(src, lambda t: t.update({"model.layers.1.self_attn.k_proj.weight": np.zeros((16, 64), np.float32)}))
    _convert_fails(tmp_path, src, capsys, "model.layers.1.self_attn.k_proj.weight", "[16, 64]")


def test_existing_output_is_not_clobbered(tmp_path, capsys):
    src = make_hf_checkpoint(tmp_path, "dense")
    assert convert_hf.main(["--hf_dir", src, "--out_dir", str(tmp_path / "out"), "--quiet"]) == 0
    before = open(tmp_path / "out" / "jaxdiff.json").read()
    assert convert_hf.main(["--hf_dir", src, "--out_dir", str(tmp_path / "out"), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert open(tmp_path / "out" / "jaxdiff.json").read() == before
    # a failing overwrite leaves the old, valid checkpoint in place
    os.remove(os.path.join(src, "model.safetensors"))
    assert convert_hf.main(["--hf_dir", src, "--out_dir", str(tmp_path / "out"), "--overwrite", "--quiet"]) == 2
    assert open(tmp_path / "out" / "jaxdiff.json").read() == before
    assert [p for p in os.listdir(tmp_path) if ".tmp-" in p] == []


def test_interrupted_conversion_leaves_nothing_valid(tmp_path, monkeypatch):
    from jaxdiff.checkpoint import orbax_io
    src = make_hf_checkpoint(tmp_path, "moe", num_hidden_layers=2)
    calls = {"n": 0}
    real = orbax_io.CheckpointWriter.write_group

    def dying(self, name, flat):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C half way
        return real(self, name, flat)

    monkeypatch.setattr(orbax_io.CheckpointWriter, "write_group", dying)
    with pytest.raises(KeyboardInterrupt):
        convert_hf.main(["--hf_dir", src, "--out_dir", str(tmp_path / "out"), "--quiet"])
    _no_output_left(tmp_path)
    from jaxdiff.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        jaxdiff.load_model(str(tmp_path / "out"))
