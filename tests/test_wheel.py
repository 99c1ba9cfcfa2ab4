"""jaxdiff installed as a wheel (not editable) and used from another directory: the launch scripts
and tools run against the installed package, with no repository on sys.path."""
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, cwd, timeout=600, stderr=False):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + (out.stderr if stderr else "")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv holding the built wheel. Its dependencies come from the test environment's
    site-packages (a .pth line), so nothing is downloaded; jaxdiff itself only from the wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"   # a clean copy: setuptools leaves build/ in the tree it builds
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "runs", "*.egg-info",
                                                             "__pycache__", "tests"))
    wheels = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
         cwd=str(tmp))
    (wheel,) = [w for w in os.listdir(wheels) if w.startswith("jaxdiff-") and w.endswith(".whl")]
    env_dir = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=str(tmp))
    py = env_dir / "bin" / "python"
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=str(tmp)).strip()
    with open(os.path.join(site, "zz_test_deps.pth"), "w") as f:   # after the venv's own site-packages
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheels / wheel)],
         cwd=str(tmp))
    return py, tmp


def test_installed_wheel_trains_resumes_samples_loads_and_plans(venv):
    py, tmp = venv
    run_dir = tmp / "elsewhere"
    run_dir.mkdir()
    where = _run([str(py), "-c", "import jaxdiff; print(jaxdiff.__file__)"], cwd=str(run_dir)).strip()
    assert where.startswith(str(tmp / "venv")), f"jaxdiff imported from {where}, not the wheel"
    workdir = run_dir / "run"
    train = [str(py), os.path.join(ROOT, "launch", "train.py"),
             "--config", os.path.join(ROOT, "configs", "tiny_coder.py:runlocal"), f"--config.workdir={workdir}",
             "--config.optimizer.total_steps=8"]   # planned for 8 steps: the resume runs the same programs
    out = _run(train, cwd=str(run_dir))
    assert "step 6: held-out loss" in out and "diffusion sample:" in out
    out = _run(train + ["--config.train.steps=8"], cwd=str(run_dir), stderr=True)
    assert "resumed from step 6" in out
    assert "step 8: held-out loss" in out
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())[-1] == 8
    out = _run([str(py), os.path.join(ROOT, "launch", "sample.py"), "--config",
                os.path.join(ROOT, "configs", "sample.py"), f"--config.checkpoint={workdir}",
                "--config.gen_length=8", "--config.block_length=4", "--config.steps=8", "--config.warmup=False"],
               cwd=str(run_dir))
    assert "forward passes" in out
    out = _run([str(py), "-c", f"import jaxdiff; m = jaxdiff.load_model({str(workdir)!r}); "
                               "print(type(m).__name__, m.config.num_experts, sorted(m.lora_heads) if hasattr(m, 'lora_heads') else [])"],
               cwd=str(run_dir))
    assert out.startswith("Qwen3 4")
    out = _run([str(py), os.path.join(ROOT, "tools", "plan_memory.py"), f"--workdir={workdir}", "--mesh", "data=1",
                "--device_memory_gb", "1"], cwd=str(run_dir))
    assert "total per device" in out and "fits" in out
