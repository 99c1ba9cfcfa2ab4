"""The one table between HF tensor names and jaxdiff keys, used in both directions.

jaxdiff keys equal HF keys, except that per-expert tensors are stacked on a leading E axis:
    model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.{weight,weight_scale_inv}
 -> model.layers.{i}.mlp.experts.{gate,up,down}_proj.{weight,weight_scale_inv}   [E, ...]

Each rule is a pair of templates whose `{field}`s are matched by `FIELDS`; a rule with `stack` names
the HF field that becomes the leading axis (absent from the jaxdiff template). Both `to_jaxdiff` and
`to_hf` are read off the same rules, first match wins, so the two directions cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

FIELDS = {
    "layer": r"\d+",
    "expert": r"\d+",
    "proj": r"gate_proj|up_proj|down_proj",
    "kind": r"weight|weight_scale_inv",
    "key": r".+",
}


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str
    jaxdiff: str
    stack: str | None = None  # HF field stacked on the leading axis of the jaxdiff tensor


RULES: tuple[Rule, ...] = (
    Rule("model.layers.{layer}.mlp.experts.{expert}.{proj}.{kind}",
         "model.layers.{layer}.mlp.experts.{proj}.{kind}", stack="expert"),
    Rule("{key}", "{key}"),
)


def _regex(template: str) -> re.Pattern:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>{FIELDS[m.group(1)]})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


_COMPILED = [(rule, _regex(rule.hf), _regex(rule.jaxdiff)) for rule in RULES]


def to_jaxdiff(hf_key: str) -> tuple[str, int | None]:
    """HF key -> (jaxdiff key, index on the stacked axis or None)."""
    for rule, hf_re, _ in _COMPILED:
        m = hf_re.match(hf_key)
        if m:
            return rule.jaxdiff.format(**m.groupdict()), (int(m.group(rule.stack)) if rule.stack else None)
    raise AssertionError("the last rule matches everything")


def _rule_for_jaxdiff(jd_key: str) -> tuple[Rule, dict[str, str]]:
    for rule, _, jd_re in _COMPILED:
        m = jd_re.match(jd_key)
        if m:
            return rule, m.groupdict()
    raise AssertionError("the last rule matches everything")


def to_hf(jd_key: str, num_stacked: int | None = None) -> list[str]:
    """jaxdiff key -> its HF keys (one per stacked index, in order, for stacked tensors)."""
    rule, fields = _rule_for_jaxdiff(jd_key)
    if rule.stack is None:
        return [rule.hf.format(**fields)]
    if num_stacked is None:
        raise ValueError(f"{jd_key}: stacked on '{rule.stack}'; pass num_stacked")
    return [rule.hf.format(**fields, **{rule.stack: e}) for e in range(num_stacked)]


def is_stacked(jd_key: str) -> bool:
    return _rule_for_jaxdiff(jd_key)[0].stack is not None


def group_hf_keys(hf_keys: Iterable[str]) -> dict[str, dict[int | None, str]]:
    """jaxdiff key -> {stacked index (None if unstacked): HF key}."""
    out: dict[str, dict[int | None, str]] = {}
    for k in hf_keys:
        jd, idx = to_jaxdiff(k)
        out.setdefault(jd, {})[idx] = k
    return out
