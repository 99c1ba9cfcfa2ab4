"""Suites by name, as lists of `Task` or as grain sources.

    load_suite("synthetic-train")                    the synthetic family's training split
    load_suite("data/mbpp.jsonl")                    any JSONL in the HumanEval or MBPP layout
    load_suite("hub:mbpp:test")                      a `datasets` hub dataset (split after the second colon)
    grain.MapDataset.source(suite_source("humaneval"))

Names: humaneval; humaneval-infill-single, humaneval-infill-multi; synthetic-infill; synthetic-{train,
heldout-constants, heldout-templates}; synthetic-train-{sft,rl} (the training split's two disjoint parts:
SFT's rows, RL's prompts); bend-synthetic-{same five}; bend-humaneval.
"""

from __future__ import annotations

from jaxdiff.eval.bend_tasks import bend_humaneval
from jaxdiff.eval.humaneval import from_hub, humaneval, read_jsonl
from jaxdiff.eval.infill import infilling, synthetic_infilling
from jaxdiff.eval.synthetic import SPLITS, TRAIN_PARTS, synthetic, train_part
from jaxdiff.eval.tasks import Task, TaskSource

SUITES = {
    "humaneval": humaneval,
    "humaneval-infill-single": lambda: infilling("single"),
    "humaneval-infill-multi": lambda: infilling("multi"),
    "synthetic-infill": synthetic_infilling,
    "bend-humaneval": bend_humaneval,
}
for _split in SPLITS:
    SUITES[f"synthetic-{_split.replace('_', '-')}"] = lambda s=_split: synthetic(s)
    SUITES[f"bend-synthetic-{_split.replace('_', '-')}"] = lambda s=_split: synthetic(s, language="bend")
for _part in TRAIN_PARTS:
    SUITES[f"synthetic-train-{_part}"] = lambda p=_part: train_part(p)
    SUITES[f"bend-synthetic-train-{_part}"] = lambda p=_part: train_part(p, language="bend")


def load_suite(name: str) -> list[Task]:
    if name in SUITES:
        return SUITES[name]()
    if name.startswith("hub:"):
        hub, _, split = name[len("hub:"):].partition(":")
        return from_hub(hub, split=split or "test")
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return read_jsonl(name)
    raise KeyError(f"unknown suite {name!r}; known: {', '.join(SUITES)}, a .jsonl path, or hub:NAME[:SPLIT]")


def suite_source(name: str, as_dict: bool = False) -> TaskSource:
    return TaskSource(load_suite(name), name=name, as_dict=as_dict)
