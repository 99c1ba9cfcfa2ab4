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


import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST = "tests/test_pretrained.py"   # the main job's pre-training, the suite's longest piece


def pytest_collection_modifyitems(config, items):
    """tests/test_pretrained.py first (stable order otherwise): the suite's longest piece fails or
    passes first. (Two pytest-xdist workers were tried on 2026-11-30: the pre-training, sharing the
    2 cores with the other worker's multi-threaded XLA runs and subprocesses, took over 40 minutes,
    longer than the whole serial suite spends on it.)"""
    items.sort(key=lambda item: item.nodeid.split("::")[0] != FIRST)
