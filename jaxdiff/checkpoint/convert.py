"""HF folder -> jaxdiff checkpoint (`convert_hf`), jaxdiff checkpoint -> HF folder (`export_hf`),
and loading either as flat params (`load_converted`)."""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping

import numpy as np

from jaxdiff.checkpoint import hf_keys
from jaxdiff.checkpoint.hf_load import FLOAT_DTYPES, cast_param, check_tensors, read_tensor
from jaxdiff.checkpoint.orbax_io import (CheckpointWriter, group_of, read_manifest, restore_group)
from jaxdiff.checkpoint.safetensors_io import INDEX, SINGLE, CheckpointError, SafetensorsFolder, read_header, write_file
from jaxdiff.model.config import ModelConfig

DTYPE_POLICIES = ("keep", "float32", "bfloat16")
# Non-weight files that travel with a checkpoint (tokenizer, generation defaults).
EXTRA_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
               "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


def _convert_array(arr, jd: str, folder, groups, cfg: ModelConfig, dtype: str):
    if dtype == "keep":  # exactly as stored (bf16 block scales too), so export is bit-exact
        return arr
    scale_of = lambda: read_tensor(folder, groups[jd.replace(".weight", ".weight_scale_inv")])
    return cast_param(jd, arr, scale_of, cfg.fp8_block_size, FLOAT_DTYPES[dtype])


def convert_hf(hf_dir: str, out_dir: str, *, dtype: str = "keep", overwrite: bool = False,
               progress: bool = True) -> dict:
    """Streams an HF folder into a jaxdiff checkpoint, one layer group at a time. Returns stats."""
    from tqdm import tqdm

    if dtype not in DTYPE_POLICIES:
        raise CheckpointError(f"--dtype {dtype!r}; choose from {DTYPE_POLICIES}")
    hf_dir = os.fspath(hf_dir)
    t0 = time.perf_counter()
    cfg = ModelConfig.from_hf(hf_dir)
    folder = SafetensorsFolder.open(hf_dir)
    groups = check_tensors(folder, cfg)          # every name/shape problem before anything is written
    order = sorted(groups, key=lambda k: min(folder.tensors[h].offset for h in groups[k].values()))
    by_group: dict[str, list[str]] = {}
    for jd in order:
        if dtype != "keep" and jd.endswith(".weight_scale_inv"):
            continue
        by_group.setdefault(group_of(jd), []).append(jd)
    total = sum(r.nbytes for r in folder.tensors.values())
    writer = CheckpointWriter(out_dir, overwrite=overwrite)
    out_cfg = cfg if dtype == "keep" else cfg.replace(fp8_block_size=None)
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress) as bar:
            for gname in sorted(by_group, key=_group_sort_key):
                flat = {}
                for jd in by_group[gname]:
                    arr = read_tensor(folder, groups[jd])
                    flat[jd] = _convert_array(arr, jd, folder, groups, cfg, dtype)
                    bar.update(sum(folder.tensors[h].nbytes for h in groups[jd].values()))
                writer.write_group(gname, flat)
                del flat
        source = {
            "weight_map": folder.weight_map,
            "file_order": {f: [k for k, _ in sorted(read_header(os.path.join(hf_dir, f))[0].items(),
                                                    key=lambda kv: kv[1]["data_offsets"][0])]
                           for f in sorted(set(folder.weight_map.values()))},
            "sharded": os.path.exists(os.path.join(hf_dir, INDEX)),
            "index_metadata": _index_metadata(hf_dir),
        }
        writer.commit(out_cfg.to_json(), {"dtype": dtype, "source": source, "architecture": cfg.architecture},
                      [os.path.join(hf_dir, f) for f in EXTRA_FILES])
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - t0
    return {"bytes": total, "seconds": seconds, "gb_per_s": total / 1e9 / max(seconds, 1e-9),
            "params": sum(int(np.prod(v["shape"])) for v in writer.params.values()), "out_dir": writer.out_dir}


def _group_sort_key(name: str):
    return (0, "") if name == "embed" else ((2, "") if name == "final" else (1, name))


def load_converted(path: str, *, dtype: str | None = None, shardings: Mapping | None = None):
    """(ModelConfig, flat params) from a converted checkpoint, optionally directly sharded."""
    import jax

    path = os.fspath(path)
    manifest = read_manifest(path)
    cfg = ModelConfig.from_hf(path)
    out: dict[str, object] = {}
    target = None if dtype is None else FLOAT_DTYPES[dtype]
    for g in manifest["groups"]:
        keep_sharded = shardings is not None and target is None
        flat = restore_group(path, g, manifest, shardings if keep_sharded else None)
        for k, arr in flat.items():
            if target is not None and k.endswith(".weight_scale_inv"):
                continue
            scale_of = lambda: flat[k.replace(".weight", ".weight_scale_inv")]
            arr = cast_param(k, arr, scale_of, cfg.fp8_block_size, target)
            if shardings is not None and not keep_sharded:
                arr = jax.device_put(arr, shardings[k])
            out[k] = arr
    if target is not None:
        cfg = cfg.replace(fp8_block_size=None)
    return cfg, out


