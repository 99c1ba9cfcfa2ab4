"""PEFT export of a LoRA head: `peft.PeftModel.from_pretrained` on the transformers model, and the
merged HF folder, reproduce jaxdiff's float32 logits with that head (<= 1e-4; causal for `ar`, the
4-D zero mask — bidirectional — for `diffusion`), the `<|mask|>` row included; per-expert adapters
have vLLM's key layout; the tool refuses bad input with one line and exit code 2."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open

import jaxdiff
from jaxdiff.checkpoint.convert import convert_hf
from jaxdiff.checkpoint.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_merged, export_peft
from jaxdiff.checkpoint.safetensors_io import CheckpointError, SafetensorsFolder
from jaxdiff.model.lora import HEAD_TYPES, LoRASpec, add_lora
from jaxdiff.model.mask_token import add_mask_token
from tests.hf_fixtures import make_fp8_checkpoint, make_hf_checkpoint

pytestmark = pytest.mark.parity
TOL = 1e-4
MASK_ID = 317
DENSE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "lm_head")
SPECS = {"ar": LoRASpec(rank=4, alpha=8.0, targets=DENSE_TARGETS),
         "diffusion": LoRASpec(rank=3, alpha=7.5, targets=DENSE_TARGETS)}   # scale 2.5, alpha not an integer
MODES = {"ar": "causal", "diffusion": "bidirectional"}


def _randomize(model, seed=0):
    """Non-zero B (B = 0 at init makes every adapter a no-op) and, if trained, a mask row unlike any
    other. NumPy draws: a jax.random draw per shape would compile per shape."""
    rs = np.random.RandomState(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(*HEAD_TYPES.values()))):
        if str(path[-1]).endswith("_b"):
            var.set_value(jnp.asarray(rs.normal(0.0, 0.2, var.shape), jnp.float32))
    emb = model.model.embed_tokens
    if hasattr(emb, "mask_vector"):
        emb.mask_vector.set_value(jnp.asarray(rs.normal(0.0, 1.0, emb.mask_vector.shape), jnp.float32))


def _jaxdiff_model(base, *, trainable_mask=True, specs=SPECS):
    m = nnx.clone(base)
    add_mask_token(m, mask_token_id=MASK_ID, trainable=trainable_mask)
    for head, spec in specs.items():
        add_lora(m, head, spec, seed=3)
    _randomize(m)
    return m


def _tokens(head, b=2, l=19, vocab=320):
    """Clean text for `ar` (it never sees <|mask|>); masked positions for `diffusion`."""
    t = np.random.RandomState(0).randint(0, vocab - 8, (b, l))
    if head == "diffusion":
        t[:, 5::3] = MASK_ID
    return t


def _hf(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()


def _hf_logits(model, tokens, mode):
    b, l = tokens.shape
    mask = None if mode == "causal" else torch.zeros((b, 1, l, l))      # bidirectional: the 4-D zero mask
    with torch.no_grad():
        return model(torch.tensor(tokens), attention_mask=mask).logits.numpy()


_COMPILED = {}


def _logits(model, head):
    """jaxdiff's logits of `_tokens(head)` with `head` (jitted once per model and head: one compile is
    cheaper than the op-by-op compiles of an eager first call)."""
    if (id(model), head) not in _COMPILED:
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda state, t: nnx.merge(graphdef, state)(t, lora=head, attention=MODES[head]))
        _COMPILED[id(model), head] = (model, fn)
    return _COMPILED[id(model), head][1](nnx.state(model), jnp.asarray(_tokens(head)))


def _check(model, head, ref, base_dir):
    """jaxdiff's logits with `head` against `ref` (transformers); the base alone must differ, or the
    adapter would be proving nothing."""
    base = _hf_logits(_hf(base_dir), _tokens(head), MODES[head])
    assert np.abs(ref - base).max() > 0.05, "the adapter barely changes the logits"
    out = np.asarray(_logits(model, head))
    diff = np.abs(out - ref).max()
    assert diff <= TOL, f"{head}: max |logit diff| {diff:.2e}"


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    hf = make_hf_checkpoint(root, "dense", name="hf")
    jd = str(root / "jd")
    convert_hf(hf, jd, progress=False)
    base = jaxdiff.load_model(jd)
    return {"hf": hf, "jd": jd, "trained": _jaxdiff_model(base), "frozen": _jaxdiff_model(base, trainable_mask=False)}


@pytest.mark.parametrize("head,mask", [("ar", "trained"), ("diffusion", "trained"), ("diffusion", "frozen")])
def test_peft_model_reproduces_jaxdiff_logits(dense, tmp_path, head, mask):
    from peft import PeftModel
    model = dense[mask]
    out = export_peft(model, head, dense["hf"], str(tmp_path / "adapter"))
    cfg = json.load(open(os.path.join(out["out_dir"], ADAPTER_CONFIG)))
    spec = SPECS[head]
    assert (cfg["r"], cfg["lora_alpha"], cfg["peft_type"]) == (spec.rank, spec.alpha, "LORA")
    assert cfg["target_modules"] == sorted(DENSE_TARGETS)
    assert cfg["trainable_token_indices"] == ({"embed_tokens": [MASK_ID]} if head == "diffusion" else None)
    peft_model = PeftModel.from_pretrained(_hf(dense["hf"]), out["out_dir"]).eval()
    ref = _hf_logits(peft_model, _tokens(head), MODES[head])
    _check(model, head, ref, dense["hf"])


@pytest.mark.parametrize("head", ["ar", "diffusion"])
def test_adapter_keys_layout_and_values(dense, tmp_path, head):
    model, r = dense["trained"], SPECS[head].rank
    out = export_peft(model, head, dense["hf"], str(tmp_path / "a"))
    with safe_open(os.path.join(out["out_dir"], ADAPTER_WEIGHTS), "np") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    q = model.model.layers[1].self_attn.q_proj
    prefix = "base_model.model.model.layers.1.self_attn.q_proj"
    np.testing.assert_array_equal(t[f"{prefix}.lora_A.weight"], getattr(q, f"lora_{head}_a")[...])   # [r, in]
    np.testing.assert_array_equal(t[f"{prefix}.lora_B.weight"], getattr(q, f"lora_{head}_b")[...])   # [out, r]
    assert t["base_model.model.lm_head.lora_A.weight"].shape == (r, 64)
    assert t["base_model.model.lm_head.lora_B.weight"].shape == (320, r)
    assert all(v.dtype == np.float32 for v in t.values())
    lora = {k for k in t if k.endswith((".lora_A.weight", ".lora_B.weight"))}
    assert len(lora) == 2 * (4 * 2 + 1)
    if head == "ar":   # clean-text head: plain LoRA keys only, as vLLM requires
        assert lora == set(t)
    else:
        row = t.pop("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta")
        np.testing.assert_array_equal(row, np.asarray(model.model.embed_tokens.mask_vector[...])[None])
        assert lora == set(t)


@pytest.mark.parametrize("head,source", [("ar", "jd"), ("diffusion", "hf")])
def test_merged_export_reproduces_jaxdiff_logits(dense, tmp_path, head, source):
    model = dense["trained"]
    out = export_merged(model, head, dense[source], str(tmp_path / "merged"))
    src, dst = SafetensorsFolder.open(dense["hf"]), SafetensorsFolder.open(out["out_dir"])
    layout = lambda folder: {k: (r.dtype, r.shape) for k, r in folder.tensors.items()}
    assert layout(dst) == layout(src) and dst.weight_map == src.weight_map
    v = "model.layers.0.self_attn.v_proj.weight"
    assert not np.array_equal(dst.array(v), src.array(v))
    np.testing.assert_array_equal(dst.array("model.norm.weight"), src.array("model.norm.weight"))
    _check(model, head, _hf_logits(_hf(out["out_dir"]), _tokens(head), MODES[head]), dense["hf"])


def test_out_dir_is_refused_without_overwrite_and_nothing_is_left(dense, tmp_path):
    model, out = dense["trained"], tmp_path / "x"
    out.mkdir()
    for export in (export_peft, export_merged):
        with pytest.raises(CheckpointError, match="--overwrite"):
            export(model, "ar", dense["hf"], str(out))
    with pytest.raises(CheckpointError, match="--head"):
        export_peft(model, "length", dense["hf"], str(tmp_path / "y"))
    fp8 = make_fp8_checkpoint(dense["hf"], str(tmp_path / "fp8"))
    with pytest.raises(CheckpointError, match="block-FP8"):   # merging would round the adapter away
        export_merged(model, "ar", fp8, str(tmp_path / "y"))
    assert export_peft(model, "ar", dense["hf"], str(out), overwrite=True)["tensors"] == 18
    assert sorted(os.listdir(tmp_path)) == ["fp8", "x"]


# ----------------------------------------------------------------------------- experts
EXPERT_TARGETS = ("q_proj", r"experts\.(gate|up|down)_proj")


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    hf = make_hf_checkpoint(tmp_path_factory.mktemp("peft_moe"), "moe", name="hf", decoder_sparse_step=2,
                            mlp_only_layers=[0], num_hidden_layers=2)
    spec = LoRASpec(rank=2, alpha=4.0, targets=EXPERT_TARGETS)
    return hf, _jaxdiff_model(jaxdiff.load_model(hf), specs={"diffusion": spec})


def test_expert_adapters_in_the_per_expert_layout(moe, tmp_path):
    _, model = moe
    out = export_peft(model, "diffusion", None, str(tmp_path / "a"))
    cfg = json.load(open(os.path.join(out["out_dir"], ADAPTER_CONFIG)))
    # layer 0 is a dense MLP (mlp_only_layers) whose gate_proj is not adapted: the short name would
    # catch it, so the expert projections are listed by full name.
    assert "q_proj" in cfg["target_modules"] and "gate_proj" not in cfg["target_modules"]
    assert "model.layers.1.mlp.experts.7.down_proj" in cfg["target_modules"]
    with safe_open(os.path.join(out["out_dir"], ADAPTER_WEIGHTS), "np") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    experts = model.model.layers[1].mlp.experts
    for e in range(8):
        for proj, (o, i) in {"gate_proj": (32, 64), "up_proj": (32, 64), "down_proj": (64, 32)}.items():
            a = t[f"base_model.model.model.layers.1.mlp.experts.{e}.{proj}.lora_A.weight"]
            b = t[f"base_model.model.model.layers.1.mlp.experts.{e}.{proj}.lora_B.weight"]
            assert a.shape == (2, i) and b.shape == (o, 2)
            np.testing.assert_array_equal(b, np.asarray(getattr(experts, proj).lora_diffusion_b[...])[e])
    assert not any("layers.0.mlp" in k for k in t)
    assert len(t) == 2 * (2 + 8 * 3) + 1


def test_merged_expert_adapters_reproduce_jaxdiff_logits(moe, tmp_path):
    hf, model = moe
    out = export_merged(model, "diffusion", hf, str(tmp_path / "merged"))
    _check(model, "diffusion", _hf_logits(_hf(out["out_dir"]), _tokens("diffusion"), "bidirectional"), hf)


# ----------------------------------------------------------------------------- the tool
def _tool():
    sys.path.insert(0, "tools")
    import export_peft as tool
    return tool


def _save_workdir(workdir, c, trainable=None):
    """A workdir as train/loop.py save() writes it (only the items the exporter reads)."""
    import orbax.checkpoint as ocp
    from jaxdiff.checkpoint import workdir as wd
    items = ("meta",) if trainable is None else ("trainable", "meta")
    mgr = wd.manager(str(workdir), items=items)
    args = {"meta": ocp.args.JsonSave({"step": 5, "config": c.to_json()})}
    if trainable is not None:
        args["trainable"] = ocp.args.StandardSave(nnx.to_pure_dict(trainable))
    mgr.save(5, args=ocp.args.Composite(**args))
    mgr.wait_until_finished()
    mgr.close()


@pytest.fixture(scope="module")
def workdir(dense, tmp_path_factory):
    from jaxdiff import builder
    from jaxdiff.config import get_config
    from jaxdiff.data import tokenizer as tk
    root = tmp_path_factory.mktemp("peft_run")
    tk.train_bpe([f"def f{i}(x): return x + {i}" for i in range(200)], 300, str(root / "tok"))
    c = get_config()
    c.model.checkpoint, c.tokenizer.path, c.mask_token.trainable = dense["jd"], str(root / "tok"), True
    c.lora.diffusion.rank, c.lora.diffusion.alpha = 4, 8.0   # the shapes of SPECS["ar"]: compiled already
    model = builder.build_model_from_config(c, builder.tokenizer_for(c, None))
    _randomize(model, seed=1)
    _save_workdir(root / "run", c, builder.split(model)[2])
    full = get_config()
    full.lora.full_training = True
    _save_workdir(root / "full", full)
    return root, model


def test_tool_exports_a_workdir_head(workdir, dense, capsys):
    root, model = workdir
    out = root / "adapter"
    assert _tool().main(["--workdir", str(root / "run"), "--head", "diffusion", "--out_dir", str(out)]) == 0
    assert "diffusion" in capsys.readouterr().out
    with safe_open(str(out / ADAPTER_WEIGHTS), "np") as f:
        b = f.get_tensor("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight")
    np.testing.assert_array_equal(b, model.model.layers[0].self_attn.k_proj.lora_diffusion_b[...])
    assert json.load(open(out / ADAPTER_CONFIG))["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert (out / "tokenizer.json").exists()
    assert json.load(open(out / ADAPTER_CONFIG))["base_model_name_or_path"] == dense["jd"]
    merged = root / "merged"
    run = ["--workdir", str(root / "run"), "--head", "diffusion", "--out_dir", str(merged)]
    assert _tool().main([*run, "--merge"]) == 0
    assert SafetensorsFolder.open(str(merged)).tensors.keys() == SafetensorsFolder.open(dense["hf"]).tensors.keys()


@pytest.mark.parametrize("args,flag", [
    (["--head", "length"], "--head"),
    (["--head", "ar"], "--head ar"),                           # the run trained only the diffusion head
    (["--head", "diffusion", "--workdir_override", "full"], "full-training"),
    (["--head", "diffusion", "--workdir_override", "nowhere"], "--workdir"),
    (["--head", "diffusion", "--existing"], "--out_dir"),
    (["--head", "diffusion", "--merge", "--existing"], "--out_dir"),
])
def test_tool_refuses_bad_input_with_one_line(workdir, tmp_path, capsys, args, flag):
    root, _ = workdir
    run, out = str(root / "run"), tmp_path / "out"
    if "--workdir_override" in args:
        i = args.index("--workdir_override")
        run, args = str(root / args[i + 1]), args[:i] + args[i + 2:]
    if "--existing" in args:
        args = [a for a in args if a != "--existing"]
        out.mkdir()
    assert _tool().main(["--workdir", run, "--out_dir", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("export_peft: error: ") and flag in err and "\n" not in err, err
    assert os.listdir(tmp_path) == (["out"] if out.exists() else [])
    if out.exists():
        assert os.listdir(out) == []
