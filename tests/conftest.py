"""Test session set-up: 8 fake CPU devices (for sharding tests), float32 matmuls at full precision."""
import os

USER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")  # before the 8 fake devices are added
if "xla_force_host_platform_device_count" not in USER_XLA_FLAGS:
    os.environ["XLA_FLAGS"] = (USER_XLA_FLAGS + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one persistent XLA compilation cache for the session, inherited by every subprocess (launch/*.py
# runs, the two-process tests, the wheel's venv): identical programs compile once across processes
# and across re-created jitted functions. Fresh per session, so the suite's time does not depend on
# an earlier run. JAX_COMPILATION_CACHE_DIR set by the caller is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxdiff-test-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TRAINED_GROUP = "trained_tiny_coder"   # the xdist group: every test of the pre-trained model on one worker


@pytest.fixture(scope="session")
def trained_tiny_coder(tmp_path_factory):
    """The main job's pre-training stage (README command 1, `launch/main.py --config
    configs/main_job.py --config.stages=pretrain`), run once per session as a user runs it:
    (the stage's workdir, stdout). The sampler tests measure threshold decoding on its model.
    Its tests run first and, under xdist, on one worker (pytest_collection_modifyitems)."""
    workdir = tmp_path_factory.mktemp("main_job")
    # as a user runs it: one CPU device, not the 8 fake ones this session set up (which would
    # shard the batch 8 ways on 2 cores and take ~3x longer)
    env = {**os.environ, "XLA_FLAGS": USER_XLA_FLAGS}
    out = subprocess.run([sys.executable, "launch/main.py", "--config", "configs/main_job.py",
                          "--config.stages=pretrain", f"--config.workdir={workdir}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=2400, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return str(workdir / "pretrain"), out.stdout


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook, which reads the group marks
def pytest_collection_modifyitems(config, items):
    """The pre-trained model's tests first (stable order otherwise): the longest piece of the suite
    starts at once, and under `pytest -n 2 --dist loadgroup` the other worker takes the rest."""
    uses = [item for item in items if "trained_tiny_coder" in getattr(item, "fixturenames", ())]
    for item in uses:
        item.add_marker(pytest.mark.xdist_group(TRAINED_GROUP))
    items[:] = uses + [item for item in items if item not in uses]
