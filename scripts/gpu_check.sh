#!/usr/bin/env bash
# GPU checks and benchmarks in one run, on a machine with an NVIDIA GPU and jax[cuda], flax, optax,
# orbax-checkpoint, transformers and torch (CUDA) installed; each step's log lands in OUT_DIR:
#   scripts/gpu_check.sh OUT_DIR
# 1. tests/test_gpu.py: cuDNN attention vs exact, greedy decode vs the full forward, training
#    steps lower the loss (all on the GPU);
# 2. bench sampler (ours vs transformers on the same GPU, same dtype, every shape, roofline);
# 3. bench prune (Best-of-16 in full vs pruned at 8 tokens, the shipped tiny model);
# 4. bench train (full fine-tuning and LoRA of small_100m, MFU against the measured peak).
# A step that fails or runs past its time limit is reported and the next one runs.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd) && cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_MEM_FRACTION=0.6  # the rest for torch (bench sampler)
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($*)"
  timeout "$limit" "$@" 2>&1 | grep -v "Loading weights" | tee "$out/$name.log"
  echo "=== $name exit ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', \
flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())"
step tests "${TESTS_S:-180}" "$py" -m pytest -q -n 0 -p no:cacheprovider tests/test_gpu.py
step sampler "${SAMPLER_S:-300}" "$py" -m jaxselfeval.cli bench sampler --out "$out/sampler.json"
step prune "${PRUNE_S:-90}" "$py" -m jaxselfeval.cli bench prune --out "$out/prune.json"
step train "${TRAIN_S:-150}" "$py" -m jaxselfeval.cli bench train --model small_100m --batch 8 \
  --seq 1024 --out "$out/train.json"
