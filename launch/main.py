"""The main job, the whole loop: pre-train -> export the SFT rows -> SFT -> evaluate -> RL -> evaluate
again -> the before/after table (configs/main_job.py; fields in docs/configs.md). Two more stages,
not run by default, are the control RL has to beat: `control` continues SFT from the SFT model for
the wall time the RL stage took, and `eval_control` scores it on the same tasks.

    python launch/main.py --config configs/main_job.py
    python launch/main.py --config configs/main_job.py:runlocal          # every stage in tiny sizes
    python launch/main.py --config configs/main_job.py --config.stages=rl,eval_after --config.rl.rl.batches=30
    python launch/main.py --config configs/main_job.py --config.stages=control,eval_control   # after the job

Each stage runs in this process with its own launcher's code (`train.loop.train`,
`eval.export_sft.export`, `eval.harness.run`, `rl.loop.train_rl`) in `<workdir>/<stage>/`. A stage
whose output is complete (a checkpoint at its last step or batch, the export file, a result for
every task) is skipped without building anything; an interrupted one resumes as its launcher does.
SIGTERM / SIGINT: a training or RL stage saves and stops; an evaluation finishes its (small) task
list (a second signal stops it at once); then the job exits, and the same command continues. At the end it prints the before/after
table and writes <workdir>/main_job.{json,md,png}. Unknown keys and bad values are refused by name
(exit code 2).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import signal
import sys
import time

from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxdiff.config import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/main_job.py)", lock_config=True)

STAGES = ("pretrain", "export", "sft", "eval_before", "rl", "eval_after", "control", "eval_control")
EVALS = {"eval_before": "sft", "eval_after": "rl", "eval_control": "control"}   # evaluation -> the model it scores
TOP = ("workdir", "stages", "bend", "pretrain", "export", "sft", "eval", "rl")
WIRED = {"pretrain": ("workdir",), "sft": ("workdir", "model.checkpoint", "data.path"),
         "rl": ("workdir", "model.checkpoint"), "eval": ("checkpoint", "out_dir", "name")}
BEND_SUITE = "bend-synthetic-train-rl"
RECORD = "main_stage.json"
EXPORT_FILE = "synthetic_train.jsonl"


class MainJobError(ValueError):
    """A bad main-job config; the message names the field (config.<stage>.<field>)."""


# ----------------------------------------------------------------------------- config
def _get(c, dotted):
    for k in dotted.split("."):
        c = c[k]
    return c


def _set(c, dotted, value):
    *head, last = dotted.split(".")
    for k in head:
        c = c[k]
    c[last] = value


def _named(stage: str, e: Exception) -> MainJobError:
    """A stage validator's error with its keys put under the stage: config.x -> config.<stage>.x."""
    return MainJobError(re.sub(r"\bconfig\.", f"config.{stage}.", str(e)))


