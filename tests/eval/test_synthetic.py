"""The synthetic family: sizes, determinism, disjoint splits, prompt shape, and through the real
pool every reference passing and every mutant failing."""

import ast
import dataclasses
import collections
import re

import pytest

from jaxdiff.eval import synthetic as S
from jaxdiff.eval.tasks import Mutant
from jaxdiff.eval.templates import HELDOUT_TEMPLATES, TEMPLATES, TIERS

from tests.eval.conftest import python_mutants_job, run_checked

SPLITS = S.splits()


def test_sizes_and_tiers():
    sizes = {k: len(v) for k, v in SPLITS.items()}
    assert sum(sizes.values()) >= 2000 and sizes["train"] >= 1400, sizes
    assert min(sizes["heldout_constants"], sizes["heldout_templates"]) >= 200, sizes
    for split, tasks in SPLITS.items():
        assert {t.tier for t in tasks} == set(TIERS), split
        assert all(t.split == split and t.suite == "synthetic" for t in tasks)


def test_deterministic_from_the_seed():
    again = S._generate.__wrapped__(0, "python", 0.15)
    assert {k: [t.to_dict() for t in v] for k, v in again.items()} == \
           {k: [t.to_dict() for t in v] for k, v in SPLITS.items()}
    t = SPLITS["train"][0]
    template = next(x for x in TEMPLATES if x.name == t.family)
    assert S.make_task(template, t.meta["constants"], "train", 0).to_dict() == t.to_dict()
    assert S.make_task(template, t.meta["constants"], "train", 1).prompt != t.prompt
    assert S.partition(template, 1, 0.15) != S.partition(template, 0, 0.15)


def test_splits_share_no_task_and_unseen_templates_are_unseen():
    ids = [t.id for v in SPLITS.values() for t in v]
    prompts = [t.prompt for v in SPLITS.values() for t in v]
    assert len(set(ids)) == len(ids) and len(set(prompts)) == len(prompts)
    key = {s: {(t.family, tuple(sorted(t.meta["constants"].items()))) for t in v} for s, v in SPLITS.items()}
    assert not key["train"] & key["heldout_constants"] and not key["train"] & key["heldout_templates"]
    assert not key["heldout_constants"] & key["heldout_templates"]
    families = {s: {t.family for t in v} for s, v in SPLITS.items()}
    assert families["heldout_templates"] == set(HELDOUT_TEMPLATES)
    assert not families["heldout_templates"] & families["train"]
    assert families["heldout_constants"] <= families["train"]  # seen templates, new constants
    for name in families["heldout_constants"]:
        train_c = {tuple(sorted(t.meta["constants"].items())) for t in SPLITS["train"] if t.family == name}
        new_c = {tuple(sorted(t.meta["constants"].items())) for t in SPLITS["heldout_constants"] if t.family == name}
        assert new_c and not new_c & train_c


def test_training_split_parts_are_disjoint_and_rl_constants_are_new_to_sft():
    """synthetic-train-{sft,rl}: RL's prompts are seen templates with constants SFT never saw."""
    from jaxdiff.eval.suites import load_suite

    sft, rl = load_suite("synthetic-train-sft"), load_suite("synthetic-train-rl")
    assert sorted(t.id for t in sft + rl) == sorted(t.id for t in SPLITS["train"])
    assert not {t.id for t in sft} & {t.id for t in rl}
    assert 0.12 <= len(rl) / len(SPLITS["train"]) <= 0.2, len(rl)
    assert {t.family for t in rl} == {t.family for t in sft} == {t.family for t in SPLITS["train"]}
    key = lambda tasks: {(t.family, tuple(sorted(t.meta["constants"].items()))) for t in tasks}  # noqa: E731
    assert not key(sft) & key(rl)
    for seed, frac in ((0, 0.5), (1, S.RL_FRACTION)):                     # any seed and fraction: a partition
        rl_, sft_ = S.train_part("rl", seed, rl_fraction=frac), S.train_part("sft", seed, rl_fraction=frac)
        assert sorted(t.id for t in rl_ + sft_) == sorted(t.id for t in S.synthetic("train", seed))
        per = collections.Counter(t.family for t in rl_ + sft_)
        assert collections.Counter(t.family for t in rl_) == {f: max(1, round(n * frac)) for f, n in per.items()}
    assert {t.id for t in S.train_part("rl", 0, rl_fraction=0.5)} > {t.id for t in rl}   # the same shuffle, cut later
    bend_sft, bend_rl = load_suite("bend-synthetic-train-sft"), load_suite("bend-synthetic-train-rl")
    assert bend_rl and not {t.id for t in bend_sft} & {t.id for t in bend_rl}
    with pytest.raises(ValueError, match="unknown part 'test'"):
        S.train_part("test")


