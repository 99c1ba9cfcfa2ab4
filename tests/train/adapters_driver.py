"""Phase 1 of tests/train/test_adapters.py, run in its own process on one CPU device (as a user
trains; the test session's 8 fake devices would make it several times slower): train the three
heads, then compare the frozen base with the base as built before training and with the converted
checkpoint. Prints one JSON line for the test to assert on.

    python -m tests.train.adapters_driver '{"checkpoint": ..., "sft": ..., "workdir": ..., "overrides": {...}}'
"""
import json
import os
import sys

import numpy as np
from flax import nnx

from jaxdiff import builder
from jaxdiff.config import load_config_file
from jaxdiff.model import flat_params
from jaxdiff.train.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(checkpoint, sft, workdir, overrides):
    c = load_config_file(os.path.join(ROOT, "configs", "qwen3_0_6b.py"))
    with c.unlocked():
        for key, value in {**overrides, "model.checkpoint": checkpoint, "data.path": sft, "workdir": workdir}.items():
            node = c
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return c


def main(args):
    out = train(config(args["checkpoint"], args["sft"], args["workdir"], args["overrides"]), progress=False)
    run = out["run"]
    trained = {".".join(str(p) for p in path): np.asarray(v) for path, v in nnx.to_flat_state(run.frozen)}
    # the base as built before training: the converted weights with the mask row set to the mean embedding
    fresh = flat_params(builder.build_model_from_config(run.config, builder.tokenizer_for(run.config, args["workdir"])))
    differ_from_built = sorted(k for k in fresh if not np.array_equal(trained[k], np.asarray(fresh[k])))
    converted = flat_params(builder.load_base(args["checkpoint"], dtype="float32"))
    mask = run.model.config.mask_token_id
    differ_from_converted = []
    for k, v in converted.items():
        want, got = np.asarray(v), trained[k]
        if k == "model.embed_tokens.weight":
            want, got = np.delete(want, mask, axis=0), np.delete(got, mask, axis=0)
        if not np.array_equal(got, want):
            differ_from_converted.append(k)
    print(json.dumps({
        "full_training": bool(run.config.lora.full_training), "heads": sorted(run.model.lora_heads),
        "losses": {h: [m[f"{h}/loss"] for m in out["history"]] for h in ("ar", "diffusion", "length")},
        "eval": sorted(out["eval"]), "frozen_keys_match": sorted(trained) == sorted(fresh),
        "differ_from_built": differ_from_built, "differ_from_converted": differ_from_converted}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
