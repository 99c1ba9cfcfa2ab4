"""Multi-controller training: two processes x 4 CPU devices, joined by jax.distributed on
localhost (gloo collectives) through launch/local/multiprocess.sh, train an SFT run, save a
checkpoint, and a fresh pair of processes resumes it.

- Resumed by a fresh pair == the pair's uninterrupted run, bit for bit (exact resume across processes).
  The fresh pair resumes from a copy of the uninterrupted run's own step-3 checkpoint (its step-6
  checkpoint removed), so three launches suffice: one process, the pair, the resuming pair.
- == one process with 8 devices on the same global batches (SFT batches do not depend on the
  process count): the training loss of every step to 1e-5 relative, and the parameters to 1e-5
  absolute. Not bit for bit: the gradient all-reduce sums in another order across processes (gloo)
  than inside one, and AdamW divides each gradient by its running RMS, so an entry whose gradient
  is near zero can move by a small fraction of a step (lr 2e-3) differently. Measured
  (2026-11-24): max parameter difference 2.4e-6 after 6 steps, in the MoE router weights.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiff.data import tokenizer as tk
from jaxdiff.parallel import distributed
from jaxdiff.builder import load_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    lines = [json.dumps({"messages": [{"role": "user", "content": f"add {i} and {3 * i}"},
                                      {"role": "assistant", "content": f"{4 * i}"}]}) for i in range(96)]
    (root / "sft.jsonl").write_text("\n".join(lines) + "\n")
    tk.train_bpe(lines, 320, str(root / "tok"))
    return root


def _train(sft, workdir, steps, processes, extra=(), devices=8):
    args = [sys.executable, "launch/train.py", "--config", "configs/tiny_coder.py:runlocal",
            f"--config.workdir={workdir}", f"--config.train.steps={steps}", "--config.train.checkpoint_every=3",
            "--config.train.eval_every=3", "--config.data.kind=sft", f"--config.data.path={sft / 'sft.jsonl'}",
            "--config.objective.sft=True", f"--config.tokenizer.path={sft / 'tok'}", "--config.data.seq_len=32",
            "--config.data.eval_permille=250", "--config.train.log_every=1", *extra]
    env = {**os.environ, "JAXDIFF_LOG_DIR": str(workdir) + "_logs"}
    if processes > 1:
        cmd = ["bash", "launch/local/multiprocess.sh", str(processes)] + args
        env["JAXDIFF_DEVICES_PER_PROCESS"] = str(devices // processes)
    else:
        cmd = args
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    logs = "".join(open(os.path.join(env["JAXDIFF_LOG_DIR"], f)).read()[-2000:]
                   for f in sorted(os.listdir(env["JAXDIFF_LOG_DIR"]))) if processes > 1 else ""
    assert out.returncode == 0, out.stderr[-3000:] + logs
    return out.stdout


def _trained(workdir):
    model, _, _ = load_workdir(str(workdir))
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model))}


def _losses(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.join(workdir, "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


@pytest.mark.slow
def test_two_processes_train_save_resume_and_match_one_process(sft, tmp_path):
    single = _train(sft, tmp_path / "single", 6, processes=1)
    full = _train(sft, tmp_path / "pair", 6, processes=2)          # saves steps 3 and 6 (train.keep=3)
    assert sorted(os.listdir(tmp_path / "pair" / "checkpoints")) == ["3", "6"]
    # the pair as if stopped after step 3: its workdir without the step-6 checkpoint (nor its tensorboard)
    shutil.copytree(tmp_path / "pair", tmp_path / "resumed", ignore=shutil.ignore_patterns("tb"))
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")
    resumed = _train(sft, tmp_path / "resumed", 6, processes=2)    # a fresh pair restores step 3
    assert "resumed from step 3" in resumed, resumed[-2000:]
    for out in (single, full, resumed):
        assert "step 6: held-out loss" in out, out[-2000:]
    p, r = _trained(tmp_path / "pair"), _trained(tmp_path / "resumed")
    assert p.keys() == r.keys()
    for k in p:
        np.testing.assert_array_equal(r[k], p[k], err_msg=str(k))
    losses_1, losses_2 = _losses(str(tmp_path / "single")), _losses(str(tmp_path / "pair"))
    assert sorted(losses_1) == sorted(losses_2) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([losses_2[i] for i in range(1, 7)], [losses_1[i] for i in range(1, 7)], rtol=1e-5)
    s = _trained(tmp_path / "single")
    for k in s:
        np.testing.assert_allclose(p[k], s[k], rtol=0, atol=1e-5, err_msg=str(k))


def test_two_processes_with_sharded_params_evaluate_and_sample(sft, tmp_path):
    """fsdp=2 x expert=2 over 2 processes x 2 devices: parameters and experts are split across the
    processes, so the in-loop evaluation sample and the final sample run collectives that need
    every process. (Before, only process 0 sampled in the loop and the run hung there.)"""
    out = _train(sft, tmp_path / "sharded", 3, processes=2, devices=4,
                 extra=("--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.expert=2",
                        "--config.data.batch_size=4"))
    assert "step 3: held-out loss" in out and "diffusion sample:" in out, out[-2000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.join(tmp_path / "sharded", "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Tensors("sample/text_summary")] == [3]   # the in-loop sample was written


def test_environment_is_read_and_checked(monkeypatch):
    for k in ("JAXDIFF_COORDINATOR", "JAXDIFF_NUM_PROCESSES", "JAXDIFF_PROCESS_ID", "SLURM_JOB_ID",
              "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.initialize()["mode"] == "single"
    monkeypatch.setenv("JAXDIFF_COORDINATOR", "127.0.0.1:1234")
    with pytest.raises(ValueError, match="JAXDIFF_NUM_PROCESSES, JAXDIFF_PROCESS_ID not set"):
        distributed.initialize()
    monkeypatch.setenv("JAXDIFF_NUM_PROCESSES", "two")
    monkeypatch.setenv("JAXDIFF_PROCESS_ID", "0")
    with pytest.raises(ValueError, match="JAXDIFF_NUM_PROCESSES='two'"):
        distributed.initialize()
    monkeypatch.setenv("JAXDIFF_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAXDIFF_PROCESS_ID", "2")
    with pytest.raises(ValueError, match="process_id=2 is outside 0..1"):
        distributed.initialize()
    with pytest.raises(ValueError, match="go together"):
        distributed.initialize(coordinator="h:1")
    assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"
    assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed.detected_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"
    assert distributed.detected_cluster({"OMPI_COMM_WORLD_SIZE": "2"}) == "mpi"
