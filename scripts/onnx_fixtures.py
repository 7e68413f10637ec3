#!/usr/bin/env python3
"""Make the ONNX test fixtures in testdata/onnx/ and the name-recovery test data in
crates/deepvis-onnx/tests/data/.

Run from the repository root, in a venv that has
`torch torchvision onnx onnxruntime onnxscript safetensors numpy` (PyPI):

    python3 -m venv /tmp/torch
    /tmp/torch/bin/pip install torch torchvision onnx onnxruntime onnxscript safetensors numpy
    /tmp/torch/bin/python scripts/onnx_fixtures.py [--ocr-model PATH]

For each small CNN (random weights, seeded, eval mode) it writes
  NAME.ts.onnx       torch.onnx.export(dynamo=False, opset 13)  (the TorchScript exporter)
  NAME.dynamo.onnx   torch.onnx.export(dynamo=True)             (the torch.export-based exporter)
  NAME.safetensors   `input` (the float32 NCHW input), `act.<module path>` (what a forward hook on
                     that module returns; for a module called more than once, the last call, as a
                     hook sees it), `grad.<module path>.c<C>` = d mean(act[0, C]) / d input
  NAME.json          model, input shape, modules, channels, file names, versions, and for each
                     module the ONNX value names (per exporter) that onnxruntime shows to be
                     numerically equal to the hook output.
For mini_resnet and mobilenet_v3_small it also writes
  crates/deepvis-onnx/tests/data/names_NAME.{ts,dynamo}.json
with every node (name, op_type, inputs, outputs, the dynamo exporter's name-scope metadata) and,
for every module of `named_modules()` (and every call `PATH#k` of a module called more than once),
the ONNX values numerically equal to its hook output.

The real PaddleOCR direction classifier (shipped in the PyPI wheel rapidocr-onnxruntime 1.4.4,
Apache-2.0) is copied in as ppocr_cls.onnx, with onnxruntime outputs of some inner values.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import warnings
from collections import OrderedDict, defaultdict

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock

warnings.filterwarnings("ignore")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "testdata", "onnx")
NAMES_OUT = os.path.join(ROOT, "crates", "deepvis-onnx", "tests", "data")
TS_OPSET = 13

# ---------------------------------------------------------------- models


class MiniResNet(nn.Module):
    """torchvision's ResNet layout and module names (conv1, bn1, relu, maxpool, layerN.i.*,
    downsample, avgpool, fc; BasicBlock from torchvision, whose relu is called twice), with
    narrow widths 16/32/64/128 and blocks [2, 1, 1, 1]."""

    def __init__(self, widths=(16, 32, 64, 128), blocks=(2, 1, 1, 1), num_classes=10):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(widths[0], blocks[0], 1)
        self.layer2 = self._make_layer(widths[1], blocks[1], 2)
        self.layer3 = self._make_layer(widths[2], blocks[2], 2)
        self.layer4 = self._make_layer(widths[3], blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)

    def _make_layer(self, planes, n, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ChannelLayerNorm(nn.Module):
    """ConvNeXt-style LayerNorm over channels: permute -> LayerNorm -> permute."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c, eps=1e-6)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Wide(nn.Module):
    """Small CNN for a non-square 48x192 input exercising LeakyReLU, AvgPool (count_include_pad
    False + ceil_mode, and the default), Sigmoid gating, GELU, nearest Upsample, reflect Pad,
    Concat and a channel LayerNorm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1)
        self.pool1 = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.conv2 = nn.Conv2d(8, 16, 3, 1, 1)
        self.gate = nn.Sigmoid()
        self.pool2 = nn.AvgPool2d(2, 2, 1, ceil_mode=False, count_include_pad=True)
        self.conv3 = nn.Conv2d(16, 16, 3, 1, 1)
        self.gelu = nn.GELU()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.pad = nn.ReflectionPad2d(1)
        self.conv4 = nn.Conv2d(16, 16, 3, 1, 0)
        self.norm = ChannelLayerNorm(32)
        self.head = nn.Conv2d(32, 24, 1)

    def forward(self, x):
        a = self.pool1(self.lrelu(self.stem(x)))  # 8 x 25 x 97 (ceil_mode)
        b = self.conv2(a)
        b = b * self.gate(b)  # 16 x 25 x 97
        c = self.gelu(self.conv3(self.pool2(b)))  # 16 x 13 x 49
        c = self.up(c)[:, :, :25, :97]  # 16 x 25 x 97 (crop the 26 x 98 nearest upsample)
        d = self.conv4(self.pad(c))  # 16 x 25 x 97
        e = self.norm(torch.cat([b, d], 1))  # 32 x 25 x 97
        return self.head(e)


def gray28():
    """MNIST-like CNN as a root nn.Sequential (module paths "0", "1", ...)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3),  # 0: 26x26
        nn.ReLU(),  # 1
        nn.MaxPool2d(2),  # 2: 13x13
        nn.Conv2d(8, 16, 3),  # 3: 11x11
        nn.BatchNorm2d(16),  # 4
        nn.ReLU(),  # 5
        nn.Flatten(),  # 6
        nn.Linear(16 * 11 * 11, 10),  # 7
    )


