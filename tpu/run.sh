#!/usr/bin/env bash
# Run the same command on every worker of a TPU VM slice (one JAX process per host; they join
# through jax.distributed because JSE_DISTRIBUTED=1 is set).
#
#   tpu/run.sh --name jse --zone us-east5-a [--worker all|N] [--log FILE] [--dry-run] -- \
#       jaxselfeval train selfeval --config configs/selfeval_8b.yaml
#
# The command runs in ~/$REMOTE_DIR with .venv/bin first on PATH and HF_HUB_OFFLINE=1.
# --log FILE   run detached (nohup) and write each worker's output to FILE on that worker;
#              follow it with: tpu/run.sh ... -- tail -f FILE
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WORKER=all LOG=""
ARGS=()
while [[ $# -gt 0 && $1 != "--" ]]; do
  case $1 in
    --worker) WORKER=${2:?--worker needs a value}; shift ;;
    --log) LOG=${2:?--log needs a value}; shift ;;
    -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
[[ ${1:-} == "--" ]] && shift
parse_common "${ARGS[@]+"${ARGS[@]}"}"
if [[ ${#REST[@]} -gt 0 ]]; then die "unknown option '${REST[0]}' (put the command after --)"; fi
[[ $# -gt 0 ]] || die "no command: put it after --, e.g. -- jaxselfeval info --model DIR"
printf -v CMD '%q ' "$@"
CMD=${CMD% }
PREFIX="cd $REMOTE_DIR && export PATH=\$PWD/.venv/bin:\$PATH JSE_DISTRIBUTED=1 HF_HUB_OFFLINE=1"
if [[ -n $LOG ]]; then
  on_workers "$WORKER" "$PREFIX && nohup $CMD > $LOG 2>&1 < /dev/null &"
else
  on_workers "$WORKER" "$PREFIX && $CMD"
fi
