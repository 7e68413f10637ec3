"""Writes crates/deepvis-models/tests/data/torchvision_layouts.json: every state-dict key and
shape of torchvision's VGG and AlexNet models, the reference our architectures are tested against.
Run in a venv with torchvision: python scripts/torchvision_layouts.py"""
import json, torchvision
out = {}
for name in ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "alexnet"]:
    m = getattr(torchvision.models, name)()
    out[name] = [[k, list(v.shape)] for k, v in m.state_dict().items()]
json.dump(out, open("crates/deepvis-models/tests/data/torchvision_layouts.json", "w"))
