#!/usr/bin/env bash
# N JAX processes on this machine, each with its own CPU devices, joined by jax.distributed over
# localhost with gloo CPU collectives: the multi-host code path without a cluster.
#
#   launch/local/multiprocess.sh 2 python launch/train.py --config configs/tiny_coder.py:runlocal \
#       --config.workdir=runs/mp
#
# Environment: JAXDIFF_DEVICES_PER_PROCESS (default 4), JAXDIFF_PORT (default: a free port),
# JAXDIFF_LOG_DIR (default: the workdir-independent ./multiprocess_logs). Process 0 prints to this
# terminal; process i > 0 writes $JAXDIFF_LOG_DIR/process_i.log. If one process fails, the others
# are stopped (they would otherwise wait forever in a collective) and its exit code is returned.
set -uo pipefail
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ]; then
  echo "usage: $0 N command [args...]   (N >= 1 processes)" >&2
  exit 2
fi
N=$1; shift
DEV=${JAXDIFF_DEVICES_PER_PROCESS:-4}
PORT=${JAXDIFF_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
LOG_DIR=${JAXDIFF_LOG_DIR:-multiprocess_logs}
mkdir -p "$LOG_DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap 'cleanup; exit 130' INT TERM
for ((i = 0; i < N; i++)); do
  env JAXDIFF_COORDINATOR="127.0.0.1:$PORT" JAXDIFF_NUM_PROCESSES="$N" JAXDIFF_PROCESS_ID="$i" \
      JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEV" \
      "$@" > >(if [ "$i" = 0 ]; then cat; else cat > "$LOG_DIR/process_$i.log"; fi) 2>&1 &
  pids+=($!)
done
rc=0
for ((left = N; left > 0; left--)); do
  wait -n "${pids[@]}"
  code=$?
  if [ "$code" != 0 ] && [ "$rc" = 0 ]; then
    rc=$code
    echo "multiprocess: a process exited with $code; stopping the others (logs in $LOG_DIR)" >&2
    cleanup
  fi
done
exit "$rc"
