#!/usr/bin/env bash
# Create a TPU VM slice, directly or through a queued resource.
#
#   tpu/create.sh --name jse --zone us-east5-a --accelerator v5p-32 [--queued] [--spot] [--dry-run]
#
# --queued       ask for it with `gcloud compute tpus queued-resources create` (waits for
#                capacity; the node is named --name, the request --name-qr)
# --spot         spot (preemptible) capacity; --reserved uses a reservation (queued only)
# --wait         with --queued: poll until the slice is ACTIVE
# --runtime V    TPU software version (default: v2-alpha-tpuv5 for v5p, v2-alpha-tpuv5-lite for
#                v5e, v2-alpha-tpuv6e for v6e, tpu-ubuntu2204-base for v4)
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common "$@"
QUEUED=0 SPOT=0 RESERVED=0 WAIT=0
for arg in "${REST[@]+"${REST[@]}"}"; do
  case $arg in
    --queued) QUEUED=1 ;;
    --spot) SPOT=1 ;;
    --reserved) RESERVED=1 ;;
    --wait) WAIT=1 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) die "unknown option '$arg' (see --help)" ;;
  esac
done
accelerator_type
gcloud_flags
if [[ $SPOT == 1 && $RESERVED == 1 ]]; then die "--spot and --reserved exclude each other"; fi
if [[ $RESERVED == 1 && $QUEUED == 0 ]]; then die "--reserved needs --queued"; fi

if [[ $QUEUED == 0 ]]; then
  extra=()
  if [[ $SPOT == 1 ]]; then extra+=(--spot); fi
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
    --accelerator-type "$ACCEL_TYPE" --version "$RUNTIME" "${extra[@]+"${extra[@]}"}"
  exit 0
fi

extra=()
if [[ $SPOT == 1 ]]; then extra+=(--spot); fi
if [[ $RESERVED == 1 ]]; then extra+=(--reserved); fi
run gcloud compute tpus queued-resources create "$TPU_NAME-qr" --node-id "$TPU_NAME" \
  "${GCLOUD_FLAGS[@]}" --accelerator-type "$ACCEL_TYPE" --runtime-version "$RUNTIME" \
  "${extra[@]+"${extra[@]}"}"
if [[ $WAIT == 1 ]]; then
  if [[ $DRY_RUN == 1 ]]; then
    run gcloud compute tpus queued-resources describe "$TPU_NAME-qr" "${GCLOUD_FLAGS[@]}" \
      --format "value(state.state)"
  else
    while true; do
      state=$(gcloud compute tpus queued-resources describe "$TPU_NAME-qr" "${GCLOUD_FLAGS[@]}" \
        --format "value(state.state)")
      echo "queued resource $TPU_NAME-qr: $state"
      case $state in
        ACTIVE) break ;;
        FAILED | SUSPENDED) die "queued resource $TPU_NAME-qr is $state" ;;
      esac
      sleep 60
    done
  fi
fi
