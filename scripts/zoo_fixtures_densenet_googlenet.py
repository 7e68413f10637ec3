"""Reference fixtures for the native DenseNet-121 and GoogLeNet (formula weights, see
`zoo_fixtures.py`): what forward hooks return at some module paths, input gradients of
channel means, and the module paths a forward hook fires on.

    nice -n 19 /tmp/torch/bin/python scripts/zoo_fixtures_densenet_googlenet.py   # writes testdata/zoo/

GoogLeNet is built as its pretrained weights use it: `transform_input=True`, no auxiliary heads.
"""
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zoo_fixtures import OUT, formula_case, formula_state_dict  # noqa: E402

CASES = {
    # model: (constructor, input size, modules, gradient cases, formula keys to store)
    "densenet121": (
        lambda: torchvision.models.densenet121(weights=None),
        64,
        ["features.pool0", "features.denseblock1.denselayer3", "features.denseblock2", "features.transition2",
         "features.norm5", "classifier"],
        [("features.denseblock2.denselayer5.relu2", 3), ("features.transition3", 40)],
        ["features.denseblock1.denselayer1.conv1.weight", "classifier.bias"],
    ),
    "googlenet": (
        lambda: torchvision.models.googlenet(
            weights=None, aux_logits=False, transform_input=True, init_weights=False
        ),
        96,
        ["conv2", "inception3a.branch2", "inception3a.branch4.0", "inception4b",
         "inception5b", "fc"],
        [("inception3b.branch3.1.conv", 7), ("inception4e", 100)],
        ["conv1.conv.weight", "fc.bias"],
    ),
}


# Functional `torch.cat` of a dense layer's inputs (no module to hook): what its `norm1` gets,
# added to the fixture after `formula_case` wrote it.
DENSE_CATS = {"densenet121": ["features.denseblock1.denselayer3", "features.denseblock3.denselayer2"]}


def add_dense_cats(name, make, size, layers):
    model = make().eval()
    model.load_state_dict(formula_state_dict(model, 0))
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    got = {}
    hooks = [
        model.get_submodule(f"{m}.norm1").register_forward_pre_hook(
            lambda _m, inp, m=m: got.__setitem__(m, inp[0].clone()))
        for m in layers
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    path = os.path.join(OUT, f"{name}.ref.safetensors")
    ref = load_file(path)
    assert torch.equal(ref["input"], x)
    for m in layers:
        ref[f"act.{m}.cat"] = got[m].contiguous()
    save_file(ref, path)
    meta_path = os.path.join(OUT, f"{name}.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["modules"] += [f"{m}.cat" for m in layers]
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)


def main():
    os.makedirs(OUT, exist_ok=True)
    only = set(sys.argv[1:])
    for name, case in CASES.items():
        if not only or name in only:
            formula_case(name, *case)
            if name in DENSE_CATS:
                make, size = case[0], case[1]
                add_dense_cats(name, make, size, DENSE_CATS[name])


if __name__ == "__main__":
    main()
