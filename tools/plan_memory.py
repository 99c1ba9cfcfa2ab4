"""Per-device memory of a training config on a mesh, for a train step and for sampling.

    python tools/plan_memory.py --config configs/qwen3_coder_30b_a3b.py --mesh data=1,fsdp=8,expert=8 \\
        --batch 64 --seq 4096 --remat full --gen_length 1024 --sample_batch 64 --device_memory_gb 80
    python tools/plan_memory.py --config configs/qwen3_coder_30b_a3b.py --mesh expert=8 --nofp8
    python tools/plan_memory.py --config configs/qwen3_0_6b.py --mesh data=-1 --devices 4 \\
        --config.model.checkpoint=/ckpt/q06b-jd
    python tools/plan_memory.py --workdir runs/tiny_coder --mesh data=1    # a training run's saved config

Weights, adapters, optimizer state and the KV cache are computed from the abstract model and its
shardings (no weights are read, no devices needed); activations are an estimate (see
jaxdiff/train/plan.py: saved residuals, one layer's backward, MoE all-to-all dispatch buffers with C
from --config.model.moe_capacity_factor, gathered experts, the vocab loss, dequantized FP8), whose
per-layer slope CI holds within 15% of XLA's compiled train step at the 30B-A3B width. The
architecture comes from `--config.model.checkpoint`'s config.json, else from the config file's
`reference_hf_config()`, else from `config.model.init`. FP8 follows the source (the 30B config's
reference is the FP8 release); --fp8 / --nofp8 override it.
Exits 0 when both the train step and sampling fit, 1 when one does not, 2 on bad input.
"""
from __future__ import annotations

import importlib.util
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/*.py)", lock_config=True)
_MESH = flags.DEFINE_string("mesh", None, "axis=size,... over data, fsdp, expert, tensor (default: config.mesh)")
_DEVICES = flags.DEFINE_integer("devices", None, "device count (default: the mesh's product; needed for a -1 axis)")
_BATCH = flags.DEFINE_integer("batch", None, "global train batch (default: config.data.batch_size)")
_SEQ = flags.DEFINE_integer("seq", None, "train sequence length (default: config.data.seq_len)")
_REMAT = flags.DEFINE_enum("remat", None, ["full", "none", "dots"], "activation checkpointing per layer "
                           "(default: config.model.remat -> full / none)")
_GEN = flags.DEFINE_integer("gen_length", None, "tokens generated per sample (default: config.sample.gen_length)")
_PROMPT = flags.DEFINE_integer("prompt_length", None, "prompt tokens per sample (default: --seq - --gen_length)")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", None, "sequences sampled at once (default: --batch)")
_MEMORY = flags.DEFINE_float("device_memory_gb", 80.0, "memory per device in GB (1e9 bytes)")
_FP8 = flags.DEFINE_boolean("fp8", None, "plan a block-FP8 base (default: as the checkpoint / reference config)")
_WORKDIR = flags.DEFINE_string("workdir", None, "plan the config saved in this training workdir (instead of --config)")


def reference_hf_config(config_flag) -> dict | None:
    """The config file's `reference_hf_config()`, if it defines one."""
    path = config_flags.get_config_filename(config_flag).split(":")[0]
    spec = importlib.util.spec_from_file_location("_planned_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "reference_hf_config", None)
    return fn() if fn is not None else None


def workdir_config(workdir: str):
    """A training run's saved config (newest checkpoint) on today's defaults; a from-scratch run's
    vocabulary is its tokenizer's."""
    from jaxdiff import builder
    from jaxdiff.checkpoint import workdir as wd

    if not wd.is_workdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir}: not a training workdir (no checkpoints/ folder)")
    c = builder.saved_run_config(workdir)
    if not c.model.checkpoint:
        c.tokenizer.vocab_size = len(builder.tokenizer_for(c, workdir))
    return c


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with an unknown `--config.a.b=v` key refused by name instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(e))
        missing = names[0] if names else str(e)
        hint = re.search(r'Did you mean "([^"]+)"', str(e))
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.") and missing in a.split("=")[0].split(".")]
        name = bad[0] if bad else "--config"
        print(f"plan_memory: error: {name}: the config has no key {missing!r}"
              + (f" (did you mean {hint.group(1)!r}?)" if hint else ""), file=sys.stderr)
        sys.exit(2)
    except flags.Error as e:
        print(f"plan_memory: error: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    c = _CONFIG.value
    if (c is None) == (_WORKDIR.value is None):
        raise app.UsageError("give --config (e.g. configs/qwen3_coder_30b_a3b.py) or --workdir, not both")
    absl_logging.set_verbosity(absl_logging.WARNING)  # jax logs each backend it does not find at INFO
    from jaxdiff.model.config import ConfigError
    from jaxdiff.train.plan import PlanError, parse_mesh, plan_memory, resolve_mesh

    try:
        if _WORKDIR.value is not None:
            c = workdir_config(_WORKDIR.value)
        if _MESH.value is not None:
            mesh = parse_mesh(_MESH.value, _DEVICES.value)
        else:
            mesh = resolve_mesh(dict(c.mesh), _DEVICES.value)
        hf = None if c.model.checkpoint or _WORKDIR.value else reference_hf_config(flags.FLAGS["config"])
        plan = plan_memory(c, mesh=mesh, batch=_BATCH.value, seq=_SEQ.value, remat=_REMAT.value,
                           sample_batch=_SAMPLE_BATCH.value, prompt_length=_PROMPT.value, gen_length=_GEN.value,
                           fp8=_FP8.value, hf_config=hf, device_memory_gb=_MEMORY.value)
    except (PlanError, ConfigError, FileNotFoundError) as e:
        print(f"plan_memory: error: {e}", file=sys.stderr)
        return 2
    print(plan.format())
    return 0 if plan.fits("train") and plan.fits("sample") else 1


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