def plan(c) -> dict:
    """Checks the main-job config and returns the run's plan: {"workdir", "stages", "paths", "configs",
    "bend", "tasks", "suites"} with every stage's config wired to the others under config.workdir (a copy; `c` stays
    as it is). Raises MainJobError naming the field."""
    extra = sorted(set(c.keys()) - set(TOP))
    if extra:
        raise MainJobError(f"config.{extra[0]}: unknown field (known: {', '.join(TOP)})")
    if not c.workdir:
        raise MainJobError("config.workdir is empty")
    stages = [s.strip() for s in c.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise MainJobError(f"config.stages={c.stages!r}: choose from {', '.join(STAGES)} (comma-separated)")
    if c.bend not in ("auto", "on", "off"):
        raise MainJobError(f"config.bend={c.bend!r}: choose from auto, on, off")
    for sub, keys in WIRED.items():
        for k in keys:
            if _get(c[sub], k):
                raise MainJobError(f"config.{sub}.{k}={_get(c[sub], k)!r}: set by launch/main.py from "
                                   f"config.workdir; leave it empty")
    w = os.path.abspath(c.workdir)
    paths = {s: os.path.join(w, s) for s in STAGES}
    paths["export_file"] = os.path.join(paths["export"], EXPORT_FILE)
    cfg = {k: copy.deepcopy(c[k]) for k in ("pretrain", "export", "sft", "rl")}
    cfg["pretrain"].workdir = paths["pretrain"]
    cfg["sft"].workdir, cfg["sft"].model.checkpoint = paths["sft"], paths["pretrain"]
    cfg["sft"].data.path = paths["export_file"]
    cfg["rl"].workdir, cfg["rl"].model.checkpoint = paths["rl"], paths["sft"]
    cfg["control"] = copy.deepcopy(cfg["sft"])      # more SFT from the SFT model; its steps are set when it runs
    cfg["control"].workdir, cfg["control"].model.checkpoint = paths["control"], paths["sft"]
    have_bend = shutil.which("bend") is not None and shutil.which("hvm") is not None
    if c.bend == "on" and not have_bend:
        raise MainJobError("config.bend='on': bend and hvm are not on PATH (cargo install hvm@2.0.22 bend-lang@0.2.38)")
    bend = c.bend == "on" or (c.bend == "auto" and have_bend)
    if bend and not cfg["rl"].rl.bend_suites:
        cfg["rl"].rl.bend_suites = BEND_SUITE
    if not bend:
        cfg["rl"].rl.bend_suites = ""
    from jaxdiff.eval import harness, load_suite
    from jaxdiff.rl import config as rl_config
    from jaxdiff.train import config as train_config

    for stage in ("pretrain", "sft"):
        try:
            train_config.validate(cfg[stage])
        except ValueError as e:
            raise _named(stage, e) from None
    try:
        rl_config.validate(cfg["rl"])
    except ValueError as e:
        raise _named("rl", e) from None
    try:
        load_suite(cfg["export"].suite)
    except (KeyError, ValueError, OSError) as e:
        raise MainJobError(f"config.export.suite={cfg['export'].suite!r}: {e}") from None
    suites = [s.strip() for s in c.eval.suite.split(",") if s.strip()]
    if not suites:
        raise MainJobError("config.eval.suite is empty (comma-separated suites, scored before and after RL)")
    tasks = {}
    for stage, model in ((ev, paths[m]) for ev, m in EVALS.items()):
        cfg[stage] = {}
        for suite in suites:
            e = copy.deepcopy(c.eval)
            e.suite, e.checkpoint, e.out_dir, e.name = suite, model, paths[stage], suite
            try:
                harness.settings_from_config(e)
                tasks[suite] = [t.id for t in harness.load_tasks(e)]
            except harness.EvalConfigError as err:
                raise _named("eval", err) from None
            cfg[stage][suite] = e
    return {"workdir": w, "stages": stages, "paths": paths, "configs": cfg, "bend": bend, "tasks": tasks, "suites": suites}


# ----------------------------------------------------------------------------- is a stage done?
def newest_step(workdir: str) -> int:
    """The newest finished checkpoint's step (orbax renames a checkpoint to its bare step number only
    once it is complete), or -1."""
    d = os.path.join(workdir, "checkpoints")
    return max((int(n) for n in os.listdir(d) if n.isdigit()), default=-1) if os.path.isdir(d) else -1


def _done_ids(results_path: str) -> dict[str, int]:
    from jaxdiff.eval.verdicts import read_jsonl

    counts: dict[str, int] = {}
    if os.path.exists(results_path):
        for _, r in read_jsonl(results_path):
            counts[r["task_id"]] = counts.get(r["task_id"], 0) + 1
    return counts


def eval_done(p: dict, stage: str, suite: str) -> bool:
    from jaxdiff.eval.harness import output_paths

    e = p["configs"][stage][suite]
    counts = _done_ids(output_paths(e.out_dir, e.name)["results"])
    return all(counts.get(t, 0) >= e.n_samples for t in p["tasks"][suite])


def control_steps(p: dict) -> int | None:
    """The control's SFT steps: as many as fit in the RL stage's wall time at the SFT stage's own
    seconds per step (its compile and evaluations included, as the control's are); fixed in the
    control's record when it first runs. None until the SFT and RL stages have run."""
    fixed = read_record(p, "control").get("steps")
    if fixed:
        return int(fixed)
    sft, rl = read_record(p, "sft"), read_record(p, "rl")
    done = newest_step(p["paths"]["sft"])
    if not (sft["runs"] and rl["runs"] and rl.get("complete") and done > 0):
        return None
    return max(1, int(rl["wall_s"] / (sft["wall_s"] / done)))


def is_done(p: dict, stage: str) -> bool:
    cfg, paths = p["configs"], p["paths"]
    if stage in ("pretrain", "sft"):
        return newest_step(paths[stage]) >= cfg[stage].train.steps
    if stage == "control":
        steps = control_steps(p)
        return steps is not None and newest_step(paths[stage]) >= steps
    if stage == "rl":
        return newest_step(paths["rl"]) >= cfg["rl"].rl.batches
    if stage == "export":
        return os.path.isfile(paths["export_file"])
    return all(eval_done(p, stage, s) for s in p["suites"])


def read_record(p: dict, stage: str) -> dict:
    path = os.path.join(p["paths"][stage], RECORD)
    if not os.path.exists(path):
        return {"stage": stage, "wall_s": 0.0, "runs": 0}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_record(p: dict, stage: str, rec: dict) -> None:
    os.makedirs(p["paths"][stage], exist_ok=True)
    path = os.path.join(p["paths"][stage], RECORD)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(rec, f, indent=2)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- the stages
def _train(p, stage, rec):
    from jaxdiff.train.loop import summary_line, train

    out = train(p["configs"][stage], progress=True)
    rec.update(step=out["step"], eval={k: round(v, 4) for k, v in out["eval"].items()})
    if not out["stopped"]:
        print(f"[{stage}] {summary_line(out)}\n[{stage}] {out['sample_kind']} sample:\n{out['sample']}", flush=True)
    return out["stopped"]


def _control(p, stage, rec):
    steps = control_steps(p)
    if steps is None:
        raise MainJobError("config.stages: the control stage continues SFT for the RL stage's wall time; "
                           "run the sft and rl stages first")
    c = p["configs"]["control"]
    c.train.steps = c.optimizer.total_steps = steps
    c.train.eval_every = c.train.checkpoint_every = steps
    rec.update(steps=steps, rl_wall_s=round(read_record(p, "rl")["wall_s"], 2))
    write_record(p, stage, rec)        # the step count is fixed from here on, for a resumed control
    return _train(p, stage, rec)


def _export(p, stage, rec):
    from jaxdiff.eval.export_sft import export

    tmp = p["paths"]["export_file"] + ".tmp"
    rec["rows"] = export(p["configs"]["export"].suite, tmp)
    os.replace(tmp, p["paths"]["export_file"])
    return None


def _eval(p, stage, rec):
    from jaxdiff.eval import harness

    model = tok = None
    per = rec.setdefault("suites", {})
    for suite, e in p["configs"][stage].items():
        if eval_done(p, stage, suite):
            continue
        if model is None:                  # one load for every suite
            model, tok = harness.load_model(e)
        t0 = time.perf_counter()
        summ = harness.run(e, model=model, tokenizer=tok)
        s = per.setdefault(suite, {"wall_s": 0.0, "new_samples": 0, "generation_s": 0.0})
        s["wall_s"] += time.perf_counter() - t0
        s["new_samples"] += summ["new_samples"]
        s["generation_s"] += summ["generation_s"]
    return None


def _rl(p, stage, rec):
    from jaxdiff.rl.loop import train_rl

    out = train_rl(p["configs"]["rl"], progress=True)
    rec.update(batch=out["batch"], bend_suites=p["configs"]["rl"].rl.bend_suites)
    return out["stopped"]


RUNNERS = {"pretrain": _train, "export": _export, "sft": _train, "eval_before": _eval, "rl": _rl,
           "eval_after": _eval, "control": _control, "eval_control": _eval}


class _Signals:
    """Records SIGTERM / SIGINT between stages and during the export and evaluations (a second one
    interrupts at once); the training and RL loops put their own handler in place while they run
    (saving, then returning `stopped`)."""

    def __init__(self):
        self.requested, self._old = None, {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:   # asked twice: stop now (an evaluation keeps the tasks it has judged)
            raise KeyboardInterrupt(self.requested)
        self.requested = signal.Signals(signum).name
        print(f"{self.requested} received: stopping after this stage (send it again to stop now)", flush=True)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run(c, echo=print) -> dict:
    """Runs (or continues) the main job of config `c`; returns {"report", "status", "stopped"}."""
    from jaxdiff.config import ConfigValueError
    from jaxdiff.eval.harness import EvalConfigError

    p = plan(c)
    status = {}
    stopped = None
    echo(f"main job in {p['workdir']}; stages: {', '.join(p['stages'])}; "
         f"RL tasks: {p['configs']['rl'].rl.suites}" + (f" + {p['configs']['rl'].rl.bend_suites}" if p["bend"]
                                                         else " (Python only)"))
    with _Signals() as sig:
        for stage in p["stages"]:
            if stopped:
                break
            rec = read_record(p, stage)
            if is_done(p, stage):
                status[stage] = "skipped"
                echo(f"[{stage}] skipped: already complete in {p['paths'][stage]}")
                continue
            echo(f"[{stage}] {'resuming' if rec['runs'] else 'running'} in {p['paths'][stage]}")
            t0 = time.perf_counter()
            try:
                stopped = RUNNERS[stage](p, stage, rec) or sig.requested
            except (ConfigValueError, EvalConfigError) as e:   # found only once the stage builds
                raise _named(stage.split("_")[0], e) from None
            rec["wall_s"] = rec["wall_s"] + time.perf_counter() - t0
            rec["runs"] += 1
            rec["complete"] = is_done(p, stage)
            write_record(p, stage, rec)
            status[stage] = ("resumed" if rec["runs"] > 1 else "ran") if rec["complete"] else "stopped"
            echo(f"[{stage}] {'done' if rec['complete'] else 'stopped'} in {time.perf_counter() - t0:.1f} s")
    if stopped:
        echo(f"stopped by {stopped}; run the same command again to continue")
        return {"report": None, "status": status, "stopped": stopped}
    report = write_report(p, status, echo=echo)
    return {"report": report, "status": status, "stopped": None}


# ----------------------------------------------------------------------------- the report
def eval_records(p: dict, stage: str, suite: str) -> list[dict]:
    """The evaluation's result records of the suite's planned tasks (resumed runs included)."""
    from jaxdiff.eval import verdicts
    from jaxdiff.eval.harness import output_paths

    e = p["configs"][stage][suite]
    ids = set(p["tasks"][suite])
    return [r for _, r in verdicts.read_jsonl(output_paths(e.out_dir, e.name)["results"]) if r["task_id"] in ids]


def eval_metrics(p: dict, stage: str) -> dict | None:
    """pass@1 per suite and the sampler's cost over every suite, from the evaluation's result files
    (all of them, resumed runs included); None until the evaluation is complete."""
    from jaxdiff.eval import verdicts

    if not all(eval_done(p, stage, s) for s in p["suites"]):
        return None
    rec = read_record(p, stage).get("suites", {})
    out = {"suites": {}}
    steps = fwd = tokens = n = new = 0
    wall = 0.0
    for suite in p["configs"][stage]:
        recs = eval_records(p, stage, suite)
        summ = verdicts.summary(recs, ks=(1,))
        out["suites"][suite] = {"pass@1": summ["pass@1"], "tasks": summ["tasks"], "passed": summ["passed"]}
        steps += sum(r.get("steps", 0) for r in recs)
        fwd += sum(r.get("forward_passes", 0) for r in recs)
        tokens += sum(r.get("tokens", 0) for r in recs)
        n += len(recs)
        wall += rec.get(suite, {}).get("wall_s", 0.0)
        new += rec.get(suite, {}).get("new_samples", 0)
    out["mean_denoising_steps"] = round(steps / n, 2) if n else None
    out["tokens_per_forward"] = round(tokens / fwd, 3) if fwd else None
    # generated, sanitised and judged by the pool, per second of the evaluation (compiles included)
    out["completions_per_s"] = round(new / wall, 3) if wall else None
    return out


def paired(p: dict, stage: str) -> dict | None:
    """Per suite, the same tasks scored by the SFT model (eval_before) and by `stage`'s model: tasks
    gained and lost, and the mean denoising steps of the tasks both pass (greedy, one sample per
    task). None until both evaluations are complete."""
    if not all(eval_done(p, s, x) for s in ("eval_before", stage) for x in p["suites"]):
        return None
    out = {}
    for suite in p["suites"]:
        before, after = ({r["task_id"]: r for r in eval_records(p, s, suite)} for s in ("eval_before", stage))
        ok = lambda recs, t: bool(recs[t].get("passed"))   # noqa: E731
        both = [t for t in before if t in after and ok(before, t) and ok(after, t)]
        mean = lambda recs: round(sum(recs[t].get("steps", 0) for t in both) / len(both), 2) if both else None  # noqa: E731
        out[suite] = {"gained": sum(not ok(before, t) and ok(after, t) for t in before if t in after),
                      "lost": sum(ok(before, t) and not ok(after, t) for t in before if t in after),
                      "both_passed": len(both), "steps_both_before": mean(before), "steps_both_after": mean(after)}
    return out


def rl_curves(p: dict) -> dict:
    """Per RL batch: mean reward, pass rate and denoising steps used, from <rl>/rl_samples.jsonl."""
    path = os.path.join(p["paths"]["rl"], "rl_samples.jsonl")
    per: dict[int, list[dict]] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    per.setdefault(int(r["batch"]), []).append(r)
    batches = sorted(per)
    mean = lambda key, b: round(sum(float(r[key]) for r in per[b]) / len(per[b]), 4)  # noqa: E731
    return {"batch": [b + 1 for b in batches], "reward": [mean("reward", b) for b in batches],
            "pass_rate": [mean("passed", b) for b in batches], "steps_used": [mean("steps", b) for b in batches]}


ROWS = (("mean_denoising_steps", "mean denoising steps", "{:.1f}"), ("tokens_per_forward", "tokens per forward",
                                                                     "{:.2f}"),
        ("completions_per_s", "verified completions / s", "{:.2f}"))


def _fmt(x, fmt):
    return "not run" if x is None else fmt.format(x)


def tables(report: dict) -> str:
    """The before/after table (a control column once the control is evaluated) and the stages' wall
    times, as markdown."""
    cols = [("before RL", report["before"] or {}, None), ("after RL", report["after"] or {}, report["paired"]["after"])]
    if report["control"]:
        cols.append(("control: more SFT, RL's wall time", report["control"], report["paired"]["control"]))
    lines = ["| | " + " | ".join(c[0] for c in cols) + " |", "| --- |" + " ---: |" * len(cols)]
    for suite in report["suites"]:
        def cell(m, pair):
            if not m:
                return "not run"
            x = m["suites"][suite]
            out = _fmt(100 * x["pass@1"], "{:.1f}%") + f" ({x['passed']}/{x['tasks']})"
            return out + (f", +{pair[suite]['gained']} / -{pair[suite]['lost']}" if pair else "")
        lines.append(f"| greedy pass@1, {suite} | " + " | ".join(cell(m, pair) for _, m, pair in cols) + " |")
    for key, label, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(m.get(key), fmt) for _, m, _ in cols) + " |")
    for suite in report["suites"]:
        pair = report["paired"]["after"]
        if pair and pair[suite]["both_passed"]:
            x = pair[suite]
            lines.append(f"| mean steps, {suite} tasks passed before and after RL ({x['both_passed']}) | "
                         f"{x['steps_both_before']:.1f} | {x['steps_both_after']:.1f} |" + " |" * (len(cols) - 2))
    lines += ["", "+n / -m: tasks whose verdict changed against before RL (the same tasks, greedy), passing now / "
              "failing now.", "", "| stage | wall time | this run |", "| --- | ---: | --- |"]
    for s in STAGES:
        st = report["stages"][s]
        lines.append(f"| {s} | {_fmt(st['wall_s'], '{:.1f} s')} | {st['status']} |")
    lines.append(f"| total | {report['total_wall_s']:.1f} s | |")
    return "\n".join(lines)


