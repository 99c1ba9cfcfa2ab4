"""A training workdir written without training (seconds): a from-scratch tiny model with perturbed
weights, its BPE and its config, in the trainer's layout (`checkpoint/workdir.py`). What a run of
`configs/tiny_coder.py:runlocal` leaves behind, minus optimizer and data state, in ~1 s."""
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from jaxdiff import builder
from jaxdiff.checkpoint import workdir as wd
from jaxdiff.config import load_config_file
from jaxdiff.data import tokenizer as tok_lib
from jaxdiff.eval import load_suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_workdir(path, *, full_training: bool = True, scale: float = 1.5, length_head: bool = False,
                 init: dict | None = None) -> str:
    """A full-training workdir at `path` (step 0) whose every weight is the fresh init times
    `scale` (so a model rebuilt from the config alone differs from the saved one); with
    `length_head`, a run that trains the length head (edges 4, 8, 16); `init` overrides fields of
    the architecture (`config.model.init`, e.g. num_experts=0 for a dense model)."""
    path = os.fspath(path)
    c = load_config_file(os.path.join(ROOT, "configs", "tiny_coder.py:runlocal"))
    c.workdir = path
    c.tokenizer.vocab_size = 320
    for k, v in (init or {}).items():
        c.model.init[k] = v
    if length_head:
        c.objective.length_weight, c.length_head.edges, c.length_head.hidden = 0.1, "4,8,16", 16
    texts = [t.prompt + (t.reference or "") for t in load_suite("synthetic-train")[:300]]
    tok = tok_lib.train_bpe(texts, c.tokenizer.vocab_size, os.path.join(path, "tokenizer"))
    model = builder.build_model_from_config(c, tok)
    _, _, trainable = builder.split(model, full_training=True)
    tree = jax.tree.map(lambda x: x * scale, nnx.to_pure_dict(trainable))
    c.lora.full_training = full_training
    mgr = wd.manager(path, items=("trainable", "meta"))
    mgr.save(0, args=ocp.args.Composite(trainable=ocp.args.StandardSave(tree),
                                        meta=ocp.args.JsonSave({"step": 0, "config": c.to_json()})))
    mgr.wait_until_finished()
    mgr.close()
    return path
