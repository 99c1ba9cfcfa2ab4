"""Multi-controller start-up: `jax.distributed.initialize` from explicit values, jaxdiff's
environment variables, or the cluster JAX detects itself (SLURM, TPU pod, Open MPI).

Order (the first that applies wins):
  1. explicit arguments (launch/train.py flags)
  2. JAXDIFF_COORDINATOR (host:port), JAXDIFF_NUM_PROCESSES, JAXDIFF_PROCESS_ID
     [, JAXDIFF_LOCAL_DEVICE_IDS "0,1"] — what launch/local/multiprocess.sh sets
  3. a cluster JAX recognises: SLURM_JOB_ID with SLURM_NTASKS > 1 (srun), a TPU VM of a pod slice
     (TPU_WORKER_HOSTNAMES with several hosts), Open MPI (OMPI_COMM_WORLD_SIZE > 1)
  4. nothing: one process (the laptop / single-GPU case)
Must run before anything touches a JAX device.
"""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("jaxdiff.parallel")

ENV = ("JAXDIFF_COORDINATOR", "JAXDIFF_NUM_PROCESSES", "JAXDIFF_PROCESS_ID")


def _int_env(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer") from None


def detected_cluster(environ=os.environ) -> str | None:
    """The multi-process cluster the environment describes, or None for a single process."""
    if environ.get("SLURM_JOB_ID") and int(environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(hosts) > 1:
        return "tpu"
    if int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "mpi"
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               local_device_ids: list[int] | None = None, *, cpu_collectives: str | None = "gloo") -> dict:
    """Starts JAX's distributed runtime when more than one process takes part; returns what was
    used ({"mode": "explicit" | "env" | "slurm" | "tpu" | "mpi" | "single", ...}). On CPU the
    cross-process collectives need an implementation: gloo by default."""
    explicit = [coordinator, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("distributed: coordinator, num_processes and process_id go together "
                             f"(got coordinator={coordinator!r}, num_processes={num_processes}, process_id={process_id})")
        mode = "explicit"
    elif any(n in os.environ for n in ENV):
        missing = [n for n in ENV if n not in os.environ]
        if missing:
            raise ValueError(f"distributed: {', '.join(missing)} not set (set all of {', '.join(ENV)})")
        coordinator = os.environ["JAXDIFF_COORDINATOR"]
        num_processes, process_id = _int_env("JAXDIFF_NUM_PROCESSES"), _int_env("JAXDIFF_PROCESS_ID")
        ids = os.environ.get("JAXDIFF_LOCAL_DEVICE_IDS")
        if ids:
            local_device_ids = [int(i) for i in ids.split(",")]
        mode = "env"
    else:
        mode = detected_cluster() or "single"
    if mode == "single":
        return {"mode": mode, "process_index": 0, "process_count": 1}
    if mode in ("explicit", "env"):
        if not 0 <= process_id < num_processes:
            raise ValueError(f"distributed: process_id={process_id} is outside 0..{num_processes - 1}")
        if ":" not in coordinator:
            raise ValueError(f"distributed: coordinator {coordinator!r} must be host:port")
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if mode in ("explicit", "env"):
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, local_device_ids=local_device_ids)
    else:
        jax.distributed.initialize()   # JAX reads SLURM / TPU / MPI itself
    info = {"mode": mode, "process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(), "devices": jax.device_count()}
    log.warning("distributed (%s): process %d of %d, %d local / %d global devices", mode, info["process_index"],
                info["process_count"], info["local_devices"], info["devices"])
    return info
