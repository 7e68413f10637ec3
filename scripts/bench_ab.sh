#!/usr/bin/env bash
# One sitting, back to back per case: PyTorch's step (../shared/bench/torch_reference.py), this
# build, and optionally a baseline build (OLD=path/to/deepvis) and the same network loaded from
# ONNX (ONNX_VGG16=path to torchvision's vgg16().features exported with a dynamic input size).
# Prints a Markdown table of ms per step and ratios.
#   TORCH=/path/to/venv/bin/python [OLD=...] [ONNX_VGG16=...] scripts/bench_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-python3}
DV=${DEEPVIS:-target/release/deepvis}
REF=../shared/bench/torch_reference.py
tmp=$(mktemp -d)
ms() { "$@" --no-peak 2>/dev/null | tail -1 | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['ms_per_step'])"; }
echo "| case | PyTorch ms | deepvis ms | ratio | baseline ms | from ONNX ms |"
echo "|---|---|---|---|---|---|"
for c in "28 224 f32" "28 224 bf16" "5 224 f32" "28 512 f32" "28 512 bf16"; do
  set -- $c
  "$TORCH" "$REF" step --model vgg16 --layer "$1" --size "$2" --batch 1 > "$tmp/t.json"
  t=$(python3 -c "import json; print(json.load(open('$tmp/t.json'))['ms_per_step'])")
  d=$(ms "$DV" bench --model vgg16 --random-weights --layer "$1" --size "$2" --precision "$3")
  o=""; [ -n "${OLD:-}" ] && o=$(ms "$OLD" bench --model vgg16 --random-weights --layer "$1" --size "$2" --precision "$3")
  x=""; [ -n "${ONNX_VGG16:-}" ] && x=$(ms "$DV" bench --model "$ONNX_VGG16" --mean 0.5 --std 0.5 --layer "$1" --size "$2" --precision "$3")
  r=$(python3 -c "print(f'{$t / $d:.2f}×')")
  echo "| VGG16 → features.$1, $2 px, $3 | $t | $d | $r | $o | $x |"
done
# Before dbe5dd0's successors renamed it, the head's activation was called `_conv_head`.
d=$(ms "$DV" bench --model efficientnet_lite0 --layer _conv_head.act --channel 100 --size 224)
o=""; [ -n "${OLD:-}" ] && o=$(ms "$OLD" bench --model efficientnet_lite0 --layer _conv_head --channel 100 --size 224)
echo "| EfficientNet-Lite0 → _conv_head.act, 224 px, f32 | | $d | | $o | |"
rm -rf "$tmp"
