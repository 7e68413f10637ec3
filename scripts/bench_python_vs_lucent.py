"""Speed from Python: the deepvis package against Lucent 0.1.8 on the same nn.Module with the
same settings, in one process, runs interleaved (Lucent, deepvis, Lucent, ...) so that load
from other processes falls on both alike.

The model is torchvision's ResNet-18 (seeded random weights: speed does not depend on them),
loaded into deepvis through `deepvis.load(module, input_shape=...)` (the torch.onnx export),
into Lucent as it is. Settings are Lucent's `render_vis` defaults on both sides (128 px
decorrelated Fourier image, Lucent's standard transforms, Adam 0.05, ImageNet normalization),
with `thresholds=(STEPS,)`; deepvis gets them from `deepvis.render_vis` (preset "lucid").
Wall time per image, progress bars off.

Needs (outside CI): a venv with torch, torchvision, torch-lucent==0.1.8 and the deepvis
package (`pip install ./python`):
    python scripts/bench_python_vs_lucent.py [--steps 128] [--channels 3] [--threads N]
Lucent 0.1.8 needs kornia 0.4.1 (`pip install --no-deps kornia==0.4.1`), decorator, ipython.
"""
import argparse
import os
import statistics
import time
import warnings


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--layer", default="layer3_1")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both (torch.set_num_threads, RAYON_NUM_THREADS)")
    args = ap.parse_args()
    if args.threads:
        # Before deepvis starts its thread pool.
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import torch
    import torchvision

    import deepvis
    from lucent.optvis import render

    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # Lucent's deprecation warnings, once per step

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    t = time.perf_counter()
    model = deepvis.load(net, input_shape=(1, 3, 128, 128))
    load_s = time.perf_counter() - t
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"deepvis.load(nn.Module) {load_s:.2f} s (export + load)")

    # One short untimed render each first: one-time costs (thread pools, allocations).
    render.render_vis(net, f"{args.layer}:0", thresholds=(2,), show_image=False, progress=False)
    deepvis.render_vis(model, f"{args.layer}:0", thresholds=(2,), show_image=False,
                       progress=False)
    lucent_s, deepvis_s = [], []
    for c in range(args.channels):
        objective = f"{args.layer}:{c}"
        t = time.perf_counter()
        render.render_vis(net, objective, thresholds=(args.steps,), show_image=False,
                          progress=False)
        lucent_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        deepvis.render_vis(model, objective, thresholds=(args.steps,), show_image=False,
                           progress=False)
        deepvis_s.append(time.perf_counter() - t)
        print(f"{objective}: Lucent {lucent_s[-1]:.2f} s, deepvis {deepvis_s[-1]:.2f} s, "
              f"ratio {lucent_s[-1] / deepvis_s[-1]:.2f}")
    total_l, total_d = sum(lucent_s), sum(deepvis_s)
    print(f"total: Lucent {total_l:.2f} s, deepvis {total_d:.2f} s; Lucent/deepvis = "
          f"{total_l / total_d:.2f} (per-channel ratios: median "
          f"{statistics.median(l / d for l, d in zip(lucent_s, deepvis_s)):.2f})")


if __name__ == "__main__":
    main()
