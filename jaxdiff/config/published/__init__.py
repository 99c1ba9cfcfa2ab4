"""Published Hugging Face `config.json` files of the releases jaxdiff targets, shipped verbatim.

Each `.json` file here is a byte-for-byte copy of a public mirror of the release's `config.json`
(JSON has no comments, so where it came from is recorded in `SOURCES`, and its sha256 is checked by
the tests). `published_config(name)` returns one as a fresh dict. A name listed in `ADDED` is built
from a verbatim file plus fields that are documented for that release but were not found in a
mirror; what was added is stated there, so nothing here passes for published that was not.

    >>> published_config("Qwen3-Coder-30B-A3B-Instruct")["moe_intermediate_size"]
    768
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
from importlib import resources
from typing import Any


@dataclasses.dataclass(frozen=True)
class Source:
    repo: str      # a public GitHub mirror, "owner/name"
    path: str      # the file in that repository
    commit: str    # the commit it was copied at
    sha256: str    # of the bytes shipped here (== the mirror's bytes)


SOURCES: dict[str, Source] = {
    # Qwen/Qwen3-Coder-30B-A3B-Instruct as released (transformers_version 4.52.3): a snapshot of the
    # hub repository (config, README, LICENSE, .gitattributes, tokenizer) committed to this mirror.
    # ztxz16/fastllm, Qwen3-Coder-30B-A3B-Instruct/config.json at f8f04c33abb63f6cd4e45f9427a55949a8ebbb44,
    # holds the same text with CRLF line ends (a Windows checkout); the LF bytes are shipped.
    # Fields transformers' Qwen3MoeConfig does not define and keeps as plain attributes: qkv_bias,
    # shared_expert_intermediate_size, use_qk_norm, max_window_layers, head_dim (the modeling code
    # reads head_dim with getattr). intermediate_size (5472) sizes only dense MLP layers, of which
    # this model has none (decoder_sparse_step 1, mlp_only_layers []).
    "Qwen3-Coder-30B-A3B-Instruct.json": Source(
        repo="sagui-nlp/nanoGPT-moe", path="Qwen3-Coder-30B-A3B-Instruct/config.json",
        commit="2675cf4c69f867983cca63c64bb7c46dfef122a1",
        sha256="469cfae1f9ed18178ea84a51137a0970e26470803fe9d55f2e695551abf29466"),
}


def _fp8_release(instruct: dict[str, Any]) -> dict[str, Any]:
    return {"quantization_config": {
        "activation_scheme": "dynamic",
        "modules_to_not_convert": ["lm_head"] + [
            f"model.layers.{i}.{m}" for i in range(instruct["num_hidden_layers"])
            for m in ("input_layernorm", "mlp.gate", "post_attention_layernorm")],
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    }}


ADDED = {
    # Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8: the Instruct file plus the release's documented
    # quantization_config (`_fp8_release`), added here: no verbatim mirror of its config.json was
    # found. The one copy seen (deepit-cz/amd-npu-converting,
    # models/Qwen3-Coder-30B-A3B-Instruct-FP8/config.json at 3817484e2b65b28827654362b925bb210caa2762)
    # was written by `model.save_pretrained` under transformers 4.57.3 (the repository's download
    # script says so), which renames torch_dtype to dtype and drops `fmt`, so it is not shipped. Its
    # `modules_to_not_convert`, which a re-save keeps, is lm_head plus input_layernorm, mlp.gate (the
    # router) and post_attention_layernorm of every layer: the list built here. Its other fields
    # (intermediate_size 6144, router_aux_loss_coef 0.001, no qkv_bias / use_qk_norm /
    # shared_expert_intermediate_size) differ from the Instruct release's and are not taken: none
    # changes what the model computes (intermediate_size sizes no layer of this all-MoE model), and
    # router_aux_loss_coef only sets the trainer's default load-balancing weight.
    "Qwen3-Coder-30B-A3B-Instruct-FP8": ("Qwen3-Coder-30B-A3B-Instruct", _fp8_release),
}

NAMES = tuple(sorted([f.removesuffix(".json") for f in SOURCES] + list(ADDED)))


def published_text(file: str) -> str:
    """The shipped bytes of one file of `SOURCES`, decoded (line ends untouched)."""
    if file not in SOURCES:
        raise KeyError(f"{file!r} is not a published config (have: {', '.join(sorted(SOURCES))})")
    return resources.files(__name__).joinpath(file).read_bytes().decode("utf-8")


@functools.cache
def _load(name: str) -> dict[str, Any]:
    if name in ADDED:
        base, add = ADDED[name]
        return {**_load(base), **add(_load(base))}
    return json.loads(published_text(f"{name}.json"))


def published_config(name: str) -> dict[str, Any]:
    """The config.json dict of release `name` (see `NAMES`); a fresh copy, safe to change."""
    if name not in NAMES:
        raise KeyError(f"no published config {name!r} (have: {', '.join(NAMES)})")
    return copy.deepcopy(_load(name))
