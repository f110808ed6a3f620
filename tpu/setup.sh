#!/usr/bin/env bash
# Install jaxselfeval on every worker of a TPU VM slice.
#
#   tpu/setup.sh --name jse --zone us-east5-a [--source copy|GIT_URL] [--ref REF] [--dry-run]
#
# --source copy   (default) ship this checkout (tracked files, uncommitted edits included) as a
#                 tarball to every worker; GIT_URL: clone it on every worker instead
# --ref REF       with GIT_URL: the branch, tag or commit to check out (default main)
# --jax EXTRA     jax extra to install: tpu (default) or cuda12 / cpu for other hosts
# --python BIN    Python >= 3.11 on the workers (default python3.11; installed with apt if absent)
# Then: a venv in ~/$REMOTE_DIR/.venv with `pip install -e . 'jax[tpu]'`, and a check that
# every worker joins (jax.distributed) and sees the whole slice.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common "$@"
SOURCE=copy REF=main JAX_EXTRA=tpu PYTHON=python3.11
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --source) SOURCE=${2:?--source needs a value}; shift ;;
    --ref) REF=${2:?--ref needs a value}; shift ;;
    --jax) JAX_EXTRA=${2:?--jax needs a value}; shift ;;
    --python) PYTHON=${2:?--python needs a value}; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
case $JAX_EXTRA in tpu | cuda12 | cpu) ;; *) die "--jax must be tpu, cuda12 or cpu" ;; esac
gcloud_flags
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
D=$REMOTE_DIR

if [[ $SOURCE == copy ]]; then
  TARBALL=${TMPDIR:-/tmp}/jaxselfeval-src.tar.gz
  # a commit object of the work tree (uncommitted edits of tracked files included)
  tree=$(git -C "$REPO" stash create 2>/dev/null || true)
  run git -C "$REPO" archive --format=tar.gz -o "$TARBALL" "${tree:-HEAD}"
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:jaxselfeval-src.tar.gz" \
    "${GCLOUD_FLAGS[@]}" --worker=all
  on_workers all "mkdir -p $D && tar -xzf jaxselfeval-src.tar.gz -C $D"
else
  on_workers all "if [ -d $D/.git ]; then git -C $D fetch -q origin; else git clone -q $SOURCE $D; fi && git -C $D checkout -q $REF"
fi
on_workers all "command -v $PYTHON >/dev/null || (sudo apt-get update -qq && sudo apt-get install -y -qq $PYTHON $PYTHON-venv)"
on_workers all "cd $D && $PYTHON -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e . 'jax[$JAX_EXTRA]>=0.10,<0.11'"
on_workers all "cd $D && JSE_DISTRIBUTED=1 .venv/bin/python -c 'from jaxselfeval.distributed import initialize; initialize(); import jax; print(\"process\", jax.process_index(), \"of\", jax.process_count(), \"devices\", jax.device_count())'"
