"""Tokenizers: the HF tokenizer of a checkpoint folder, or a byte-level BPE trained from scratch
(for models trained from scratch) with the special tokens jaxdiff needs."""
from __future__ import annotations

import os
from collections.abc import Iterable

EOS, PAD, MASK, IM_START, IM_END = "<|endoftext|>", "<|pad|>", "<|mask|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (EOS, PAD, MASK, IM_START, IM_END)
# Qwen2/Qwen3's pre-tokenizer split (their tokenizer.json): every digit is its own piece, so "36" in
# `add_36` and in `return x + 36` are the same two tokens and copying a number is copying tokens.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# ChatML, as Qwen uses it.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str):
    """Trains a byte-level BPE with Qwen's pre-tokenizer on `texts` and saves it (HF format) to
    out_dir; returns it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([   # as Qwen's: split, then map bytes (no second regex)
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[MASK, IM_START, IM_END])
    fast.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def tokenizer_dir(path: str) -> str | None:
    """Where a checkpoint folder keeps its tokenizer: the folder itself (HF), or its `hf_extra/`
    (a converted jaxdiff checkpoint); None if neither has one."""
    for d in (path, os.path.join(path, "hf_extra")):
        if any(os.path.exists(os.path.join(d, f)) for f in _TOKENIZER_FILES):
            return d
    return None


def load_tokenizer(path: str):
    """The tokenizer of a tokenizer folder, an HF checkpoint or a converted checkpoint."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer_dir(path) or path)
    except Exception as e:  # transformers raises several types for a folder without a tokenizer
        raise ValueError(f"{path}: no usable tokenizer ({type(e).__name__}: {e})") from None
