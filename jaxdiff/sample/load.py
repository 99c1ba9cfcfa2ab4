"""What the sampler runs on: a training workdir (its saved config rebuilds the model, the newest or a
given checkpoint fills it), or a converted / HF checkpoint folder through `jaxdiff.load_model`."""
from __future__ import annotations

import logging
import os

log = logging.getLogger("jaxdiff.sample")


def load_for_sampling(path: str, *, step: int | None = None, dtype: str | None = None,
                      tokenizer_path: str | None = None, mask_id: int | None = None):
    """-> (model, tokenizer or None). A base checkpoint without a mask token gets one: at the
    tokenizer's `<|mask|>` (added if absent) or at `mask_id`; its embedding is then the mean
    embedding, i.e. the model was never trained to denoise (sampling works, quality will not)."""
    from jaxdiff import builder
    from jaxdiff.checkpoint.workdir import is_workdir
    from jaxdiff.data import tokenizer as tok_lib

    if not path:
        raise ValueError("config.checkpoint is empty: give a training workdir, a converted checkpoint or an HF folder")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint folder")
    if is_workdir(path):
        if dtype:
            raise ValueError(f"{path} is a training workdir: its dtype comes from its config (leave dtype empty)")
        model, tokenizer, _ = builder.load_workdir(path, step)
        if tokenizer_path:
            tokenizer = tok_lib.load_tokenizer(tokenizer_path)
        return model, tokenizer
    if step is not None:
        raise ValueError(f"{path} is a checkpoint folder, not a training workdir: it has no steps to choose")
    from jaxdiff.model.mask_token import add_mask_token

    tokenizer = None
    if tokenizer_path or tok_lib.tokenizer_dir(path):
        tokenizer = tok_lib.load_tokenizer(tokenizer_path or path)
    model = builder.load_base(path, dtype=dtype or None, eos_token_id=None if tokenizer is None else tokenizer.eos_token_id)
    if model.config.mask_token_id is None:
        if tokenizer is None and mask_id is None:
            raise ValueError(f"{path}: the model has no mask token and no tokenizer; pass mask_id (a spare embedding row)")
        add_mask_token(model, tokenizer=tokenizer if mask_id is None else None, mask_token_id=mask_id)
        log.warning("%s: no trained mask token; using row %d initialised to the mean embedding (an untrained "
                    "diffusion model: expect poor samples)", path, model.config.mask_token_id)
    return model, tokenizer
