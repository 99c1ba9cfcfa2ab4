"""Key table, safetensors reader errors, dtype checks, FP8 arithmetic: small and fast, real files."""
import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

from jaxdiff.checkpoint import fp8, hf_keys
from jaxdiff.checkpoint.safetensors_io import INDEX, CheckpointError, SafetensorsFolder, write_file
from tests.hf_fixtures import make_fp8_checkpoint, make_hf_checkpoint
from tools import convert_hf, export_hf, inspect_checkpoint


# ----------------------------------------------------------------------------- key table
@pytest.mark.parametrize("hf_key, jd_key, index", [
    ("model.embed_tokens.weight", "model.embed_tokens.weight", None),
    ("lm_head.weight", "lm_head.weight", None),
    ("model.layers.3.self_attn.q_norm.weight", "model.layers.3.self_attn.q_norm.weight", None),
    ("model.layers.3.mlp.gate.weight", "model.layers.3.mlp.gate.weight", None),
    ("model.layers.12.mlp.experts.127.down_proj.weight", "model.layers.12.mlp.experts.down_proj.weight", 127),
    ("model.layers.0.mlp.experts.5.up_proj.weight_scale_inv", "model.layers.0.mlp.experts.up_proj.weight_scale_inv", 5),
    ("model.layers.0.mlp.down_proj.weight_scale_inv", "model.layers.0.mlp.down_proj.weight_scale_inv", None),
])
def test_key_table_both_directions(hf_key, jd_key, index):
    assert hf_keys.to_jaxdiff(hf_key) == (jd_key, index)
    assert hf_keys.is_stacked(jd_key) == (index is not None)
    back = hf_keys.to_hf(jd_key, 128 if index is not None else None)
    assert back[index or 0] == hf_key
    if index is not None:
        assert len(back) == 128 and [hf_keys.to_jaxdiff(k) for k in back] == [(jd_key, e) for e in range(128)]


def test_key_table_needs_the_expert_count_for_stacked_keys():
    with pytest.raises(ValueError, match="num_stacked"):
        hf_keys.to_hf("model.layers.0.mlp.experts.gate_proj.weight")


