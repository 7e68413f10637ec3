"""Two deepvis schedules against each other at large sizes, judged by PyTorch.

Renders each channel of the bundled EfficientNet-Lite0 twice at --size (default 512): once
with --a (default: the default preset as is) and once with --b (default `--octaves 3`),
timing each CLI call. PyTorch then scores both images by their robust activation at their own
size (the channel's mean activation over N random views: jitter ±size/14 px, scale 0.8–1.2,
rotation ±15°; the same views for both), so a faster schedule has to make an image that works
as well at the size the user asked for.

Needs torch and the two EfficientNet-Lite0 PyPI packages (see quality_vs_lucent.py):
    python scripts/schedule_quality.py --deepvis target/release/deepvis --out schedules
"""
import argparse, math, os, shutil, sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from quality_vs_lucent import deepvis_render, load_lite0, module  # noqa: E402

CHANNELS = ["_blocks.2:5", "_blocks.5:3", "_blocks.8:33", "_blocks.11:7", "_blocks.14:12", "_conv_head:100"]


def views(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        angle = (torch.rand(1, generator=g).item() * 2 - 1) * math.radians(15)
        scale = 0.8 + 0.4 * torch.rand(1, generator=g).item()
        tx, ty = ((torch.rand(2, generator=g) * 2 - 1) * (size / 14) / (size / 2)).tolist()
        c, s = math.cos(angle) / scale, math.sin(angle) / scale
        out.append(torch.tensor([[c, -s, tx], [s, c, ty]], dtype=torch.float32))
    return torch.stack(out)


def robust_activation(model, layer, channel, img, thetas, batch=4):
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    total = 0.0
    for i in range(0, len(thetas), batch):
        t = thetas[i:i + batch]
        xb = x.expand(len(t), -1, -1, -1)
        grid = F.affine_grid(t, list(xb.shape), align_corners=False)
        xb = F.grid_sample(xb, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        acts = {}
        h = module(model, layer).register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
        with torch.no_grad():
            model(xb)
        h.remove()
        total += acts["a"][:, channel].mean().item() * len(t)
    return total / len(thetas)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--deepvis", required=True)
    p.add_argument("--out", default="schedules")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--views", type=int, default=16)
    p.add_argument("--channels", default=",".join(CHANNELS))
    p.add_argument("--a", default="", help="deepvis filters flags of the first schedule")
    p.add_argument("--b", default="--octaves 3", help="deepvis filters flags of the second schedule")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    model = load_lite0()
    thetas = views(a.views, a.size)
    rows = []
    for spec in a.channels.split(","):
        layer, ch = spec.split(":")
        ch = int(ch)
        res = []
        for name, flags in (("a", a.a), ("b", a.b)):
            dout = os.path.join(a.out, name)
            shutil.rmtree(dout, ignore_errors=True)
            args = ["--size", str(a.size)] + flags.split()
            img, dt = deepvis_render(a.deepvis, layer, ch, dout, args)
            res.append((robust_activation(model, layer, ch, img, thetas), dt))
        rows.append((spec, res))
        (wa, wt), (va, vt) = res
        print(f"{spec}: A {wa:.3f} in {wt:.1f} s, B {va:.3f} in {vt:.1f} s", flush=True)
    print(f"\nA = `{a.a or 'default'}`, B = `{a.b}`\n")
    print(f"| channel ({a.size} px) | A robust act. | B robust act. | A s | B s |")
    print("|---|---|---|---|---|")
    for spec, ((wa, wt), (va, vt)) in rows:
        print(f"| {spec} | {wa:.3f} | {va:.3f} | {wt:.1f} | {vt:.1f} |")
    ratio = sum(r[1][0][1] for r in rows) / sum(r[1][1][1] for r in rows)
    mean = sum(r[1][1][0] / r[1][0][0] for r in rows) / len(rows)
    print(f"\nB/A robust activation: mean {mean:.3f}; A time / B time {ratio:.2f}×")


if __name__ == "__main__":
    main()