def write_report(p: dict, status: dict, echo=print) -> dict:
    """<workdir>/main_job.json, .md and .png."""
    w = p["workdir"]
    stages = {}
    for s in STAGES:
        rec = read_record(p, s)
        stages[s] = {"status": status.get(s, "not selected"), "wall_s": round(rec["wall_s"], 2) if rec["runs"] else None,
                     **{k: v for k, v in rec.items() if k not in ("stage", "wall_s", "runs")}}
    report = {"workdir": w, "suites": p["suites"], "bend": p["bend"],
              "rl_suites": p["configs"]["rl"].rl.suites + (f",{p['configs']['rl'].rl.bend_suites}" if p["bend"] else ""),
              "before": eval_metrics(p, "eval_before"), "after": eval_metrics(p, "eval_after"),
              "control": eval_metrics(p, "eval_control"),
              "paired": {"after": paired(p, "eval_after"), "control": paired(p, "eval_control")},
              "rl": rl_curves(p), "stages": stages,
              "total_wall_s": round(sum(x["wall_s"] or 0.0 for x in stages.values()), 2)}
    md = tables(report)
    with open(os.path.join(w, "main_job.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(w, "main_job.md"), "w", encoding="utf-8") as f:
        f.write(f"# main job ({w})\n\n{md}\n")
    echo(md)
    plot(report, os.path.join(w, "main_job.png"))
    echo(f"wrote {os.path.join(w, 'main_job.json')}, main_job.md, main_job.png")
    return report


def plot(report: dict, out: str) -> None:
    """RL reward, pass rate and steps used per batch, and pass@1 before/after, into one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rl = report["rl"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, key, label in zip(axes, ("reward", "pass_rate", "steps_used"),
                              ("mean reward", "pass rate", "denoising steps used")):
        ax.plot(rl["batch"], rl[key], marker="o" if len(rl["batch"]) < 30 else None, linewidth=1)
        ax.set_xlabel("RL batch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    ax = axes[3]
    x = range(len(report["suites"]))
    bars = [("before RL", report["before"]), ("after RL", report["after"])]
    if report["control"]:
        bars.append(("control (more SFT)", report["control"]))
    width = 0.8 / len(bars)
    for i, (when, m) in enumerate(bars):
        ax.bar([j + width * i for j in x], [100 * m["suites"][s]["pass@1"] if m else 0 for s in report["suites"]],
               width=width, label=when)
    ax.set_xticks([j + 0.4 - width / 2 for j in x], [s.replace("synthetic-", "") for s in report["suites"]])
    ax.set_title("greedy pass@1 (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- the command line
def _refuse(msg: str):
    cli.refuse("launch/main.py", msg)


def main(argv):
    del argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it renames at INFO
    c = _CONFIG.value
    if c is None:
        _refuse("--config is required, e.g. --config configs/main_job.py")
    from jaxdiff.config import ConfigValueError

    try:
        run(c)
    except (MainJobError, ConfigValueError) as e:
        _refuse(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser("launch/main.py"))
