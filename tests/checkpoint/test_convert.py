"""HF <-> jaxdiff conversion: bit-exact round trips, FP8, sharded restore, and bad inputs."""
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

import jaxdiff
from jaxdiff.checkpoint import load_params
from jaxdiff.checkpoint import fp8
from jaxdiff.checkpoint.safetensors_io import INDEX, SafetensorsFolder
from jaxdiff.model import flat_params
from jaxdiff.parallel import make_mesh
from tests.hf_fixtures import make_fp8_checkpoint, make_hf_checkpoint
from tools import convert_hf, export_hf, inspect_checkpoint

KINDS = {
    "dense-tied": ("dense", dict(tie_word_embeddings=True), None),
    "dense-untied-bf16": ("dense", dict(tie_word_embeddings=False, torch_dtype=torch.bfloat16), None),
    # layer 1 MoE; layer 3 would be (step 2) but is mlp-only; layers 0 and 2 dense by the step
    "moe-mlp-only-sparse-step": ("moe", dict(num_hidden_layers=4, mlp_only_layers=[3], decoder_sparse_step=2,
                                             norm_topk_prob=True), None),
    "moe-sharded": ("moe", dict(num_hidden_layers=2), "60KB"),
}


def _assert_same_hf_folder(a: str, b: str):
    fa, fb = SafetensorsFolder.open(a), SafetensorsFolder.open(b)
    assert fa.weight_map == fb.weight_map                      # same names, same file for each
    for name in fa.tensors:
        x, y = fa.array(name), fb.array(name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name                # bit-exact
        assert fa.tensors[name].offset == fb.tensors[name].offset, name  # same place in the same file
    assert os.path.exists(os.path.join(a, INDEX)) == os.path.exists(os.path.join(b, INDEX))
    if os.path.exists(os.path.join(a, INDEX)):
        ia, ib = (json.load(open(os.path.join(p, INDEX))) for p in (a, b))
        assert ia == ib                                        # metadata (total_size, ...) included


@pytest.mark.parametrize("name", sorted(KINDS))
def test_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path, name):
    from transformers import AutoModelForCausalLM

    kind, kw, shard = KINDS[name]
    src = make_hf_checkpoint(tmp_path, kind, max_shard_size=shard, **kw)
    if shard:
        assert len(set(SafetensorsFolder.open(src).weight_map.values())) > 1
    assert convert_hf.main(["--hf_dir", src, "--out_dir", str(tmp_path / "jd"), "--quiet"]) == 0
    assert export_hf.main(["--ckpt_dir", str(tmp_path / "jd"), "--out_dir", str(tmp_path / "back"), "--quiet"]) == 0
    _assert_same_hf_folder(src, str(tmp_path / "back"))
    assert json.load(open(tmp_path / "back" / "config.json")) == json.load(open(os.path.join(src, "config.json")))
    # the same parameters whether loaded from the HF folder or the converted checkpoint
    cfg_hf, from_hf = load_params(src)
    cfg_jd, from_jd = load_params(str(tmp_path / "jd"))
    assert cfg_hf == cfg_jd and from_hf.keys() == from_jd.keys()
    for k in from_hf:
        assert from_hf[k].dtype == from_jd[k].dtype and from_hf[k].tobytes() == np.asarray(from_jd[k]).tobytes(), k
    tokens = torch.tensor(np.random.RandomState(0).randint(0, 320, (2, 11)))
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(src).eval()(tokens).logits
        out = AutoModelForCausalLM.from_pretrained(str(tmp_path / "back")).eval()(tokens).logits
        ref32 = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()(tokens).logits
    assert torch.equal(ref, out)
    # and the converted checkpoint computes what transformers computes (fp32)
    logits = np.asarray(jaxdiff.load_model(str(tmp_path / "jd"), dtype="float32")(jnp.asarray(tokens.numpy())))
    assert np.abs(logits - ref32.numpy()).max() <= 1e-4


