"""launch/main.py, the whole loop, as a user runs it: `configs/main_job.py:runlocal` end to end
(pre-train -> export -> SFT -> eval -> RL -> eval, each stage in its folder, the before/after table
as JSON and markdown), a second run that skips every stage, and bad keys refused by name.

The end-to-end run is mostly every stage's compile at tiny sizes: 95-120 s on the loaded 2-core
machine (load 5-7, 2026-11-29), 4-5 s for the second run."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import USER_XLA_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("pretrain", "export", "sft", "eval_before", "rl", "eval_after")      # the default run
CONTROL = ("control", "eval_control")                                         # on request, after it
SUITES = ("synthetic-heldout-constants", "synthetic-heldout-templates")


def _main(*args, timeout=900):
    # one CPU device, as a user runs it (not the 8 fake ones of this session)
    env = {**os.environ, "XLA_FLAGS": USER_XLA_FLAGS}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "launch/main.py", "--config", "configs/main_job.py:runlocal", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return out, time.perf_counter() - t0


@pytest.mark.slow
def test_runlocal_runs_every_stage_then_skips_them(tmp_path):
    first, first_s = _main(f"--config.workdir={tmp_path}")
    assert first.returncode == 0, first.stderr[-3000:]
    for stage in ("pretrain", "sft"):
        assert os.listdir(tmp_path / stage / "checkpoints") == ["2"]
    assert "2" in os.listdir(tmp_path / "rl" / "checkpoints")
    rows = (tmp_path / "export" / "synthetic_train.jsonl").read_text().splitlines()
    assert len(rows) > 1000 and {"id", "prompt", "answer"} <= set(json.loads(rows[0]))
    from jaxdiff.eval.suites import load_suite    # SFT never sees the constants RL trains on
    rl_ids = {t.id for t in load_suite("synthetic-train-rl")}
    assert rl_ids and not rl_ids & {json.loads(r)["id"] for r in rows}
    for stage in ("eval_before", "eval_after"):
        for suite in SUITES:
            results = (tmp_path / stage / f"{suite}_samples.jsonl_results.jsonl").read_text().splitlines()
            assert len(results) == 2
    assert json.loads((tmp_path / "rl" / "rl_samples.jsonl").read_text().splitlines()[-1])["batch"] == 1

    report = json.loads((tmp_path / "main_job.json").read_text())
    for when in ("before", "after"):
        m = report[when]
        for suite in SUITES:
            assert 0.0 <= m["suites"][suite]["pass@1"] <= 1.0 and m["suites"][suite]["tasks"] == 2
        assert m["mean_denoising_steps"] == 8.0          # gen_length 8, one token per step
        assert m["tokens_per_forward"] > 0 and m["completions_per_s"] > 0
    assert report["rl"]["batch"] == [1, 2]
    assert all(len(report["rl"][k]) == 2 for k in ("reward", "pass_rate", "steps_used"))
    for stage in STAGES:
        assert report["stages"][stage]["status"] == "ran" and report["stages"][stage]["wall_s"] >= 0
    for stage in CONTROL:
        assert report["stages"][stage]["status"] == "not selected" and report["stages"][stage]["wall_s"] is None
    assert report["control"] is None and report["paired"]["control"] is None
    for suite in SUITES:
        pair = report["paired"]["after"][suite]
        passed = {w: report[w]["suites"][suite]["passed"] for w in ("before", "after")}
        assert passed["after"] - passed["before"] == pair["gained"] - pair["lost"]
    assert report["total_wall_s"] > 0 and report["bend"] is False
    md = (tmp_path / "main_job.md").read_text()
    for line in (f"| greedy pass@1, {SUITES[0]} |", f"| greedy pass@1, {SUITES[1]} |", "| mean denoising steps |",
                 "| tokens per forward |", "| verified completions / s |", "| rl |"):
        assert line in md and line in first.stdout, line
    assert (tmp_path / "main_job.png").stat().st_size > 0

    second, second_s = _main(f"--config.workdir={tmp_path}")
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in STAGES:
        assert f"[{stage}] skipped: already complete" in second.stdout
    again = json.loads((tmp_path / "main_job.json").read_text())
    assert {again["stages"][s]["status"] for s in STAGES} == {"skipped"}
    assert again["before"] == report["before"] and again["after"] == report["after"]
    assert second_s < min(60.0, first_s / 2), (first_s, second_s)
    print(f"first run {first_s:.1f} s, second run {second_s:.1f} s")

    # the control: SFT continued from the SFT model for the RL stage's wall time, scored on the same tasks
    third, _ = _main(f"--config.workdir={tmp_path}", "--config.stages=" + ",".join(CONTROL))
    assert third.returncode == 0, third.stderr[-3000:]
    report = json.loads((tmp_path / "main_job.json").read_text())
    rec = json.loads((tmp_path / "control" / "main_stage.json").read_text())
    sft_s_per_step = report["stages"]["sft"]["wall_s"] / 2
    assert rec["steps"] == max(1, int(report["stages"]["rl"]["wall_s"] / sft_s_per_step))
    assert os.listdir(tmp_path / "control" / "checkpoints") == [str(rec["steps"])]
    assert report["stages"]["control"]["status"] == "ran" and report["stages"]["eval_control"]["status"] == "ran"
    for suite in SUITES:
        assert report["control"]["suites"][suite]["tasks"] == 2
        assert set(report["paired"]["control"][suite]) >= {"gained", "lost"}
    assert "control: more SFT, RL's wall time" in third.stdout


def test_bad_keys_and_values_are_refused_by_name(tmp_path):
    for arg, named in (("--config.sft.train.stepz=3", "--config.sft.train.stepz: unknown key 'stepz'"),
                       ("--config.stages=pretrain,deploy", "config.stages='pretrain,deploy'"),
                       ("--config.eval.limit=-1", "config.eval.limit=-1"),
                       ("--config.sft.data.batch_size=0", "config.sft.data.batch_size=0"),
                       ("--config.rl.model.checkpoint=runs/x", "config.rl.model.checkpoint='runs/x': set by")):
        out, _ = _main(arg, f"--config.workdir={tmp_path}", timeout=120)
        assert out.returncode == 2, (arg, out.stderr[-2000:])
        assert out.stderr.strip().splitlines()[-1].startswith(f"launch/main.py: error: {named}"), out.stderr
    assert not os.listdir(tmp_path)                      # nothing ran


def test_a_stage_subset_runs_alone_and_bend_joins_when_on_path(tmp_path):
    out, _ = _main("--config.stages=export", "--config.bend=auto", f"--config.workdir={tmp_path}", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "main_job.json").read_text())
    assert report["stages"]["export"]["status"] == "ran" and report["stages"]["pretrain"]["status"] == "not selected"
    assert report["before"] is None and "not run" in out.stdout
    bend = shutil.which("bend") is not None and shutil.which("hvm") is not None
    assert report["bend"] is bend
    assert report["rl_suites"] == "synthetic-train-rl" + (",bend-synthetic-train-rl" if bend else "")
    # the control continues SFT for the RL stage's wall time: refused before RL has run, naming why
    out, _ = _main("--config.stages=control", f"--config.workdir={tmp_path}", timeout=120)
    assert out.returncode == 2 and "run the sft and rl stages first" in out.stderr.strip().splitlines()[-1], out.stderr
