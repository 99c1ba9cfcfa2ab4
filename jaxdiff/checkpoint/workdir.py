"""The training workdir's checkpoint layout, shared by the trainer (which writes it) and the builder
(which rebuilds a model from it): `<workdir>/checkpoints/<step>/` orbax items

    trainable   the trained tree (adapters, length head, mask row; everything in full training)
    opt_state   the optimizer state (training only)
    data        the data iterator position (JSON)
    meta        {"step", "config"}: the run config as JSON, which rebuilds the model
"""
from __future__ import annotations

import json
import os

import orbax.checkpoint as ocp

ITEMS = ("trainable", "opt_state", "data", "meta")
CHECKPOINTS = "checkpoints"


def is_workdir(path: str) -> bool:
    """Whether `path` is a training workdir (it has a checkpoints/ folder of step checkpoints)."""
    return os.path.isdir(os.path.join(path, CHECKPOINTS))


def manager(workdir: str, *, items=ITEMS, keep: int | None = None, asynchronous: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINTS), options=options,
                                 item_names=items)


def pick_step(mgr: ocp.CheckpointManager, step: int | None) -> int:
    """`step`, or the newest; errors name the workdir and the steps it has."""
    steps = sorted(mgr.all_steps())
    if not steps:
        raise FileNotFoundError(f"{mgr.directory}: no checkpoints (train first, or pass a converted checkpoint)")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ValueError(f"{mgr.directory}: no checkpoint at step {step} (have {steps})")
    return step


LOCAL_PATH_FIELDS = (("model", "checkpoint"), ("tokenizer", "path"), ("data", "path"))


def config_json(c) -> str:
    """The run config as saved in `meta`: local paths (model.checkpoint, tokenizer.path, data.path)
    made absolute when they exist, so the workdir loads from any working directory (a relative
    `runs/sft` would otherwise be looked up from wherever the reader runs, then on the hub)."""
    d = json.loads(c.to_json())
    for section, key in LOCAL_PATH_FIELDS:
        v = d.get(section, {}).get(key)
        if isinstance(v, str) and v and not os.path.isabs(v) and os.path.exists(v):
            d[section][key] = os.path.abspath(v)
    return json.dumps(d)


def saved_config(mgr: ocp.CheckpointManager, step: int) -> dict:
    """The run config saved with checkpoint `step`, as a dict."""
    meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return json.loads(meta["config"])
