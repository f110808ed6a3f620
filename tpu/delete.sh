#!/usr/bin/env bash
# Tear down a TPU VM slice (and its queued resource).
#
#   tpu/delete.sh --name jse --zone us-east5-a [--queued] [--dry-run]
#
# --queued   it was created with --queued: delete the request (--force also deletes the node)
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common "$@"
QUEUED=0
for arg in "${REST[@]+"${REST[@]}"}"; do
  case $arg in
    --queued) QUEUED=1 ;;
    -h | --help) sed -n '2,7p' "$0"; exit 0 ;;
    *) die "unknown option '$arg' (see --help)" ;;
  esac
done
gcloud_flags
if [[ $QUEUED == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$TPU_NAME-qr" "${GCLOUD_FLAGS[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --quiet
fi