def test_prompt_shape_examples_and_hidden_asserts():
    for t in (t for v in SPLITS.values() for t in v):
        shown = re.findall(r"^    >>> (.*)$", t.prompt, re.M)
        assert 2 <= len(shown) <= 3 and shown == [c for c, _ in t.visible_examples], t.id
        assert t.prompt.startswith(f"def {t.entry_point}(") and t.prompt.endswith('    """\n')
        asserts = t.meta["asserts"]
        assert 5 <= len(asserts) <= 10 and t.tests.count("assert candidate(") == len(asserts), t.id
        hidden_args = {a.split(") == ")[0][len("assert candidate("):] for a in asserts}
        shown_args = {c[len(t.entry_point) + 1:-1] for c in shown}
        assert not hidden_args & shown_args, t.id
        ast.parse(t.prompt + t.reference)
        assert len(t.mutants) >= 3 and len({m.completion for m in t.mutants}) == len(t.mutants), t.id
        for m in t.mutants:
            assert m.completion != t.reference and "return" in m.completion and m.completion.strip() != "pass"
            ast.parse(t.prompt + m.completion)
    kinds = collections.Counter(m.kind for v in SPLITS.values() for t in v for m in t.mutants)
    assert {"off_by_one", "wrong_operator", "swapped_branch"} <= set(kinds)


def test_the_prompt_example_is_regular():
    t = next(t for t in SPLITS["train"] if t.entry_point == "add_7")
    assert re.fullmatch(r'def add_7\(x\):\n    """Return x plus 7\.\n(    >>> add_7\(\d+\)\n    \d+\n){2,3}    """\n',
                        t.prompt)
    assert t.reference == "    return x + 7\n"


def test_every_reference_passes_and_every_mutant_fails_in_the_pool(pool):
    tasks = [t for v in SPLITS.values() for t in v]
    assert all(len(t.mutants) >= 3 for t in tasks)
    assert run_checked(pool, [(python_mutants_job(t), {"passed"}) for t in tasks]) == []


def test_one_job_per_program_agrees_on_a_sample(pool):
    """The literal path for a sample of tasks: each mutant as the program a model's completion would be."""
    tasks = [t for v in SPLITS.values() for t in v][::40]
    jobs = [(t.job(m.completion, id=f"{t.id}:{m.kind}"), {"failed"}) for t in tasks for m in t.mutants]
    jobs += [(t.job(t.reference), {"passed"}) for t in tasks]
    # and the combined form does notice a mutant that passes: give a task its reference as a "mutant"
    t = tasks[0]
    fake = dataclasses.replace(t, mutants=t.mutants[:2] + (Mutant("not_a_mutant", t.reference),))
    jobs.append((python_mutants_job(fake), {"failed"}))
    assert run_checked(pool, jobs) == []


def test_templates_are_well_formed():
    names = [t.name for t in TEMPLATES]
    assert len(set(names)) == len(names) and set(HELDOUT_TEMPLATES) <= set(names)
    for tier in TIERS:
        assert any(t.tier == tier and t.name in HELDOUT_TEMPLATES for t in TEMPLATES), tier
        assert any(t.tier == tier and t.name not in HELDOUT_TEMPLATES for t in TEMPLATES), tier
    with pytest.raises(ValueError, match="unknown split"):
        S.synthetic("test")
