"""Reference fixtures for native zoo architectures: torchvision models with seeded random
weights, their `features` state dict (no classifier: the files stay small) and, for a fixed
input, what forward hooks on some modules return and input gradients of channel means.

    /tmp/torch/bin/python scripts/zoo_fixtures.py     # writes testdata/zoo/

Models too big to ship weights for take them from a formula instead (`formula` below, the
same as `params::formula` in crates/deepvis-models): their fixtures hold only the reference
activations and gradients, and `NAME.modules.json` lists the module paths a forward hook
fires on (with how often), which the naming test resolves.

Deterministic: the same torch/torchvision give byte-identical files.
"""
import json
import os
import sys

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "testdata", "zoo")

CASES = {
    # model: (constructor, input size, modules, gradient cases)
    "squeezenet1_1": (
        lambda: torchvision.models.squeezenet1_1(weights=None),
        96,
        ["features.0", "features.3.squeeze_activation", "features.6", "features.12"],
        [("features.6", 9), ("features.12", 100)],
    ),
    "squeezenet1_0": (
        lambda: torchvision.models.squeezenet1_0(weights=None),
        96,
        ["features.2", "features.7", "features.12"],
        [("features.12", 3)],
    ),
}


MASK = (1 << 64) - 1


def fnv1a64(key):
    h = 0xCBF29CE484222325
    for b in key.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def formula(seed, key, shape):
    """Parameter `key` of `shape`: see `params::formula` in crates/deepvis-models."""
    n = int(np.prod(shape, dtype=np.int64))
    base = np.uint64(fnv1a64(key) ^ ((seed * 0x9E3779B97F4A7C15) & MASK))
    z = np.arange(n, dtype=np.uint64) ^ base
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    v = (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24) * np.float32(2) - np.float32(1)
    if key.endswith(".running_mean"):
        scale, offset = 0.1, 0.0
    elif key.endswith(".running_var"):
        scale, offset = 0.5, 1.0
    elif key.endswith(".bias"):
        scale, offset = 0.05, 0.0
    elif len(shape) == 1:  # a batch norm's weight
        scale, offset = 0.2, 1.0
    else:
        fan_in = int(np.prod(shape[1:]))
        scale, offset = np.sqrt(np.float32(6) / np.float32(fan_in)), 0.0
    out = np.float32(offset) + np.float32(scale) * v
    return torch.from_numpy(out.astype(np.float32).reshape(shape))


def formula_state_dict(model, seed):
    sd = model.state_dict()
    return {
        k: (v if k.endswith("num_batches_tracked") else formula(seed, k, tuple(v.shape)))
        for k, v in sd.items()
    }


FORMULA_CASES = {
    # model: (constructor, input size, modules, gradient cases, formula keys to store)
    # `name#k` is the k-th call of a module a forward calls several times; the bare name its last.
    "resnet18": (
        lambda: torchvision.models.resnet18(weights=None),
        64,
        ["relu", "layer1.0.relu#0", "layer1.0.relu", "layer1.0.bn2", "layer2.0.downsample",
         "layer2.0", "layer4", "avgpool", "fc"],
        [("layer2.0.relu#0", 5), ("layer3", 7), ("fc", 1)],
        ["conv1.weight", "fc.bias"],
    ),
    "resnet50": (
        lambda: torchvision.models.resnet50(weights=None),
        64,
        ["layer1.0.relu#1", "layer1.0.relu", "layer1.0.downsample", "layer2.0.bn3", "layer3.1",
         "layer4", "fc"],
        [("layer1.0.relu#1", 3), ("layer4", 10)],
        [],
    ),
    "resnext50_32x4d": (
        lambda: torchvision.models.resnext50_32x4d(weights=None),
        32,
        ["layer1.0.relu#1", "layer2.0", "layer4", "fc"],
        [("layer3.1.relu#0", 11)],
        [],
    ),
    "mobilenet_v2": (
        lambda: torchvision.models.mobilenet_v2(weights=None),
        64,
        ["features.0", "features.1.conv.0.2", "features.2.conv.0", "features.3.conv", "features.3",
         "features.18", "classifier.1"],
        [("features.3", 4), ("features.14", 20)],
        [],
    ),
    "mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(weights=None),
        64,
        ["features.0", "features.1.block.1.scale_activation", "features.1.block.1", "features.1",
         "features.2.block.0.1", "features.5", "features.9.block.2", "features.12", "avgpool",
         "classifier.1", "classifier.3"],
        [("features.1.block.1", 3), ("features.5", 7), ("classifier.3", 2)],
        [],
    ),
    "mobilenet_v3_large": (
        lambda: torchvision.models.mobilenet_v3_large(weights=None),
        64,
        ["features.4.block.2", "features.5", "features.16", "classifier.3"],
        [("features.11", 30)],
        [],
    ),
}


