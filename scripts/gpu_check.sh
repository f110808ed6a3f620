#!/usr/bin/env bash
# GPU checks and benchmarks at real model sizes in one run (<= 10 minutes), on a machine with one
# NVIDIA GPU and jax[cuda], flax, optax, orbax-checkpoint, transformers and torch (CUDA)
# installed; nothing is downloaded (random weights). Each step's log lands in OUT_DIR:
#   scripts/gpu_check.sh OUT_DIR
# 1. tests: tests/test_gpu.py (cuDNN attention vs exact, greedy decode vs the full forward,
#    training steps lower the loss, all on the GPU);
# 2. sampler: bench sampler at llama3_1_8b, bf16, 16 greedy candidates x 32 tokens after a
#    512-token prompt, ours vs transformers on the same GPU with the same weights; then one
#    prefill+branch vs 16 prefills and the shared vs copied cache at a 2048-token prompt;
# 3. prune: bench prune at llama3_1_8b, bf16: Best-of-16 in full vs keeping 4 at 16 tokens;
# 4. train: bench train at llama3_2_1b, seq 2048: full fine-tuning and LoRA steps, MFU.
# Every row's bound uses the chip's datasheet HBM bandwidth and dense bf16 peak (H100 SXM, H200,
# A100 80GB), else the figures measured in the run; each log's `limits:` line says which.
# A step that fails or runs past its time limit is reported and the next one runs. Time limits
# (seconds; env overrides): TESTS_S 75 + SAMPLER_S 240 + PRUNE_S 120 + TRAIN_S 145 = 580.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd) && cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_MEM_FRACTION=0.6  # the rest for torch (bench sampler)
py=${PYTHON:-python3}
alone=(env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9)  # steps without torch: the GPU for jax

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
step tests "${TESTS_S:-75}" "${alone[@]}" "$py" -m pytest -q -n 0 -p no:cacheprovider \
  tests/test_gpu.py
step sampler "${SAMPLER_S:-240}" "$py" -m jaxselfeval.cli bench sampler --shapes llama3_1_8b \
  --dtypes bfloat16 --modes greedy --n 16 --prompt-len 512 --new-tokens 32 \
  --figures-shape llama3_1_8b --figures-prompt-len 2048 --out "$out/sampler.json"
step prune "${PRUNE_S:-120}" "${alone[@]}" "$py" -m jaxselfeval.cli bench prune \
  --shape llama3_1_8b --dtype bfloat16 --prompts 64 --n 16 --at 16 --keep 0.25 \
  --out "$out/prune.json"
step train "${TRAIN_S:-145}" "${alone[@]}" "$py" -m jaxselfeval.cli bench train \
  --model llama3_2_1b --batch 4 --seq 2048 --modes full,lora --out "$out/train.json"
