#!/usr/bin/env bash
# Shared options and helpers for the tpu/*.sh scripts. Sourced, not run.
# shellcheck disable=SC2034  # variables set here are used by the scripts that source this
#
# Every script takes --dry-run (print each command, shell-quoted, instead of running it) and
# reads its defaults from the environment:
#   TPU_NAME (jse), ZONE, PROJECT (gcloud's default project if empty), ACCELERATOR (v5p-32,
#   v5e-16 / v5litepod-16, v6e-16, v4-32), RUNTIME (default per TPU generation),
#   REMOTE_DIR (~/jaxselfeval on each worker), BUCKET (gs://... for checkpoints).

set -euo pipefail

DRY_RUN=0
TPU_NAME=${TPU_NAME:-jse}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
ACCELERATOR=${ACCELERATOR:-}
RUNTIME=${RUNTIME:-}
REMOTE_DIR=${REMOTE_DIR:-jaxselfeval}
BUCKET=${BUCKET:-}

die() {
  echo "error: $*" >&2
  exit 2
}

# quote ARG: ARG as the shell reads it back (single-quoted unless it is plain).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# run CMD ARGS...: run it, or with --dry-run print it (one line, shell-quoted).
run() {
  if [[ $DRY_RUN == 1 ]]; then
    local a out=""
    for a in "$@"; do out+="$(quote "$a") "; done
    echo "${out% }"
  else
    "$@"
  fi
}

# parse_common "$@": handles --dry-run/--name/--zone/--project/--accelerator/--runtime; the
# other arguments are left in the REST array.
REST=()
parse_common() {
  REST=()
  while [[ $# -gt 0 ]]; do
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      --name) TPU_NAME=${2:?--name needs a value}; shift ;;
      --zone) ZONE=${2:?--zone needs a value}; shift ;;
      --project) PROJECT=${2:?--project needs a value}; shift ;;
      --accelerator) ACCELERATOR=${2:?--accelerator needs a value}; shift ;;
      --runtime) RUNTIME=${2:?--runtime needs a value}; shift ;;
      --remote-dir) REMOTE_DIR=${2:?--remote-dir needs a value}; shift ;;
      *) REST+=("$1") ;;
    esac
    shift
  done
}

need_zone() {
  [[ -n $ZONE ]] || die "no zone: pass --zone (e.g. us-east5-a) or set ZONE"
}

# GCLOUD_FLAGS: --zone and --project for every gcloud compute tpus command.
gcloud_flags() {
  need_zone
  GCLOUD_FLAGS=(--zone "$ZONE")
  if [[ -n $PROJECT ]]; then GCLOUD_FLAGS+=(--project "$PROJECT"); fi
}

# accelerator_type: gcloud's name for $ACCELERATOR (v5e-N is v5litepod-N) in ACCEL_TYPE, and
# the default runtime (TPU software version) for its generation in RUNTIME.
accelerator_type() {
  [[ -n $ACCELERATOR ]] || die "no accelerator: pass --accelerator (v5p-32, v5e-16, v6e-16, v4-32)"
  local gen=${ACCELERATOR%-*} size=${ACCELERATOR##*-}
  [[ $size =~ ^[0-9]+$ && $gen != "$ACCELERATOR" ]] ||
    die "accelerator '$ACCELERATOR' must look like v5p-32, v5e-16, v6e-16 or v4-32"
  local runtime
  case $gen in
    v5e | v5litepod) gen=v5litepod; runtime=v2-alpha-tpuv5-lite ;;
    v5p) runtime=v2-alpha-tpuv5 ;;
    v6e) runtime=v2-alpha-tpuv6e ;;
    v4) runtime=tpu-ubuntu2204-base ;;
    *) die "unknown TPU generation '$gen': use v4, v5e (v5litepod), v5p or v6e" ;;
  esac
  ACCEL_TYPE=$gen-$size
  RUNTIME=${RUNTIME:-$runtime}
}

# on_workers WORKER COMMAND: run a shell command on TPU VM workers (all, or an index).
on_workers() {
  gcloud_flags
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker="$1" --command "$2"
}