def hook_all(model, acts):
    """Forward hooks on every module; each call's output appended (cloned: ReLUs and the
    residual sum work in place and would overwrite it)."""
    def hook(name):
        return lambda _m, _i, out: acts.setdefault(name, []).append(out.clone())
    return [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]


def pick(acts, key):
    name, _, k = key.partition("#")
    return acts[name][int(k)] if k else acts[name][-1]


def formula_case(name, make, size, modules, cases, keys):
    model = make().eval()
    sd = formula_state_dict(model, 0)
    model.load_state_dict(sd)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    acts = {}
    hooks = hook_all(model, acts)
    ref = {"input": x}
    with torch.no_grad():
        model(x)
    calls = {n: len(acts.get(n, [])) for n, _ in model.named_modules() if n}
    for m in modules:
        ref[f"act.{m}"] = pick(acts, m).contiguous()
    for m, c in cases:
        xi = x.clone().requires_grad_(True)
        acts.clear()
        model(xi)
        pick(acts, m)[0, c].mean().backward()
        ref[f"grad.{m}.c{c}"] = xi.grad.contiguous()
    for h in hooks:
        h.remove()
    for k in keys:
        ref[f"formula.{k}"] = sd[k].contiguous()
    save_file(ref, os.path.join(OUT, f"{name}.ref.safetensors"))
    meta = {
        "model": name,
        "weights": "formula(0)",
        "input_size": size,
        "modules": modules,
        "cases": [{"key": m, "channel": c} for m, c in cases],
        "formula_keys": keys,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(OUT, f"{name}.modules.json"), "w") as f:
        json.dump({"calls": calls}, f, indent=1)


def main():
    os.makedirs(OUT, exist_ok=True)
    only = set(sys.argv[1:])
    for name, case in FORMULA_CASES.items():
        if not only or name in only:
            formula_case(name, *case)
    if only:
        return
    for name, (make, size, modules, cases) in CASES.items():
        torch.manual_seed(0)
        model = make().eval()
        weights = {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("features.")}
        save_file(weights, os.path.join(OUT, f"{name}.features.safetensors"))
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        acts = {}
        # Hooks clone their output: torchvision's ReLUs work in place and would overwrite it.
        hooks = [
            model.get_submodule(m).register_forward_hook(lambda _m, _i, out, m=m: acts.__setitem__(m, out.clone()))
            for m in modules
        ]
        ref = {"input": x}
        with torch.no_grad():
            model(x)
        for m in modules:
            ref[f"act.{m}"] = acts[m].contiguous()
        for m, c in cases:
            xi = x.clone().requires_grad_(True)
            acts.clear()
            model(xi)
            acts[m][0, c].mean().backward()
            ref[f"grad.{m}.c{c}"] = xi.grad.contiguous()
        for h in hooks:
            h.remove()
        save_file(ref, os.path.join(OUT, f"{name}.ref.safetensors"))
        meta = {
            "model": name,
            "input_size": size,
            "modules": modules,
            "cases": [{"key": m, "channel": c} for m, c in cases],
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
        }
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
