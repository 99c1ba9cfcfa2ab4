#!/usr/bin/env bash
# Training on a TPU VM pod slice: the same command on every worker (gcloud ... ssh --worker=all);
# jax.distributed finds the other workers from the TPU metadata (jaxdiff/parallel/distributed.py).
#
#   launch/tpu/train_pod.sh my-v5p-16 us-east5-a --config configs/qwen3_coder_30b_a3b.py \
#       --config.model.checkpoint=/mnt/shared/coder30b-jd --config.workdir=/mnt/shared/runs/coder30b
#
# Assumes the repository is checked out at ~/jaxdiff on every worker with `pip install -e ".[tpu]"`
# done (run `launch/tpu/train_pod.sh TPU ZONE --setup` once to do that from the git remote of this
# checkout). The workdir and checkpoint must be paths every worker sees (NFS / Filestore, or a bucket
# mounted with gcsfuse at the same path on all workers): jaxdiff writes them with plain file I/O.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE (--setup | train.py args...)" >&2
  exit 2
fi
TPU=$1; ZONE=$2; shift 2
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$1"; }
if [ "$1" = "--setup" ]; then
  REMOTE=$(git config --get remote.origin.url)
  ssh_all "test -d ~/jaxdiff || git clone $REMOTE ~/jaxdiff; cd ~/jaxdiff && git pull --ff-only && pip install -e '.[tpu]'"
  exit 0
fi
ARGS=$(printf '%q ' "$@")
ssh_all "cd ~/jaxdiff && python launch/train.py $ARGS"