def export_hf(ckpt_dir: str, out_dir: str, *, overwrite: bool = False, max_shard_bytes: int = 5 * 10**9,
              progress: bool = True) -> dict:
    """Writes an HF folder from a converted checkpoint: the source's tensor names, dtypes and file
    layout (or hub-style ~5 GB shards when the checkpoint was not converted from an HF folder)."""
    from tqdm import tqdm

    ckpt_dir, out_dir = os.fspath(ckpt_dir), os.path.abspath(os.fspath(out_dir))
    manifest = read_manifest(ckpt_dir)
    cfg = ModelConfig.from_hf(ckpt_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists (pass --overwrite to replace it)")
    hf_names: dict[str, tuple[str, int | None]] = {}
    for jd, info in manifest["params"].items():
        stacked = hf_keys.is_stacked(jd)
        for e, name in enumerate(hf_keys.to_hf(jd, info["shape"][0] if stacked else None)):
            hf_names[name] = (jd, e if stacked else None)
    source = manifest.get("source") or {}
    file_order = source.get("file_order") if manifest["dtype"] == "keep" else None
    if not file_order:
        file_order = _plan_shards(hf_names, manifest, max_shard_bytes)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    cache: dict[str, dict] = {}
    total = n_params = 0
    try:
        with tqdm(total=len(file_order), unit="file", desc="export", disable=not progress) as bar:
            for fname, names in file_order.items():
                tensors = {}
                for name in names:
                    jd, e = hf_names[name]
                    g = manifest["params"][jd]["group"]
                    if g not in cache:
                        cache.clear()  # one group resident at a time
                        cache[g] = restore_group(ckpt_dir, g, manifest)
                    arr = np.asarray(cache[g][jd])
                    tensors[name] = arr if e is None else arr[e]
                total += write_file(os.path.join(tmp, fname), tensors, {"format": "pt"})
                n_params += sum(int(t.size) for t in tensors.values())
                bar.update(1)
        if len(file_order) > 1 or source.get("sharded"):
            weight_map = {n: f for f, names in file_order.items() for n in names}
            # The source index's metadata keys, with the sizes recomputed for what was written.
            metadata = {**source.get("index_metadata", {}), "total_size": total}
            if "total_parameters" in metadata:
                metadata["total_parameters"] = n_params
            with open(os.path.join(tmp, INDEX), "w") as f:
                json.dump({"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        hf_cfg = cfg.to_hf()
        if manifest["dtype"] != "keep":  # the stored dtype changed; tell transformers (any spelling present)
            for field in ("dtype", "torch_dtype"):
                if field in hf_cfg:
                    hf_cfg[field] = manifest["dtype"]
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_cfg, f, indent=2)
        extra = os.path.join(ckpt_dir, "hf_extra")
        if os.path.isdir(extra):
            for name in os.listdir(extra):
                shutil.copy2(os.path.join(extra, name), tmp)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"bytes": total, "files": len(file_order), "out_dir": out_dir}


def _index_metadata(hf_dir: str) -> dict:
    try:
        with open(os.path.join(hf_dir, INDEX)) as f:
            return dict(json.load(f).get("metadata") or {})
    except FileNotFoundError:
        return {}


def _plan_shards(hf_names, manifest, max_bytes: int) -> dict[str, list[str]]:
    sizes = {}
    for name, (jd, e) in hf_names.items():
        info = manifest["params"][jd]
        shape = info["shape"][1:] if e is not None else info["shape"]
        sizes[name] = int(np.prod(shape)) * np.dtype(info["dtype"]).itemsize
    shards, cur, cur_bytes = [], [], 0
    for name in sorted(hf_names, key=_hf_sort_key):
        if cur and cur_bytes + sizes[name] > max_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(name)
        cur_bytes += sizes[name]
    shards.append(cur)
    if len(shards) == 1:
        return {SINGLE: shards[0]}
    n = len(shards)
    return {f"model-{i + 1:05d}-of-{n:05d}.safetensors": s for i, s in enumerate(shards)}


def _hf_sort_key(name: str):
    parts = name.split(".")
    return [int(p) if p.isdigit() else p for p in parts]
