"""grain pipelines: documents -> tokens -> packed fixed-length rows -> per-process batches, and
conversations -> (prompt + answer) rows with prompt lengths. Iterators are checkpointable
(`get_state`/`set_state`, or orbax through `grain.checkpoint`). Batches are dicts of NumPy arrays:
tokens [b, L] int32, valid [b, L] bool, prompt_lengths [b] int32, where b is this process's share."""
from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np

from jaxdiff.data import sources


@dataclasses.dataclass(frozen=True)
class DataConfig:
    kind: str = "code"            # code | text | sft
    path: str = ""                # folder / glob (code), file or saved dataset (text, sft); "" = stdlib
    text_field: str = ""          # for text: which field holds the text ("" = detect)
    seq_len: int = 256
    batch_size: int = 8           # global, over all processes
    eval_permille: int = 20       # documents held out (by name hash)
    seed: int = 0
    answer_length: int = 0        # sft: >0 pads each answer with EOS to this many tokens, in the loss (the
                                  # fixed gen_length a diffusion sampler then fills); 0: answer + EOS only
    shuffle_window: int = 1024    # packed rows shuffled together (rows of one long file would
                                  # otherwise fill whole batches)


def _process_slice(ds, process_index: int, process_count: int):
    return ds[process_index::process_count] if process_count > 1 else ds


def _rows_from_packed(x) -> dict:
    seg = x["tokens_segment_ids"]
    return {"tokens": x["tokens"].astype(np.int32), "valid": seg > 0,
            "prompt_lengths": np.int32(0)}


def pretrain_documents(cfg: DataConfig) -> tuple[list, list, list[str]]:
    """(train items, held-out items, report lines). Items are file paths (code) or texts."""
    if cfg.kind == "code":
        paths = sources.code_files(cfg.path or None)
        train = [p for p in paths if not sources.is_heldout(p, cfg.eval_permille)]
        heldout = [p for p in paths if sources.is_heldout(p, cfg.eval_permille)]
        return train, heldout, [f"{cfg.path or sources.stdlib_root()}: {len(paths)} files "
                                f"({len(heldout)} held out)"]
    texts, report = sources.text_records(cfg.path, cfg.text_field or None)
    train = [t for i, t in enumerate(texts) if not sources.is_heldout(str(i), cfg.eval_permille)]
    heldout = [t for i, t in enumerate(texts) if sources.is_heldout(str(i), cfg.eval_permille)]
    return train, heldout, [report.summary(len(texts) + report.bad)]


def pretrain_dataset(items: list, tokenizer, cfg: DataConfig, *, train: bool, process_index: int = 0,
                     process_count: int = 1) -> grain.IterDataset:
    """Packed rows of seq_len tokens (documents joined with EOS), batched per process."""
    if not items:
        raise sources.DataError(f"{cfg.path or 'stdlib'}: no {'training' if train else 'held-out'} documents")
    eos = tokenizer.eos_token_id
    is_path = cfg.kind == "code"

    def encode(item):
        text = sources.read_file(item) if is_path else item
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return {"tokens": np.asarray(ids + [eos], np.int32)}

    ds = grain.MapDataset.source(items)
    if train:
        ds = ds.shuffle(seed=cfg.seed).repeat()
    ds = _process_slice(ds, process_index, process_count).map(encode).to_iter_dataset()
    ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": cfg.seq_len})
    if train and cfg.shuffle_window > 1:
        ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=cfg.shuffle_window, seed=cfg.seed)
    local = local_batch_size(cfg.batch_size, process_count)
    return ds.map(_rows_from_packed).batch(local, drop_remainder=train)


def local_batch_size(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"data.batch_size={global_batch} is not divisible by {process_count} processes")
    return global_batch // process_count


def sft_rows(examples: list, tokenizer, seq_len: int, answer_length: int = 0) -> list[dict]:
    """One row per example, answer truncated to fit seq_len. A conversation (list of messages): the
    chat template applied, prompt = everything before the final assistant answer (including the
    assistant header). A raw pair {"prompt", "answer"}: the prompt's tokens, then the answer's
    (tokenized on its own, as a sampler continuing the prompt's tokens sees it) and EOS.
    answer_length > 0: the answer is padded with EOS to that many tokens and the padding is part of
    the answer (trained, as LLaDA's SFT does), so a fixed-length sampler learns to end with EOS."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    rows = []
    for ex in examples:
        if isinstance(ex, dict):
            prompt = list(_ids(tokenizer(ex["prompt"], add_special_tokens=False)))
            full = prompt + list(_ids(tokenizer(ex["answer"], add_special_tokens=False))) + [eos]
        else:
            prompt = tokenizer.apply_chat_template(ex[:-1], add_generation_prompt=True, tokenize=True)
            full = tokenizer.apply_chat_template(ex, tokenize=True)
            prompt, full = list(_ids(prompt)), list(_ids(full))
            if full[:len(prompt)] != prompt:
                raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
        if answer_length > 0 and len(full) < len(prompt) + answer_length:
            full = full + [eos] * (len(prompt) + answer_length - len(full))
        full = full[:seq_len]
        plen = min(len(prompt), seq_len)
        tokens = np.full(seq_len, pad, np.int32)
        tokens[:len(full)] = full
        rows.append({"tokens": tokens, "valid": np.arange(seq_len) < len(full),
                     "prompt_lengths": np.int32(plen)})
    return rows


def _ids(x):
    return x["input_ids"] if isinstance(x, dict) or hasattr(x, "keys") else x


def sft_dataset(rows: list[dict], cfg: DataConfig, *, train: bool, process_index: int = 0,
                process_count: int = 1) -> grain.IterDataset:
    """Batches of SFT rows. Every process forms the same global batch and keeps its contiguous
    share of rows, so the global batch (and the run) is the same for any number of processes."""
    local = local_batch_size(cfg.batch_size, process_count)
    ds = grain.MapDataset.source(rows)
    if train:
        ds = ds.shuffle(seed=cfg.seed).repeat()
    ds = ds.batch(cfg.batch_size, drop_remainder=True)   # a partial batch cannot be split evenly
    if process_count > 1:
        lo = process_index * local
        ds = ds.map(lambda b: {k: v[lo:lo + local] for k, v in b.items()})
    return ds.to_iter_dataset()


def to_global(batch: dict, shardings: dict) -> dict:
    """This process's rows -> global jax arrays (`jax.make_array_from_process_local_data`)."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in batch.items()}
