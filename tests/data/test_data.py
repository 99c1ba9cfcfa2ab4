"""Data sources and grain pipelines: stdlib corpus, text files, SFT formats, malformed rows."""
import json
import os

import numpy as np
import pytest

from jaxdiff.data import pipeline, sources
from jaxdiff.data import tokenizer as tk


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    files = sources.code_files()[:60]
    return tk.train_bpe((sources.read_file(p) for p in files), 600, str(tmp_path_factory.mktemp("tok")))


def test_default_corpus_is_the_stdlib_and_split_is_deterministic():
    paths = sources.code_files()
    assert len(paths) > 500 and all(p.endswith(".py") for p in paths)
    assert not any("site-packages" in p for p in paths)
    held = [p for p in paths if sources.is_heldout(p, 20)]
    assert 0 < len(held) < 0.05 * len(paths)
    assert held == [p for p in paths if sources.is_heldout(p, 20)]


def test_missing_or_empty_sources_fail_fast_with_their_path(tmp_path):
    with pytest.raises(sources.DataError, match=str(tmp_path / "nope")):
        sources.code_files(str(tmp_path / "nope"))
    with pytest.raises(sources.DataError, match="no .py files"):
        sources.code_files(str(tmp_path))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(sources.DataError, match="empty.jsonl: no usable text rows"):
        sources.text_records(str(tmp_path / "empty.jsonl"))


def test_packed_rows_join_documents_with_eos(tokenizer, tmp_path):
    docs = [f"def f{i}(x):\n    return x * {i}\n" for i in range(40)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = pipeline.DataConfig(kind="text", path=str(tmp_path / "d.jsonl"), seq_len=16, batch_size=2)
    batches = list(pipeline.pretrain_dataset(docs, tokenizer, cfg, train=False))
    rows = np.concatenate([b["tokens"][b["valid"]] for b in batches])
    eos = tokenizer.eos_token_id
    expected = np.concatenate([tokenizer(d, add_special_tokens=False)["input_ids"] + [eos] for d in docs])
    np.testing.assert_array_equal(rows, expected)           # nothing lost, nothing reordered
    assert all(b["valid"][:-1].all() for b in batches)      # only the very last row is padded


def test_training_iterator_resumes_exactly(tokenizer):
    cfg = pipeline.DataConfig(seq_len=64, batch_size=4)
    train, held, _ = pipeline.pretrain_documents(cfg)
    it = iter(pipeline.pretrain_dataset(train[:50], tokenizer, cfg, train=True))
    first = next(it)
    assert first["tokens"].shape == (4, 64) and first["prompt_lengths"].shape == (4,)
    assert first["valid"].all()
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it)["tokens"] for _ in range(3)]
    again = iter(pipeline.pretrain_dataset(train[:50], tokenizer, cfg, train=True))
    # through JSON, as checkpoints store it (grain's tuples come back as lists)
    from jaxdiff.train.loop import _iterator_state_from_json
    again.set_state(_iterator_state_from_json(json.loads(json.dumps(state))))
    for e in expected:
        np.testing.assert_array_equal(next(again)["tokens"], e)


def test_process_shards_are_disjoint(tokenizer):
    cfg = pipeline.DataConfig(seq_len=32, batch_size=4)
    train, _, _ = pipeline.pretrain_documents(cfg)
    docs = train[:20]
    a = next(iter(pipeline.pretrain_dataset(docs, tokenizer, cfg, train=False, process_index=0, process_count=2)))
    b = next(iter(pipeline.pretrain_dataset(docs, tokenizer, cfg, train=False, process_index=1, process_count=2)))
    assert a["tokens"].shape == (2, 32) and not np.array_equal(a["tokens"], b["tokens"])


def test_text_files_of_every_kind(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"content": "x = 1"}\n{"content": 3}\nnot json\n\n{"content": "y = 2"}\n')
    texts, report = sources.text_records(str(tmp_path / "a.jsonl"))
    assert texts == ["x = 1", "y = 2"] and report.bad == 2
    assert report.examples[0].endswith("a.jsonl:2: field 'content' missing or not a string")
    assert "a.jsonl:3: invalid JSON" in report.examples[1]
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "b.parquet")
    assert sources.text_records(str(tmp_path / "b.parquet"))[0] == ["a", "b"]
    import datasets
    datasets.Dataset.from_dict({"code": ["p", "q"]}).save_to_disk(str(tmp_path / "ds"))
    assert sources.text_records(str(tmp_path / "ds"))[0] == ["p", "q"]
    (tmp_path / "c.txt").write_text("plain")
    assert sources.text_records(str(tmp_path / "c.txt"))[0] == ["plain"]


