#!/usr/bin/env bash
# Issue 14 and 19 step cases, one sitting, back to back per case: PyTorch's float32 step
# (../shared/bench/torch_reference.py), deepvis in float32, in bf16 on the AVX512-BF16 kernels
# (DEEPVIS_AMX=0) and in bf16 on AMX tiles where the CPU has them. Prints a Markdown table.
#   TORCH=/path/to/venv/bin/python scripts/bench_amx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-python3}
DV=${DEEPVIS:-target/release/deepvis}
REF=../shared/bench/torch_reference.py
ms() { "$@" --no-peak 2>/dev/null | tail -1 | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['ms_per_step'])"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}×')"; }
echo "| case | PyTorch f32 ms | deepvis f32 ms (ratio) | bf16 AVX512 ms (ratio) | bf16 AMX ms (ratio) |"
echo "|---|---|---|---|---|"
# model module size [--layer for deepvis]
for c in "vgg16 28 224" "vgg16 28 512" "resnet50 layer3 224" "mobilenet_v2 features.14 224" \
         "efficientnet_b0 features.6 224" "googlenet inception4c 224" "efficientnet_lite0 _blocks.10 224"; do
  set -- $c
  if [ "$1" = vgg16 ]; then sel=(--layer "$2"); else sel=(--module "$2"); fi
  base=(bench --model "$1" --random-weights --layer "$2" --size "$3")
  if [ "$1" = efficientnet_lite0 ]; then
    # Not a torchvision model: deepvis's own times, to compare with earlier sittings.
    f=$(ms "$DV" "${base[@]}" --precision f32)
    a=$(DEEPVIS_AMX=0 ms "$DV" "${base[@]}" --precision bf16)
    x=$(ms "$DV" "${base[@]}" --precision bf16)
    echo "| $1 → $2, $3 px | — | $f | $a | $x |"
    continue
  fi
  t=$("$TORCH" "$REF" step --model "$1" "${sel[@]}" --size "$3" --batch 1 | python3 -c "import json,sys; print(json.load(sys.stdin)['ms_per_step'])")
  f=$(ms "$DV" "${base[@]}" --precision f32)
  a=$(DEEPVIS_AMX=0 ms "$DV" "${base[@]}" --precision bf16)
  x=$(ms "$DV" "${base[@]}" --precision bf16)
  echo "| $1 → $2, $3 px | $t | $f ($(ratio $t $f)) | $a ($(ratio $t $a)) | $x ($(ratio $t $x)) |"
done
