"""Reference fixtures for native zoo architectures: torchvision models with seeded random
weights, their `features` state dict (no classifier: the files stay small) and, for a fixed
input, what forward hooks on some modules return and input gradients of channel means.

    /tmp/torch/bin/python scripts/zoo_fixtures.py     # writes testdata/zoo/

Deterministic: the same torch/torchvision give byte-identical files.
"""
import json
import os

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


def main():
    os.makedirs(OUT, exist_ok=True)
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