def test_both_sft_formats_give_the_same_rows_and_exact_prompt_lengths(tokenizer, tmp_path):
    sharegpt = {"system": "Be brief.", "conversations": [{"from": "human", "value": "add 1 and 2"},
                                                          {"from": "gpt", "value": "3"}]}
    openai = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "add 1 and 2"},
                           {"role": "assistant", "content": "3"}]}
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join([json.dumps(sharegpt), json.dumps(openai), '{"messages": []}',
                               '{"conversations": [{"from": "gpt", "value": "x"}]}', "{oops"]) + "\n")
    convs, report = sources.conversations(str(path))
    assert len(convs) == 2 and convs[0] == convs[1]
    assert report.bad == 3 and [e.split(":")[1] for e in report.examples] == ["3", "4", "5"]
    rows = pipeline.sft_rows(convs, tokenizer, seq_len=48)
    np.testing.assert_array_equal(rows[0]["tokens"], rows[1]["tokens"])
    # token by token: the prompt is exactly the rendered system + user turns + assistant header
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]
    prompt = enc("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nadd 1 and 2<|im_end|>\n<|im_start|>assistant\n")
    answer = enc("3<|im_end|>\n")
    r = rows[0]
    assert int(r["prompt_lengths"]) == len(prompt)
    n = len(prompt) + len(answer)
    assert r["tokens"][:len(prompt)].tolist() == prompt and r["tokens"][len(prompt):n].tolist() == answer
    assert r["valid"].tolist() == [True] * n + [False] * (48 - n)
    assert tokenizer.decode(r["tokens"][int(r["prompt_lengths"]):n]) == "3<|im_end|>\n"


def test_raw_prompt_answer_rows_with_the_answer_padded_by_eos(tokenizer, tmp_path):
    """{"prompt", "answer"} rows (python -m jaxdiff.eval.export_sft): no chat template, the prompt's
    tokens then the answer's (tokenized on its own, as the sampler continues a prompt) and EOS; with
    answer_length the answer is EOS-padded to that many tokens, in the loss (valid)."""
    conv = {"messages": [{"role": "user", "content": "add 1 and 2"}, {"role": "assistant", "content": "3"}]}
    pair = {"id": "t/1", "prompt": "def f(x):\n", "answer": "    return x + 1\n"}
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join([json.dumps(pair), json.dumps(conv), '{"prompt": "x"}', '{"prompt": "x", "answer": ""}']))
    examples, report = sources.sft_examples(str(path))
    assert examples[0] == {"prompt": pair["prompt"], "answer": pair["answer"]} and isinstance(examples[1], list)
    assert report.bad == 2
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]
    prompt, answer, eos = enc(pair["prompt"]), enc(pair["answer"]), tokenizer.eos_token_id
    r = pipeline.sft_rows(examples[:1], tokenizer, seq_len=48)[0]
    n = len(prompt) + len(answer) + 1
    assert int(r["prompt_lengths"]) == len(prompt)
    assert r["tokens"][:n].tolist() == prompt + answer + [eos] and r["valid"].tolist() == [True] * n + [False] * (48 - n)
    r = pipeline.sft_rows(examples, tokenizer, seq_len=48, answer_length=16)
    m = len(prompt) + 16
    assert r[0]["tokens"][:m].tolist() == prompt + answer + [eos] * (16 - len(answer))
    assert r[0]["valid"].tolist() == [True] * m + [False] * (48 - m)
    plen = int(r[1]["prompt_lengths"])   # a conversation row is padded the same way
    assert r[1]["valid"].sum() == plen + 16 and r[1]["tokens"][plen + 15] == eos


def test_train_tokenizer_tool(tmp_path, capsys):
    from tools import train_tokenizer
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    assert train_tokenizer.main(["--out_dir", str(tmp_path / "tok"), "--source", str(src), "--vocab_size", "300"]) == 0
    tok = tk.load_tokenizer(str(tmp_path / "tok"))
    for special in tk.SPECIAL_TOKENS:
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok.decode(tok("def f1(x):", add_special_tokens=False)["input_ids"]) == "def f1(x):"
    assert train_tokenizer.main(["--out_dir", str(tmp_path / "t2"), "--source", str(tmp_path / "none")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_sft_global_batches_do_not_depend_on_the_process_count(tokenizer):
    """Every process keeps a contiguous share of the same global batch: two processes' rows,
    concatenated, are one process's batch (so a multi-process run equals a single-process one)."""
    convs = [[{"role": "user", "content": f"add {i} and {i + 1}"}, {"role": "assistant", "content": str(2 * i + 1)}]
             for i in range(20)]
    rows = pipeline.sft_rows(convs, tokenizer, seq_len=32)
    cfg = pipeline.DataConfig(kind="sft", seq_len=32, batch_size=4)
    one = iter(pipeline.sft_dataset(rows, cfg, train=True))
    parts = [iter(pipeline.sft_dataset(rows, cfg, train=True, process_index=i, process_count=2)) for i in range(2)]
    for _ in range(7):   # past one epoch (20 rows = 5 batches): the reshuffled repeat too
        whole, a, b = next(one), next(parts[0]), next(parts[1])
        assert a["tokens"].shape == (2, 32)
        for k in whole:
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), whole[k])
