"""Reference fixtures for the native Inception v3 (formula weights, see `zoo_fixtures.py`):
what forward hooks return at some module paths, input gradients of channel means, and the
module paths a forward hook fires on.

    nice -n 19 /tmp/torch/bin/python scripts/zoo_fixtures_inception.py   # writes testdata/zoo/

Inception v3 is built as its pretrained weights use it: `transform_input=True`, no auxiliary
head. The input is 107×107 (the network needs at least 75): small files, yet `Mixed_7b`/`7c`
still see a 2×2 map, so their padded pools and convolutions are exercised.
"""
import json
import os
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zoo_fixtures import OUT, formula_case, formula_state_dict  # noqa: E402

NAME = "inception_v3"
SIZE = 107


def make():
    return torchvision.models.inception_v3(
        weights=None, aux_logits=False, transform_input=True, init_weights=False
    )


MODULES = ["Conv2d_3b_1x1", "Mixed_5b.branch_pool", "Mixed_6a", "Mixed_6e.branch7x7dbl_5",
           "Mixed_7c", "fc"]
CASES = [("Mixed_6b.branch7x7_2.conv", 5), ("Mixed_7b", 1000)]
KEYS = ["Conv2d_1a_3x3.conv.weight", "fc.bias"]

# The functional `F.avg_pool2d` of a block's pool branch (no module to hook): what its
# `branch_pool` BasicConv2d gets, stored as `act.BLOCK.branch_pool_avg`.
AVG_POOLS = ["Mixed_7c"]


def add_avg_pools():
    model = make().eval()
    model.load_state_dict(formula_state_dict(model, 0))
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    got = {}
    hooks = [
        model.get_submodule(f"{m}.branch_pool").register_forward_pre_hook(
            lambda _m, inp, m=m: got.__setitem__(m, inp[0].clone()))
        for m in AVG_POOLS
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    path = os.path.join(OUT, f"{NAME}.ref.safetensors")
    ref = load_file(path)
    assert torch.equal(ref["input"], x)
    for m in AVG_POOLS:
        ref[f"act.{m}.branch_pool_avg"] = got[m].contiguous()
    save_file(ref, path)
    meta_path = os.path.join(OUT, f"{NAME}.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["modules"] += [f"{m}.branch_pool_avg" for m in AVG_POOLS]
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)


def main():
    os.makedirs(OUT, exist_ok=True)
    formula_case(NAME, make, SIZE, MODULES, CASES, KEYS)
    add_avg_pools()


if __name__ == "__main__":
    main()
