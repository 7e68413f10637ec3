"""Forward-only throughput of `deepvis examples`' pass beside PyTorch's torch.no_grad, in one
sitting: the two sides alternate (torch, deepvis, torch, deepvis, ...) so machine load falls on
both alike, and the ratio of medians is reported.

    /tmp/torch/bin/python scripts/forward_bench.py [--model vgg16 --layer 28 --batch 16
        --size 224 --rounds 3 --iters 3] [--deepvis target/release/deepvis]

Weights are random on both sides (speed does not depend on them). PyTorch runs float32 on as many
threads as deepvis (all cores by default). Prints one JSON line per round and a summary line.
"""
import argparse, json, statistics, subprocess, time, torch, torchvision

p = argparse.ArgumentParser()
p.add_argument("--model", default="vgg16")
p.add_argument("--layer", default="28", help="index in model.features")
p.add_argument("--batch", type=int, default=16)
p.add_argument("--size", type=int, default=224)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--iters", type=int, default=3)
p.add_argument("--deepvis", default="target/release/deepvis")
p.add_argument("--precision", default="f32", help="deepvis's arithmetic (f32 against PyTorch's float32, or bf16/auto)")
a = p.parse_args()

threads = torch.get_num_threads()
m = getattr(torchvision.models, a.model)().eval()
feats = m.features[: int(a.layer) + 1]
x = torch.randn(a.batch, 3, a.size, a.size)

def torch_ms():
    times = []
    with torch.no_grad():
        feats(x)  # warm-up
        for _ in range(a.iters):
            t = time.perf_counter()
            feats(x)
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3

def deepvis_ms():
    out = subprocess.run(
        [a.deepvis, "bench", "--model", a.model, "--random-weights", "--layer", a.layer,
         "--batch", str(a.batch), "--size", str(a.size), "--forward-only", "--no-peak",
         "--iters", str(a.iters), "--warmup", "1", "--threads", str(threads), "--precision", a.precision],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ms_per_step"]

ratios = []
for r in range(a.rounds):
    t = torch_ms()
    d = deepvis_ms()
    ratios.append(t / d)
    print(json.dumps({"round": r, "torch_ms_per_batch": round(t, 1), "deepvis_ms_per_batch": round(d, 1),
                      "torch_images_per_s": round(a.batch / t * 1e3, 2),
                      "deepvis_images_per_s": round(a.batch / d * 1e3, 2),
                      "speedup": round(t / d, 3)}), flush=True)
print(json.dumps({"summary": f"{a.model} to features.{a.layer}, batch {a.batch}, {a.size}px, {threads} threads",
                  "torch": torch.__version__, "median_speedup": round(statistics.median(ratios), 3),
                  "min": round(min(ratios), 3), "max": round(max(ratios), 3)}))