def randomize_bn(model, gen):
    """Non-trivial running statistics and affine parameters for every BatchNorm."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)


# ---------------------------------------------------------------- hooks and matching


def hook_outputs(model, x):
    """Run the model with a forward hook on every named module. Returns
    (calls: {path: [output tensors, one per call]}, order: [(path, k)] in call order,
     fold: {conv path: bn path} where a BatchNorm2d's input is exactly a Conv2d's output)."""
    calls = defaultdict(list)
    order = []
    produced_by = {}  # id(tensor) -> module path; `keep` holds the tensors so ids stay unique
    keep = []
    fold = {}
    handles = []
    named = dict(model.named_modules())

    def mk(path, mod):
        def hook(m, inp, out):
            if not isinstance(out, torch.Tensor):
                return
            if isinstance(m, nn.BatchNorm2d) and inp and id(inp[0]) in produced_by:
                src = produced_by[id(inp[0])]
                if isinstance(named[src], nn.Conv2d):
                    fold[src] = path
            produced_by.setdefault(id(out), path)
            keep.append(out)
            calls[path].append(out.detach().clone())
            order.append((path, len(calls[path]) - 1))

        return hook

    for path, mod in model.named_modules():
        if path:
            handles.append(mod.register_forward_hook(mk(path, mod)))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return calls, order, fold


def call_keys(calls):
    """{key: tensor} with key PATH for a module called once, PATH#k for each call k (0-based)
    and PATH = the last call for one called more than once."""
    out = OrderedDict()
    for path, ts in calls.items():
        if len(ts) > 1:
            for k, t in enumerate(ts):
                out[f"{path}#{k}"] = t
        out[path] = ts[-1]
    return out


def run_all_values(onnx_path, x):
    """onnxruntime values of every node output (float tensors only), in graph order."""
    model = onnx.load(onnx_path)
    outs = [o.name for o in model.graph.output]
    names = []
    for n in model.graph.node:
        for o in n.output:
            if o and o not in names:
                names.append(o)
    for nm in names:
        if nm not in outs:
            model.graph.output.append(onnx.ValueInfoProto(name=nm))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    req = [o.name for o in sess.get_outputs()]
    vals = sess.run(req, feed)
    res = OrderedDict()
    for nm in names:
        v = vals[req.index(nm)]
        if isinstance(v, np.ndarray) and v.dtype == np.float32:
            res[nm] = v
    return res


def close(a, b):
    if tuple(a.shape) != tuple(b.shape):
        return False
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    return float(np.abs(a - b).max()) <= 2e-4 * scale


def matches_for(keys, values):
    return {
        k: [nm for nm, v in values.items() if close(v, t.numpy())] for k, t in keys.items()
    }


def node_dump(onnx_path):
    g = onnx.load(onnx_path, load_external_data=False).graph
    nodes = []
    for n in g.node:
        md = {p.key: p.value for p in n.metadata_props}
        nodes.append(
            OrderedDict(
                name=n.name,
                op_type=n.op_type,
                inputs=list(n.input),
                outputs=list(n.output),
                name_scopes=md.get("pkg.torch.onnx.name_scopes"),
                class_hierarchy=md.get("pkg.torch.onnx.class_hierarchy"),
            )
        )
    return OrderedDict(
        inputs=[i.name for i in g.input],
        initializers=[i.name for i in g.initializer],
        outputs=[o.name for o in g.output],
        nodes=nodes,
    )


def op_types(onnx_path):
    g = onnx.load(onnx_path, load_external_data=False).graph
    return sorted({n.op_type for n in g.node})


def opset_of(onnx_path):
    m = onnx.load(onnx_path, load_external_data=False)
    return {(o.domain or "ai.onnx"): o.version for o in m.opset_import}


# ---------------------------------------------------------------- export


def export_pair(name, model, x, ts_kwargs=None, dyn_kwargs=None):
    ts_path = os.path.join(OUT, f"{name}.ts.onnx")
    dyn_path = os.path.join(OUT, f"{name}.dynamo.onnx")
    torch.onnx.export(
        model, (x,), ts_path, dynamo=False, opset_version=TS_OPSET,
        input_names=["input"], output_names=["output"], **(ts_kwargs or {}),
    )
    prog = torch.onnx.export(
        model, (x,), dynamo=True, input_names=["input"], output_names=["output"],
        **(dyn_kwargs or {}),
    )
    prog.save(dyn_path)
    return ts_path, dyn_path


def make_fixture(name, model, x, modules, grads, ts_kwargs=None, dyn_kwargs=None,
                 names_json=False, note=""):
    model.eval()
    ts_path, dyn_path = export_pair(name, model, x, ts_kwargs, dyn_kwargs)
    calls, order, fold = hook_outputs(model, x)
    keys = call_keys(calls)

    # activations and gradients
    tensors = OrderedDict(input=x.clone().contiguous())
    for m in modules:
        tensors[f"act.{m}"] = keys[m].contiguous()
    cases = []
    named = dict(model.named_modules())
    for m, c in grads:
        xi = x.clone().requires_grad_(True)
        store = {}
        h = named[m].register_forward_hook(lambda mod, i, o: store.__setitem__("o", o))
        model(xi)
        h.remove()
        obj = store["o"][0, c].mean()
        (g,) = torch.autograd.grad(obj, xi)
        tensors[f"grad.{m}.c{c}"] = g.detach().contiguous()
        cases.append(OrderedDict(key=m, channel=c, objective_value=float(obj)))
    save_file(tensors, os.path.join(OUT, f"{name}.safetensors"))

    # numerical matching of hook outputs with ONNX values
    per_exporter = {}
    for tag, path in (("ts", ts_path), ("dynamo", dyn_path)):
        values = run_all_values(path, x)
        # the whole network: the graph output against the model output
        with torch.no_grad():
            y = model(x).numpy()
        out_name = onnx.load(path, load_external_data=False).graph.output[0].name
        assert close(values[out_name], y), f"{name} {tag}: output differs"
        per_exporter[tag] = (path, matches_for(keys, values))

    info = OrderedDict()
    info["model"] = name
    info["note"] = note
    info["input_shape"] = list(x.shape)
    info["input"] = "torch.manual_seed-ed standard normal, float32 NCHW (the `input` tensor)"
    info["modules"] = modules
    info["act.PATH"] = "output of a forward hook on module PATH (the last call if called more than once)"
    info["grad.PATH.cC"] = "d mean(act[PATH][0, C]) / d input"
    info["cases"] = cases
    info["files"] = OrderedDict(
        ts=os.path.basename(ts_path), dynamo=os.path.basename(dyn_path),
        safetensors=f"{name}.safetensors",
    )
    info["opsets"] = OrderedDict(ts=opset_of(ts_path), dynamo=opset_of(dyn_path))
    info["op_types"] = OrderedDict(ts=op_types(ts_path), dynamo=op_types(dyn_path))
    info["versions"] = OrderedDict(
        torch=torch.__version__, torchvision=torchvision.__version__, onnx=onnx.__version__,
        onnxruntime=ort.__version__,
    )
    info["onnx_values"] = OrderedDict(
        (m, OrderedDict((tag, per_exporter[tag][1][m]) for tag in ("ts", "dynamo")))
        for m in modules
    )
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")

    if names_json:
        for tag, (path, matches) in per_exporter.items():
            d = OrderedDict()
            d["model"] = name
            d["exporter"] = "torchscript" if tag == "ts" else "dynamo"
            d["onnx_file"] = f"testdata/onnx/{os.path.basename(path)}"
            d["about"] = (
                "graph: every node in graph order; name_scopes/class_hierarchy are the dynamo "
                "exporter's metadata_props values (null for the TorchScript exporter). modules: "
                "for every module of named_modules() in hook call order (key PATH, and PATH#k for "
                "each call k, 0-based, of a module called more than once; plain PATH = last "
                "call): `matches` = the ONNX values onnxruntime shows numerically equal to the "
                "forward-hook output; `bn_folded_into` = the BatchNorm2d whose input is exactly "
                "this Conv2d's output (the exporters fold it into the Conv)."
            )
            d["versions"] = info["versions"]
            d["graph"] = node_dump(path)
            mods = OrderedDict()
            seen = set()
            for path_, k in order:
                for key in ([f"{path_}#{k}"] if len(calls[path_]) > 1 else []) + (
                    [path_] if k == len(calls[path_]) - 1 else []
                ):
                    if key in seen:
                        continue
                    seen.add(key)
                    e = OrderedDict(
                        cls=type(named[path_]).__name__,
                        shape=list(keys[key].shape),
                        matches=matches[key],
                    )
                    if path_ in fold:
                        e["bn_folded_into"] = fold[path_]
                    mods[key] = e
            d["modules"] = mods
            os.makedirs(NAMES_OUT, exist_ok=True)
            with open(os.path.join(NAMES_OUT, f"names_{name}.{tag}.json"), "w") as f:
                json.dump(d, f, indent=1)
                f.write("\n")
    print(f"{name}: ts {info['op_types']['ts']}\n  dynamo {info['op_types']['dynamo']}")
    return info


# ---------------------------------------------------------------- the real OCR model


def ocr_fixture(src):
    name = "ppocr_cls"
    dst = os.path.join(OUT, f"{name}.onnx")
    shutil.copyfile(src, dst)
    model = onnx.load(dst)
    g = torch.Generator().manual_seed(1234)
    # like PaddleOCR's classifier preprocessing: (rgb01 - 0.5) / 0.5 -> values in [-1, 1]
    x = (torch.rand(1, 3, 48, 192, generator=g) - 0.5) / 0.5
    values = run_all_values(dst, x)
    wanted = []
    # spread over depth: the first conv block, a hard-swish, an SE multiply, the last Conv, the
    # global pool, and the graph output
    nodes = list(model.graph.node)
    conv_nodes = [n for n in nodes if n.op_type == "Conv"]
    hs = [n for n in nodes if n.op_type == "HardSigmoid"]
    bn = [n for n in nodes if n.op_type == "BatchNormalization"]
    gap = [n for n in nodes if n.op_type == "GlobalAveragePool"]
    picks = [bn[0], hs[len(hs) // 2], conv_nodes[len(conv_nodes) // 2], bn[-1], gap[-1]]
    for n in picks:
        wanted.append(n.output[0])
    out_name = model.graph.output[0].name
    tensors = OrderedDict(input=x.contiguous())
    for w in wanted:
        tensors[f"act.{w}"] = torch.from_numpy(values[w].copy()).contiguous()
    tensors["output"] = torch.from_numpy(values[out_name].copy()).contiguous()
    save_file(tensors, os.path.join(OUT, f"{name}.safetensors"))
    with open(src, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    info = OrderedDict(
        model="PaddleOCR ch_ppocr_mobile_v2.0_cls (text direction classifier, MobileNetV3-small "
        "style, unfused BatchNormalization, HardSigmoid, Clip), trained",
        source="PyPI wheel rapidocr-onnxruntime 1.4.4, file "
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx (Apache-2.0)",
        sha256=sha,
        onnx_file=f"{name}.onnx",
        opsets=opset_of(dst),
        op_types=sorted({n.op_type for n in nodes}),
        input_shape=list(x.shape),
        input="(torch.rand(1,3,48,192, Generator.manual_seed(1234)) - 0.5) / 0.5",
        graph_input=model.graph.input[0].name,
        graph_output=out_name,
        acts=OrderedDict((w, OrderedDict(op_type=n.op_type, node=n.name, shape=list(values[w].shape)))
                         for w, n in zip(wanted, picks)),
        output="onnxruntime output (softmax over the 2 classes 0 / 180 degrees), key `output`",
        versions=OrderedDict(onnx=onnx.__version__, onnxruntime=ort.__version__),
    )
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(f"{name}: {info['op_types']}")


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--ocr-model",
        default="/tmp/ocr/whl/rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        help="ch_ppocr_mobile_v2.0_cls_infer.onnx from the rapidocr-onnxruntime 1.4.4 wheel "
        "(pip download --no-deps rapidocr-onnxruntime==1.4.4; unzip)",
    )
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)

    # a. mini_resnet
    torch.manual_seed(0)
    m = MiniResNet().eval()
    randomize_bn(m, torch.Generator().manual_seed(100))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    make_fixture(
        "mini_resnet", m, x,
        ["relu", "layer1.0.bn1", "layer1.0.relu", "layer2.0", "layer3.0.downsample", "layer4"],
        [("layer2.0", 5), ("layer4", 7)],
        names_json=True,
        note="torchvision ResNet layout with torchvision's BasicBlock, widths 16/32/64/128, "
        "blocks [2,1,1,1], 10 classes, random weights (seed 0), randomized BN statistics",
    )

    # b. mobilenet_v3_small
    torch.manual_seed(0)
    m = torchvision.models.mobilenet_v3_small(num_classes=100).eval()
    randomize_bn(m, torch.Generator().manual_seed(101))
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    make_fixture(
        "mobilenet_v3_small", m, x,
        ["features.0", "features.1.block.1", "features.5", "features.9.block.0.2", "features.12"],
        [("features.5", 3), ("features.12", 100)],
        names_json=True,
        note="torchvision mobilenet_v3_small(num_classes=100), random weights (seed 0), "
        "randomized BN statistics",
    )

    # c. squeezenet1_1
    torch.manual_seed(0)
    m = torchvision.models.squeezenet1_1(num_classes=100).eval()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    make_fixture(
        "squeezenet1_1", m, x,
        ["features.0", "features.1", "features.3", "features.6.expand3x3_activation", "features.12"],
        [("features.3", 10), ("features.12", 50)],
        note="torchvision squeezenet1_1(num_classes=100), random weights (seed 0)",
    )

    # d. gray28 (BatchNormalization kept: TorchScript without constant folding in PRESERVE mode,
    # dynamo without the onnxscript optimizer)
    torch.manual_seed(0)
    m = gray28().eval()
    randomize_bn(m, torch.Generator().manual_seed(102))
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    make_fixture(
        "gray28", m, x, ["0", "1", "4", "5", "7"], [("4", 3), ("7", 2)],
        ts_kwargs=dict(do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE),
        dyn_kwargs=dict(optimize=False),
        note="root nn.Sequential (module paths 0..7) for 1x1x28x28 input, BatchNorm2d kept as a "
        "BatchNormalization node (TorchScript: do_constant_folding=False, "
        "training=PRESERVE; dynamo: optimize=False)",
    )
    # f. gray28 again, with external data
    mm = onnx.load(os.path.join(OUT, "gray28.ts.onnx"))
    ext = os.path.join(OUT, "gray28.ext.onnx")
    if os.path.exists(ext + ".data"):
        os.remove(ext + ".data")
    onnx.save_model(mm, ext, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="gray28.ext.onnx.data", size_threshold=0)
    v1 = run_all_values(os.path.join(OUT, "gray28.ts.onnx"), x)
    v2 = run_all_values(ext, x)
    assert all(np.array_equal(v1[k], v2[k]) for k in v1)

    # e. wide48x192
    torch.manual_seed(0)
    m = Wide().eval()
    x = torch.randn(1, 3, 48, 192, generator=torch.Generator().manual_seed(5))
    make_fixture(
        "wide48x192", m, x, ["lrelu", "pool1", "gelu", "pad", "norm", "head"],
        [("norm", 4), ("head", 11)],
        note="non-square 1x3x48x192 input; LeakyReLU, AvgPool2d(3,2,1,ceil_mode,"
        "count_include_pad=False), x*sigmoid(x), AvgPool2d(2,2,1), GELU (erf), nearest "
        "Upsample x2 + crop (Slice), ReflectionPad2d, Concat, channel LayerNorm "
        "(permute/LayerNorm/permute)",
    )

    # the real trained CNN
    ocr_fixture(args.ocr_model)


if __name__ == "__main__":
    main()
