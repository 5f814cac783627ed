#!/usr/bin/env bash
# The GPU benchmark: the seed recipe vs `loraq train` on random-initialised models of Qwen2.5-0.5B's and
# Qwen2.5-7B's shapes (built from their configurations; nothing is downloaded), bf16, conversations of
# about 2,000 tokens (within the seed's max length of 2048), seed default flags otherwise.
# Prints tokens/s, peak GPU memory and MFU (4 x parameters x tokens / peak bf16 FLOP/s) per recipe.
#
#   bench/gpu.sh            # both shapes, loraq with its speedups off (its default on CUDA) and all on
#   bench/gpu.sh 0.5b       # one shape
#   bench/gpu.sh 0.5b --speedups none scored_rows packed_sdpa train_mode_once hub_kernels fused_lora
#                           # one loraq run per setting (training.speedups), to read each trick's gain
#                           # against `none`; the first setting also runs with checkpointing on
#   bench/gpu.sh 0.5b --gpus 2 [--speedups ...]
#                           # loraq's recipes as one job on 2 GPUs (torchrun, DDP, the same global batch);
#                           # the seed recipe stays on one GPU; MFU per GPU
#
# Needs loraq installed with a CUDA build of torch (`pip install -e .[gpu]`) and one visible NVIDIA GPU (N for
# --gpus N).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
shapes=()
while [[ $# -gt 0 && "$1" != --* ]]; do shapes+=("$1"); shift; done
[[ ${#shapes[@]} -gt 0 ]] || shapes=(0.5b 7b)
gpus=1
if [[ $# -gt 1 && "$1" == --gpus ]]; then gpus="$2"; shift 2; fi
speedups=(--speedups none all)
if [[ $# -gt 0 ]]; then
  [[ "$1" == --speedups && $# -gt 1 ]] || {
    echo "usage: bench/gpu.sh [0.5b] [7b] [--gpus N] [--speedups SETTING...]" >&2; exit 2; }
  speedups=("$@")
fi
"$python" -c "import torch, sys; n = torch.cuda.device_count(); sys.exit(0 if n >= $gpus else
  f'bench/gpu.sh needs {$gpus} CUDA GPU(s); this machine has {n}')"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((gpus - 1)))}"
for shape in "${shapes[@]}"; do
  case "$shape" in
    0.5b) examples=128 ;;
    7b) examples=48 ;;
    *) echo "unknown shape $shape (0.5b or 7b)" >&2; exit 2 ;;
  esac
  echo "== qwen2.5-$shape shape =="
  "$python" bench/seed_vs_loraq.py --shape "qwen2.5-$shape" --tokens 1984 --examples "$examples" --epochs 1 \
    --repeats 1 --nproc-per-node "$gpus" "${speedups[@]}"
done
