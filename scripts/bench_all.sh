#!/usr/bin/env bash
# Issue-5 benchmark cases, PyTorch and deepvis back to back per case, as a Markdown table.
# Needs a venv with torch + torchvision (+ efficientnet-lite-pytorch for the Lite0 case):
#   TORCH=/path/to/venv/bin/python [EXTRA="--precision bf16"] scripts/bench_all.sh   (float32 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-python3}
DV=${DEEPVIS:-target/release/deepvis}
REF=../shared/bench/torch_reference.py
tmp=$(mktemp -d)
echo "| case | PyTorch ms | deepvis ms | deepvis GFLOP/s | % GEMM peak | ratio |"
echo "|---|---|---|---|---|---|"
row() { # name torch.json deepvis-json
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
name, t, d = sys.argv[1], json.load(open(sys.argv[2])), json.loads(open(sys.argv[3]).read().strip().splitlines()[-1])
print(f"| {name} | {t['ms_per_step']} | {d['ms_per_step']} | {d['gflop_per_s']} | {d.get('percent_of_gemm_peak', '')} | {t['ms_per_step'] / d['ms_per_step']:.2f}× |")
PY
}
for c in "28 224 1" "28 224 8" "28 512 1" "28 512 8" "5 224 1" "5 512 1"; do
  set -- $c
  "$TORCH" "$REF" step --model vgg16 --layer "$1" --size "$2" --batch "$3" > "$tmp/t.json"
  "$DV" bench --model vgg16 --random-weights --layer "$1" --size "$2" --batch "$3" --reference "$tmp/t.json" ${EXTRA:---precision f32} > "$tmp/d.json"
  row "VGG16 → features.$1, $2 px, batch $3" "$tmp/t.json" "$tmp/d.json"
done
if "$TORCH" scripts/torch_step_lite0.py --layer _conv_head.act --size 224 > "$tmp/t.json" 2>/dev/null; then
  "$DV" bench --model efficientnet_lite0 --layer _conv_head.act --channel 100 --size 224 --reference "$tmp/t.json" ${EXTRA:---precision f32} > "$tmp/d.json"
  row "EfficientNet-Lite0 → _conv_head, 224 px, batch 1" "$tmp/t.json" "$tmp/d.json"
fi
rm -rf "$tmp"
