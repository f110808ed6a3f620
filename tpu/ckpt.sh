#!/usr/bin/env bash
# Copy checkpoints and exported models between a bucket and local disk or the TPU workers.
#
#   tpu/ckpt.sh push LOCAL_DIR gs://BUCKET/PATH [--dry-run]     # this machine -> bucket
#   tpu/ckpt.sh pull gs://BUCKET/PATH LOCAL_DIR [--dry-run]     # bucket -> this machine
#   tpu/ckpt.sh push runs/selfeval/hf gs://b/8b-selfeval --name jse --zone Z --worker 0
#   tpu/ckpt.sh pull gs://b/Llama-3.1-8B-Instruct models/llama-8b --name jse --zone Z
#   tpu/ckpt.sh mount gs://BUCKET DIR --name jse --zone Z     # gcsfuse on every worker
#
# With --name/--zone the copy runs on the workers (paths relative to ~/$REMOTE_DIR):
# pull on all workers (each reads the weights), push from --worker (default 0: process 0 writes
# exports). --gsutil uses `gsutil -m rsync -r` instead of `gcloud storage rsync --recursive`.
# Multi-host orbax checkpoints need one directory every host sees: train into a gcsfuse
# mount (`mount`), then copy it with push/pull like any directory.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TPU_NAME=""
WORKER="" GSUTIL=0
ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --worker) WORKER=${2:?--worker needs a value}; shift ;;
    --gsutil) GSUTIL=1 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
parse_common "${ARGS[@]+"${ARGS[@]}"}"
set -- "${REST[@]+"${REST[@]}"}"
[[ $# -eq 3 ]] || die "usage: tpu/ckpt.sh push|pull|mount SRC DST [--name N --zone Z] (see --help)"
OP=$1 SRC=$2 DST=$3
case $OP in
  push) [[ $DST == gs://* ]] || die "push copies to a bucket: DST must start with gs://" ;;
  pull) [[ $SRC == gs://* ]] || die "pull copies from a bucket: SRC must start with gs://" ;;
  mount)
    [[ $SRC == gs://* ]] || die "mount needs a bucket gs://NAME as SRC"
    [[ -n $TPU_NAME ]] || die "mount runs on the workers: pass --name and --zone"
    ;;
  *) die "unknown operation '$OP': use push, pull or mount" ;;
esac

if [[ $GSUTIL == 1 ]]; then
  COPY=(gsutil -m rsync -r "$SRC" "$DST")
else
  COPY=(gcloud storage rsync --recursive "$SRC" "$DST")
fi

if [[ -z $TPU_NAME ]]; then
  if [[ $OP == pull ]]; then run mkdir -p "$DST"; fi
  run "${COPY[@]}"
  exit 0
fi

if [[ $OP == mount ]]; then
  bucket=${SRC#gs://}
  on_workers all "mkdir -p $DST && (mountpoint -q $DST || gcsfuse --implicit-dirs ${bucket%%/*} $DST)"
  exit 0
fi
printf -v copy '%q ' "${COPY[@]}"
if [[ $OP == pull ]]; then
  on_workers "${WORKER:-all}" "cd $REMOTE_DIR && mkdir -p $DST && ${copy% }"
else
  on_workers "${WORKER:-0}" "cd $REMOTE_DIR && ${copy% }"
fi