def _assert_within_e4m3_rounding(w: np.ndarray, d: np.ndarray, scale: np.ndarray, key: str):
    """e4m3 keeps 3 mantissa bits: a normal value rounds within 2^-4 of itself; below e4m3's
    smallest normal (2^-6 in block units) the spacing is 2^-9, so the error is at most 2^-10 of the
    block scale. Zeros stay exactly zero. The 2^-20 term covers float32 rounding of w/s and q*s."""
    w, d = w.astype(np.float64), d.astype(np.float64)
    s = fp8._expand(scale.astype(np.float32), w.shape, (128, 128)).astype(np.float64)
    bound = np.maximum(2.0 ** -4 * np.abs(w), 2.0 ** -10 * s) + 2.0 ** -20 * np.abs(w)
    assert np.all(np.abs(d - w) <= bound), (key, float(np.max(np.abs(d - w) - bound)))
    assert np.all(d[w == 0] == 0), key


# hidden 64: one ragged block; 200: a full and a ragged block (bf16 scales); 256: two full blocks
FP8_CASES = {"h64": (64, np.float32), "h200-bf16-scales": (200, ml_dtypes.bfloat16), "h256": (256, np.float32)}


@pytest.mark.parametrize("case", sorted(FP8_CASES))
def test_fp8_checkpoint_loads_within_e4m3_rounding_and_round_trips(tmp_path, case):
    hidden, scale_dtype = FP8_CASES[case]
    src = make_hf_checkpoint(tmp_path, "moe", hidden_size=hidden, num_hidden_layers=2, mlp_only_layers=[0],
                             max_shard_size="200KB")
    fp8_dir = make_fp8_checkpoint(src, str(tmp_path / "fp8"), scale_dtype=scale_dtype)
    folder = SafetensorsFolder.open(fp8_dir)
    assert folder.tensors["model.layers.0.self_attn.q_proj.weight"].dtype == fp8.E4M3
    assert folder.tensors["model.layers.0.self_attn.q_proj.weight_scale_inv"].dtype == np.dtype(scale_dtype)
    # kept as FP8 + scales (scales as float32 whatever they were stored in)
    kept_cfg, kept = load_params(fp8_dir)
    assert kept_cfg.fp8_block_size == (128, 128)
    assert kept["model.layers.1.mlp.experts.gate_proj.weight"].dtype == fp8.E4M3
    assert kept["model.layers.1.mlp.experts.gate_proj.weight_scale_inv"].dtype == np.float32
    model = jaxdiff.load_model(fp8_dir)
    assert flat_params(model)["model.layers.1.mlp.experts.gate_proj.weight"].dtype == jnp.float8_e4m3fn
    # dequantized: within e4m3 rounding of the source weights, everything else untouched
    deq_cfg, deq = load_params(fp8_dir, dtype="float32")
    assert deq_cfg.fp8_block_size is None and not any(k.endswith("weight_scale_inv") for k in deq)
    _, source = load_params(src)
    quantized = {k[: -len("_scale_inv")] for k in kept if k.endswith("weight_scale_inv")}
    assert len(quantized) == 1 * 4 + 3 + 1 * 4 + 3  # layer 0 dense: qkvo + mlp; layer 1: qkvo + experts
    for k, w in source.items():
        if k in quantized:
            _assert_within_e4m3_rounding(w, deq[k], kept[k + "_scale_inv"], k)
            assert not np.array_equal(deq[k], w), k  # really quantized
        else:
            np.testing.assert_array_equal(deq[k], w, err_msg=k)  # norms, router, embeddings, lm_head
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 320, (2, 9)))
    np.testing.assert_allclose(np.asarray(model(tokens)), np.asarray(jaxdiff.load_model(fp8_dir, dtype="float32")(tokens)),
                               atol=1e-5)
    # HF -> jaxdiff -> HF keeps FP8 bit-exact; --dtype float32 dequantizes
    assert convert_hf.main(["--hf_dir", fp8_dir, "--out_dir", str(tmp_path / "jd"), "--quiet"]) == 0
    assert export_hf.main(["--ckpt_dir", str(tmp_path / "jd"), "--out_dir", str(tmp_path / "back"), "--quiet"]) == 0
    _assert_same_hf_folder(fp8_dir, str(tmp_path / "back"))
    with open(tmp_path / "back" / "config.json") as f:
        assert json.load(f)["quantization_config"]["weight_block_size"] == [128, 128]
    assert convert_hf.main(["--hf_dir", fp8_dir, "--out_dir", str(tmp_path / "jd32"), "--dtype", "float32",
                            "--quiet"]) == 0
    cfg32, p32 = load_params(str(tmp_path / "jd32"))
    assert cfg32.fp8_block_size is None and "quantization_config" not in json.load(open(tmp_path / "jd32" / "config.json"))
    assert p32.keys() == deq.keys()
    for k in p32:
        assert p32[k].dtype == np.float32 and np.array_equal(np.asarray(p32[k]), deq[k]), k


