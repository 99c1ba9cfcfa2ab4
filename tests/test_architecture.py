"""The layer contract in pyproject.toml holds, catches a forbidden import, and names every package."""
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib

import jaxdiff

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(cwd, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([LINT, "--config", os.path.join(cwd, "pyproject.toml")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _contracts():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def test_the_layer_contract_holds():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_a_forbidden_import_breaks_the_contract(tmp_path):
    """A copy of the package where the sampler imports the trainer (the old cycle) and the
    verifier imports JAX: lint-imports must fail and name both contracts."""
    shutil.copytree(os.path.join(ROOT, "jaxdiff"), tmp_path / "jaxdiff",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    with open(tmp_path / "jaxdiff" / "sample" / "load.py", "a") as f:
        f.write("\nfrom jaxdiff.train import loop  # noqa: E402,F401\n")
    with open(tmp_path / "jaxdiff" / "verify" / "reward.py", "a") as f:
        f.write("\nimport jax  # noqa: E402,F401\n")
    out = _lint(str(tmp_path), pythonpath=str(tmp_path))
    assert out.returncode != 0, out.stdout
    assert "jaxdiff.sample.load -> jaxdiff.train.loop" in out.stdout
    assert re.search(r"jaxdiff\.verify\.reward -> jax\b", out.stdout)
    assert "BROKEN" in out.stdout


def test_every_package_is_named_in_the_layers():
    layers = next(c for c in _contracts() if c["type"] == "layers")
    named = {n.strip(" ()") for layer in layers["layers"] for n in re.split(r"[|:]", layer)}
    present = {m.name for m in pkgutil.iter_modules(jaxdiff.__path__)}
    assert present - named == set(), f"not in the layer contract: {sorted(present - named)}"
    assert {"eval", "rl"} <= named   # the packages wave 2 adds are placed already


def test_verify_may_not_import_jax():
    forbidden = next(c for c in _contracts() if c.get("source_modules") == ["jaxdiff.verify"])
    assert {"jax", "flax"} <= set(forbidden["forbidden_modules"])
