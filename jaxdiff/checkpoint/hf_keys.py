"""The one table between HF tensor names and jaxdiff keys, used in both directions.

jaxdiff keys equal HF keys, except that per-expert tensors are stacked on a leading E axis:
    model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.{weight,weight_scale_inv}
 -> model.layers.{i}.mlp.experts.{gate,up,down}_proj.{weight,weight_scale_inv}   [E, ...]
"""
from __future__ import annotations

import re
from collections.abc import Iterable

# (HF pattern, jaxdiff template, index group or None). First match wins.
RULES: tuple[tuple[str, str, str | None], ...] = (
    (r"^model\.layers\.(?P<layer>\d+)\.mlp\.experts\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)"
     r"\.(?P<kind>weight|weight_scale_inv)$",
     "model.layers.{layer}.mlp.experts.{proj}.{kind}", "expert"),
    (r"^(?P<key>.+)$", "{key}", None),
)
_COMPILED = [(re.compile(p), t, g) for p, t, g in RULES]
_STACKED = re.compile(r"^model\.layers\.(?P<layer>\d+)\.mlp\.experts\.(?P<proj>gate_proj|up_proj|down_proj)"
                      r"\.(?P<kind>weight|weight_scale_inv)$")


def to_jaxdiff(hf_key: str) -> tuple[str, int | None]:
    """HF key -> (jaxdiff key, index on the stacked axis or None)."""
    for pattern, template, group in _COMPILED:
        m = pattern.match(hf_key)
        if m:
            return template.format(**m.groupdict()), (int(m.group(group)) if group else None)
    raise AssertionError("the last rule matches everything")


def to_hf(jd_key: str, num_stacked: int | None = None) -> list[str]:
    """jaxdiff key -> its HF keys (one per expert for stacked tensors, in expert order)."""
    m = _STACKED.match(jd_key)
    if m is None:
        return [jd_key]
    g = m.groupdict()
    return [f"model.layers.{g['layer']}.mlp.experts.{e}.{g['proj']}.{g['kind']}" for e in range(num_stacked)]


def is_stacked(jd_key: str) -> bool:
    return _STACKED.match(jd_key) is not None


def group_hf_keys(hf_keys: Iterable[str]) -> dict[str, dict[int | None, str]]:
    """jaxdiff key -> {expert index (None if unstacked): HF key}."""
    out: dict[str, dict[int | None, str]] = {}
    for k in hf_keys:
        jd, idx = to_jaxdiff(k)
        out.setdefault(jd, {})[idx] = k
    return out
