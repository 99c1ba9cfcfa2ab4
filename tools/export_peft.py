"""Export one LoRA head of a training run as a PEFT adapter (or merged into a full HF folder).

    python tools/export_peft.py --workdir /runs/coder-lora --head diffusion --out_dir /ckpt/coder-diffusion-peft
    python tools/export_peft.py --workdir /runs/coder-lora --head ar --out_dir /ckpt/coder-ar-merged --merge

Adapter: adapter_config.json + adapter_model.safetensors in PEFT's key names (per-expert adapters
as vLLM loads them), for the diffusion head the `<|mask|>` row as trainable_token_indices, and the
run's tokenizer.
--merge: the base checkpoint (config.model.checkpoint) with W + scale B A written in, same files,
tensor names and dtypes. See docs/checkpoints.md.
"""
from __future__ import annotations

import argparse
import os
import sys

from jaxdiff.checkpoint.orbax_io import is_checkpoint
from jaxdiff.checkpoint.peft import PEFT_HEADS, export_merged, export_peft
from jaxdiff.checkpoint.safetensors_io import CheckpointError
from jaxdiff.model.config import ConfigError


class ExportError(ValueError):
    """Bad input, reported as one line."""


def check_run(workdir: str, head: str, step: int | None) -> dict:
    """The run's saved config, after the checks that need no model: a workdir, a LoRA run, the head trained."""
    from jaxdiff.checkpoint import workdir as wd
    from jaxdiff.config import schema
    from jaxdiff.config.files import with_defaults

    if not wd.is_workdir(workdir):
        raise ExportError(f"--workdir {workdir}: not a training workdir (no {wd.CHECKPOINTS}/ folder)")
    mgr = wd.manager(workdir, items=("meta",))
    try:
        c = with_defaults(wd.saved_config(mgr, wd.pick_step(mgr, step)))
    finally:
        mgr.close()
    if c.lora.full_training:
        raise ExportError(f"--workdir {workdir}: a full-training run (lora.full_training) has no adapters to "
                          "export; use tools/convert_hf.py / export_hf.py on its weights instead")
    if not schema.active_heads(c)[head]:
        trained = [h for h, on in schema.active_heads(c).items() if on and h in PEFT_HEADS]
        raise ExportError(f"--head {head}: {workdir} did not train the {head} head (it trained: {trained or 'none'})")
    return c


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--head", required=True, help=f"one of {', '.join(PEFT_HEADS)}")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--merge", action="store_true", help="write a full HF folder with the head merged in")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--base_model", default=None,
                   help="adapter_config.json's base_model_name_or_path: the HF folder or hub id of the base "
                        "(default: the run's model.checkpoint)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.head not in PEFT_HEADS:
            raise ExportError(f"--head {a.head!r}: choose from {', '.join(PEFT_HEADS)}")
        if os.path.exists(a.out_dir) and not a.overwrite:
            raise ExportError(f"--out_dir {a.out_dir}: already exists (pass --overwrite to replace it)")
        c = check_run(a.workdir, a.head, a.step)
        base = c.model.checkpoint or None
        if a.merge and base is None:
            raise ExportError(f"--merge: {a.workdir} trained from scratch (model.checkpoint is empty): "
                              "there is no base to merge into")
        from jaxdiff.builder import load_workdir
        model, tokenizer, _ = load_workdir(a.workdir, a.step)
        if a.merge:
            s = export_merged(model, a.head, base, a.out_dir, overwrite=a.overwrite, tokenizer=tokenizer)
        else:
            s = export_peft(model, a.head, a.base_model or base, a.out_dir, overwrite=a.overwrite,
                            tokenizer=tokenizer)
    except (ExportError, CheckpointError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"export_peft: error: {e}", file=sys.stderr)
        return 2
    what = "merged" if a.merge else "adapter"
    print(f"exported the {a.head} head ({what}) -> {s['out_dir']}")
    if not a.merge and not a.base_model and base and is_checkpoint(base):
        print(f"note: the base {base} is a converted jaxdiff checkpoint; peft loads the adapter onto its HF "
              "folder (tools/export_hf.py, or the folder it was converted from; --base_model records it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