# ----------------------------------------------------------------------------- safetensors files
def _raw_file(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


def test_reader_is_lazy_and_exact(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = (np.arange(6, dtype=np.float32) / 7).astype(ml_dtypes.bfloat16)
    c = fp8.quantize(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4))[0]
    write_file(str(tmp_path / "model.safetensors"), {"a": a, "b": b, "c": c})
    folder = SafetensorsFolder.open(str(tmp_path))
    assert isinstance(folder.array("a"), np.memmap)
    for name, want in {"a": a, "b": b, "c": c}.items():
        got = folder.array(name)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    import torch
    from safetensors.torch import load_file  # the reference reader agrees on our writer's output
    ref = load_file(str(tmp_path / "model.safetensors"))
    assert ref["c"].dtype == torch.float8_e4m3fn and ref["b"].dtype == torch.bfloat16
    for name, want in {"a": a, "b": b, "c": c}.items():
        assert ref[name].contiguous().view(torch.uint8).numpy().tobytes() == want.tobytes(), name


def test_bad_header_json_names_the_file(tmp_path):
    with open(tmp_path / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", 10) + b"{not json!")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: malformed safetensors header"):
        SafetensorsFolder.open(str(tmp_path))


def test_unknown_dtype_names_file_and_tensor(tmp_path):
    _raw_file(tmp_path / "model.safetensors", {"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, b"\0")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'w' has unsupported dtype 'F4'"):
        SafetensorsFolder.open(str(tmp_path))


def test_header_longer_than_file(tmp_path):
    with open(tmp_path / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated .*header says 1000 bytes"):
        SafetensorsFolder.open(str(tmp_path))


def test_tensor_data_past_end_of_file(tmp_path):
    _raw_file(tmp_path / "model.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
              b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"truncated file: tensor 'w' ends at byte"):
        SafetensorsFolder.open(str(tmp_path))


def _sharded(tmp_path):
    write_file(str(tmp_path / "s1.safetensors"), {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)})
    write_file(str(tmp_path / "s2.safetensors"), {"c": np.zeros(2, np.float32), "d": np.zeros(2, np.float32)})


def _index(tmp_path, weight_map):
    with open(tmp_path / INDEX, "w") as f:
        json.dump({"metadata": {"total_size": 32}, "weight_map": weight_map}, f)


def test_index_and_shards_must_agree_and_all_problems_are_listed(tmp_path):
    _sharded(tmp_path)
    # 'x' listed but absent from s1; 'b' and 'd' present but listed nowhere (or elsewhere)
    _index(tmp_path, {"a": "s1.safetensors", "x": "s1.safetensors", "c": "s2.safetensors"})
    with pytest.raises(CheckpointError) as e:
        SafetensorsFolder.open(str(tmp_path))
    msg = str(e.value)
    assert "s1.safetensors: tensor(s) listed in the index but absent from the file: x" in msg
    assert "s1.safetensors: tensor(s) in the file but not listed for it" in msg and ": b" in msg
    assert "s2.safetensors: tensor(s) in the file but not listed for it" in msg and ": d" in msg


def test_missing_shards_are_all_named(tmp_path):
    _sharded(tmp_path)
    _index(tmp_path, {"a": "s1.safetensors", "c": "s2.safetensors", "e": "s3.safetensors", "f": "s4.safetensors"})
    with pytest.raises(CheckpointError, match=r"missing: s3\.safetensors, s4\.safetensors"):
        SafetensorsFolder.open(str(tmp_path))


def test_malformed_index(tmp_path):
    (tmp_path / INDEX).write_text('{"metadata": {}, "weight_map": [1, 2]}')
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: malformed index"):
        SafetensorsFolder.open(str(tmp_path))


def test_not_a_checkpoint_folder(tmp_path, capsys):
    assert inspect_checkpoint.main([str(tmp_path)]) == 2
    assert f"{tmp_path}: no model.safetensors or {INDEX} found" in capsys.readouterr().err
    assert export_hf.main(["--ckpt_dir", str(tmp_path), "--out_dir", str(tmp_path / "x"), "--quiet"]) == 2
    assert "not a jaxdiff checkpoint" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_export_refuses_a_bad_size(tmp_path, capsys):
    assert export_hf.parse_size("5GB") == 5 * 10**9 and export_hf.parse_size("300KB") == 300_000
    assert export_hf.parse_size("2GiB") == 2 * 2**30 and export_hf.parse_size("1234") == 1234
    assert export_hf.main(["--ckpt_dir", str(tmp_path), "--out_dir", str(tmp_path / "x"),
                           "--max_shard_size", "lots", "--quiet"]) == 2
    assert "--max_shard_size 'lots'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- dtypes vs config
def _convert_fails(tmp_path, src, capsys, *expected):
    rc = convert_hf.main(["--hf_dir", src, "--out_dir", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    for e in expected:
        assert e in err, err
    assert [p for p in os.listdir(tmp_path) if p.startswith("out")] == []


def _edit_fp8(fp8_dir, edit):
    path = os.path.join(fp8_dir, "model.safetensors")
    folder = SafetensorsFolder.open(fp8_dir)
    tensors = {k: np.array(folder.array(k)) for k in folder.tensors}
    edit(tensors)
    write_file(path, tensors)


@pytest.fixture(scope="module")
def fp8_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8src")
    return make_hf_checkpoint(root, "dense", hidden_size=64, num_hidden_layers=1)


def test_fp8_weight_stored_plain_is_refused(tmp_path, capsys, fp8_source):
    fp8_dir = make_fp8_checkpoint(fp8_source, str(tmp_path / "fp8"))
    key = "model.layers.0.self_attn.k_proj.weight"
    _edit_fp8(fp8_dir, lambda t: t.update({key: t[key].astype(np.float32)}))
    _convert_fails(tmp_path, fp8_dir, capsys, f"{key}: stored as float32, but quantization_config makes this "
                                              "module block-FP8")


def test_fp8_scale_missing_or_extra_is_refused(tmp_path, capsys, fp8_source):
    fp8_dir = make_fp8_checkpoint(fp8_source, str(tmp_path / "fp8"))

    def edit(t):
        del t["model.layers.0.mlp.up_proj.weight_scale_inv"]
        t["lm_head.weight_scale_inv"] = np.ones((3, 1), np.float32)

    _edit_fp8(fp8_dir, edit)
    _convert_fails(tmp_path, fp8_dir, capsys, "missing 1: model.layers.0.mlp.up_proj.weight_scale_inv",
                   "unexpected 1: lm_head.weight_scale_inv", "block-FP8 iff it has a weight_scale_inv companion")


def test_fp8_tensor_in_a_plain_checkpoint_is_refused(tmp_path, capsys):
    src = make_hf_checkpoint(tmp_path, "dense", num_hidden_layers=1)
    key = "model.layers.0.mlp.gate_proj.weight"
    _edit_fp8(src, lambda t: t.update({key: t[key].astype(fp8.E4M3)}))
    _convert_fails(tmp_path, src, capsys, f"{key}: stored as float8_e4m3fn; expected a float tensor")


def test_scale_of_the_wrong_shape_is_refused(tmp_path, capsys, fp8_source):
    fp8_dir = make_fp8_checkpoint(fp8_source, str(tmp_path / "fp8"))
    key = "model.layers.0.self_attn.o_proj.weight_scale_inv"
    _edit_fp8(fp8_dir, lambda t: t.update({key: np.ones((2, 2), np.float32)}))
    _convert_fails(tmp_path, fp8_dir, capsys, f"{key}: shape [2, 2], the config implies [1, 1]")


# ----------------------------------------------------------------------------- FP8 arithmetic
@pytest.mark.parametrize("shape", [(1, 1), (64, 96), (128, 128), (200, 300), (3, 129, 257)])
def test_quantize_blocks(shape):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 10, shape[:-2] + (1, 1))).astype(np.float32)
    w[..., 0, 0] = 0
    q, s = fp8.quantize(w)
    assert q.dtype == fp8.E4M3 and s.shape == fp8.scale_shape(shape, (128, 128)) and s.dtype == np.float32
    qf = q.astype(np.float32)
    assert np.all(np.isfinite(qf)) and np.abs(qf).max() <= 448
    # every block's largest magnitude lands on 448 (the scale is amax / 448); an all-zero block
    # keeps scale 1 and stays zero
    bo = [slice(r, r + 128) for r in range(0, shape[-2], 128)]
    bi = [slice(c, c + 128) for c in range(0, shape[-1], 128)]
    for r, rows in enumerate(bo):
        for c, cols in enumerate(bi):
            amax = np.abs(w[..., rows, cols]).reshape(*shape[:-2], -1).max(-1)
            qmax = np.abs(qf[..., rows, cols]).reshape(*shape[:-2], -1).max(-1)
            np.testing.assert_array_equal(qmax, np.where(amax > 0, 448, 0))
            np.testing.assert_allclose(s[..., r, c], np.where(amax > 0, amax / 448, 1), rtol=1e-7)
    d = fp8.dequantize(q, s, (128, 128))
    assert d.dtype == np.float32 and d[..., 0, 0].tolist() == np.zeros(shape[:-2]).tolist()
    assert np.all(np.abs(d - w) <= np.maximum(2.0 ** -4 * np.abs(w), 2.0 ** -10 * fp8._expand(s, shape, (128, 128)))
                  * (1 + 2.0 ** -20))
    assert fp8.dequantize(q, s, (128, 128), ml_dtypes.bfloat16).dtype == ml_dtypes.bfloat16


def test_bf16_scales_round_up_so_nothing_overflows():
    w = np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)
    q, s = fp8.quantize(w, scale_dtype=ml_dtypes.bfloat16)
    assert s.dtype == ml_dtypes.bfloat16
    exact = fp8.quantize(w)[1]
    assert np.all(s.astype(np.float32) >= exact)
    assert np.all(np.isfinite(q.astype(np.float32)))


def test_dequantize_checks_the_scale_shape():
    q, s = fp8.quantize(np.ones((130, 5), np.float32))
    with pytest.raises(ValueError, match=r"scale_inv shape \[1, 1\] does not fit weight \[130, 5\]"):
        fp8.dequantize(q, s[:1], (128, 128))
