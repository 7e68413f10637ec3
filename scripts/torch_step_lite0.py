"""PyTorch reference for `deepvis bench --model efficientnet_lite0`: one optimization step
(forward to a layer, gradient of a channel's mean back to the input, weights frozen), timed as
../shared/bench/torch_reference.py times torchvision models. torchvision has no Lite0, so the
architecture comes from PyPI `efficientnet-lite-pytorch` 0.1.0 (install it with --no-deps).
    python scripts/torch_step_lite0.py --layer _conv_head.act --size 224 --batch 1 > torch.json
    deepvis bench --model efficientnet_lite0 --layer _conv_head.act --channel 100 --reference torch.json
Prints one JSON line."""
import argparse, json, time, torch

p = argparse.ArgumentParser()
p.add_argument("--layer", default="_conv_head.act")
p.add_argument("--channel", type=int, default=100)
p.add_argument("--size", type=int, default=224)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--iters", type=int, default=9)
p.add_argument("--warmup", type=int, default=3)
a = p.parse_args()

from efficientnet_lite_pytorch import EfficientNet
m = EfficientNet.from_name("efficientnet-lite0").eval()
for q in m.parameters():
    q.requires_grad_(False)


class Stop(Exception):
    pass


out = {}
# `_conv_head.act` means the head after bn1 + ReLU6, as deepvis names it.
module = m._bn1 if a.layer == "_conv_head.act" else dict(m.named_modules())[a.layer]


def hook(_, __, o):
    out["y"] = torch.clamp(o, 0, 6) if a.layer == "_conv_head.act" else o
    raise Stop


module.register_forward_hook(hook)
x = torch.randn(a.batch, 3, a.size, a.size, requires_grad=True)


def one():
    x.grad = None
    try:
        m(x)
    except Stop:
        pass
    out["y"][:, a.channel].mean().backward()


for _ in range(a.warmup):
    one()
times = []
for _ in range(a.iters):
    t = time.perf_counter(); one(); times.append(time.perf_counter() - t)
dt = sorted(times)[len(times) // 2]
print(json.dumps({"what": "torch fwd+input-grad step", "model": "efficientnet_lite0", "layer": a.layer, "size": a.size,
                  "batch": a.batch, "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "ms_per_step": round(dt * 1e3, 2), "ms_per_image_step": round(dt * 1e3 / a.batch, 2)}))
