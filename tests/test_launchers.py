"""Every launcher refuses a bad --config override or value in one line naming it, with exit code 2,
before it writes anything."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CASES = [
    ("launch/train.py", "configs/tiny_coder.py", "--config.train.stepz=3", "--config.train.stepz: unknown key 'stepz'"),
    ("launch/train.py", "configs/tiny_coder.py", "--config.train.steps=abc", "--config.train.steps=abc"),
    ("launch/train.py", "configs/tiny_coder.py", "--config.data.batch_size=0", "config.data.batch_size=0"),
    ("launch/eval.py", "configs/eval.py", "--config.gen_lenght=8", "--config.gen_lenght: unknown key"),
    ("launch/eval.py", "configs/eval.py", "--config.suite=nope", "config.suite='nope'"),
    ("launch/rl.py", "configs/rl_tiny.py", "--config.rl.mu=x", "--config.rl.mu=x"),
    ("launch/sample.py", "configs/sample.py", "--config.mode=guess", "config.mode='guess'"),
    ("launch/main.py", "configs/main_job.py", "--config.rl.rl.batchez=1", "unknown key 'batchez'"),
]


@pytest.mark.parametrize("launcher,config,arg,named", CASES, ids=[f"{c[0][7:-3]}:{c[2]}" for c in CASES])
def test_a_bad_override_is_refused_by_name(tmp_path, launcher, config, arg, named):
    out = tmp_path / "w"
    cmd = [sys.executable, launcher, "--config", config, arg]
    if launcher not in ("launch/sample.py", "launch/eval.py"):
        cmd.append(f"--config.workdir={out}")
    else:
        cmd.append(f"--config.checkpoint={out}")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{launcher}: error: ") and named in last, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not out.exists()