def test_dequantized_export_loads_in_transformers(tmp_path):
    """--dtype float32 of an FP8 folder, exported: plain float32 weights, no quantization_config,
    hub-style shards, and transformers computes the same logits as jaxdiff on the dequantized weights."""
    from transformers import AutoModelForCausalLM

    src = make_hf_checkpoint(tmp_path, "moe", hidden_size=200, num_hidden_layers=2, torch_dtype=torch.bfloat16)
    fp8_dir = make_fp8_checkpoint(src, str(tmp_path / "fp8"))
    assert convert_hf.main(["--hf_dir", fp8_dir, "--out_dir", str(tmp_path / "jd"), "--dtype", "float32",
                            "--quiet"]) == 0
    assert export_hf.main(["--ckpt_dir", str(tmp_path / "jd"), "--out_dir", str(tmp_path / "hf32"),
                           "--max_shard_size", "300KB", "--quiet"]) == 0
    out = SafetensorsFolder.open(str(tmp_path / "hf32"))
    assert len(set(out.weight_map.values())) > 1                      # split by --max_shard_size
    assert {r.dtype for r in out.tensors.values()} == {np.dtype(np.float32)}
    assert not any(k.endswith("weight_scale_inv") for k in out.tensors)
    cfg = json.load(open(tmp_path / "hf32" / "config.json"))
    assert "quantization_config" not in cfg and cfg["dtype"] == "float32"
    tokens = np.random.RandomState(1).randint(0, 320, (2, 10))
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf32")).eval()(torch.tensor(tokens)).logits
    assert ref.dtype == torch.float32
    logits = np.asarray(jaxdiff.load_model(str(tmp_path / "jd"))(jnp.asarray(tokens)))
    assert np.abs(logits - ref.numpy()).max() <= 1e-4


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


def test_relative_paths(tmp_path, monkeypatch):
    """Users type relative paths; orbax needs absolute ones internally."""
    make_hf_checkpoint(tmp_path, "dense", name="src", num_hidden_layers=1)
    monkeypatch.chdir(tmp_path)
    assert convert_hf.main(["--hf_dir", "src", "--out_dir", "jd", "--quiet"]) == 0
    assert export_hf.main(["--ckpt_dir", "jd", "--out_dir", "back", "--quiet"]) == 0
    _assert_same_hf_folder("src", "back")
    for dt in ("bfloat16", jnp.bfloat16, ml_dtypes.bfloat16):   # names and dtype objects alike
        _, params = load_params("jd", dtype=dt)
        assert params["model.norm.weight"].dtype == ml_dtypes.bfloat16
    with pytest.raises(ValueError, match="float32 or bfloat16, got float16"):
        load_params("jd", dtype=np.float16)
    assert sorted(os.listdir(".")) == ["back", "jd", "src"]
