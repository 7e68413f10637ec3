"""Makes the ONNX fixtures of deepvis-onnx's tests with the reference `onnx` package.

    python3 -m venv /tmp/onnxvenv && /tmp/onnxvenv/bin/pip install onnx numpy
    /tmp/onnxvenv/bin/python crates/deepvis-onnx/tests/data/make_fixtures.py

Used: onnx 1.23.2, numpy 2.x. Deterministic: rerunning gives byte-identical files. The tests
only read the outputs; Python is not needed to run them.

* `types.onnx` (+ `types.onnx.data`): initializers of many element types written both by
  `numpy_helper.from_array` (raw_data) and by `helper.make_tensor(..., raw=False)` (typed
  fields: int32_data for f16/bf16/int8/uint8/bool/int16/uint16, uint64_data for uint32),
  one initializer also listed as a graph input, a symbolic and a fixed dim, node
  metadata_props, attributes of every scalar and list kind, a Constant node, and two
  initializers stored as external data. `types.expected.json` lists each initializer's dims
  and values as onnx's numpy_helper.to_array decodes them.
* `eval_opsetN.onnx`: independent single-node cases for the constant folder. Every node's
  inputs are initializers; the output `Y` of each node is stored as the initializer
  `expected:Y`, computed by onnx.reference.ReferenceEvaluator.
"""

import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

HERE = os.path.dirname(os.path.abspath(__file__))


def types_model():
    rng = np.random.default_rng(7)
    f32 = rng.standard_normal((2, 3)).astype(np.float32)
    inits = []
    expected = {}

    def add(t, values):
        inits.append(t)
        expected[t.name] = {"dims": list(t.dims), "values": [float(v) for v in np.asarray(values).reshape(-1)]}

    add(numpy_helper.from_array(f32, "f32_raw"), f32)
    add(helper.make_tensor("f32_typed", TensorProto.FLOAT, [2, 3], f32.reshape(-1).tolist()), f32)
    f16 = rng.standard_normal(5).astype(np.float16)
    add(numpy_helper.from_array(f16, "f16_raw"), f16)
    add(helper.make_tensor("f16_typed", TensorProto.FLOAT16, [5], f16.tolist()), f16)
    bf = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    t = helper.make_tensor("bf16_typed", TensorProto.BFLOAT16, [4], bf.tolist())
    add(t, numpy_helper.to_array(t).astype(np.float32))
    f64 = rng.standard_normal(3)
    add(numpy_helper.from_array(f64, "f64_raw"), f64)
    add(helper.make_tensor("f64_typed", TensorProto.DOUBLE, [3], f64.tolist()), f64)
    i64 = np.array([[-(2**40), 0, 7]], dtype=np.int64)
    add(numpy_helper.from_array(i64, "i64_raw"), i64)
    add(helper.make_tensor("i64_typed", TensorProto.INT64, [1, 3], i64.reshape(-1).tolist()), i64)
    i32 = np.array([-5, 2**31 - 1], dtype=np.int32)
    add(numpy_helper.from_array(i32, "i32_raw"), i32)
    add(helper.make_tensor("i32_typed", TensorProto.INT32, [2], i32.tolist()), i32)
    for name, dtype, onnx_type, vals in [
        ("i8", np.int8, TensorProto.INT8, [-128, -1, 127]),
        ("u8", np.uint8, TensorProto.UINT8, [0, 200, 255]),
        ("i16", np.int16, TensorProto.INT16, [-32768, 5]),
        ("u16", np.uint16, TensorProto.UINT16, [65535, 1]),
        ("bool", np.bool_, TensorProto.BOOL, [True, False, True]),
        ("u32", np.uint32, TensorProto.UINT32, [4000000000, 3]),
    ]:
        a = np.array(vals, dtype=dtype)
        add(numpy_helper.from_array(a, name + "_raw"), a)
        add(helper.make_tensor(name + "_typed", onnx_type, [len(vals)], a.tolist()), a)
    scalar = numpy_helper.from_array(np.array(2.5, dtype=np.float32), "scalar")
    add(scalar, [2.5])
    empty = numpy_helper.from_array(np.zeros((0, 4), dtype=np.float32), "empty")
    add(empty, [])
    big = rng.standard_normal((4, 8)).astype(np.float32)
    add(numpy_helper.from_array(big, "ext_a"), big)
    ext_b = np.arange(10, dtype=np.int64)
    add(numpy_helper.from_array(ext_b, "ext_b"), ext_b)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, None])
    # Old exporters list weights among the graph inputs too.
    w_in = helper.make_tensor_value_info("f32_raw", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    const = helper.make_node(
        "Constant", [], ["c"], name="const0",
        value=numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64)),
    )
    const_f = helper.make_node("Constant", [], ["cf"], value_floats=[0.5, -1.0])
    node = helper.make_node(
        "Custom", ["x", "", "f32_raw"], ["y"], name="custom0", domain="test.domain",
        i=3, f=0.25, s="hello", ints=[1, -2, 3], floats=[1.5, 2.5], strings=["a", "bc"],
        t=numpy_helper.from_array(np.array([4.0, 5.0], dtype=np.float32), "attr_t"),
    )
    entry = node.metadata_props.add()
    entry.key = "pkg.torch.onnx.name_scopes"
    entry.value = "['', 'layer1', 'layer1.0']"
    graph = helper.make_graph([const, const_f, node], "types", [x, w_in], [y], initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("test.domain", 1)],
        producer_name="make_fixtures.py",
    )
    meta = model.metadata_props.add()
    meta.key, meta.value = "purpose", "deepvis-onnx test"
    from onnx.external_data_helper import set_external_data
    data = b""
    for t in model.graph.initializer:
        if t.name in ("ext_a", "ext_b"):
            offset = (len(data) + 63) // 64 * 64
            data = data.ljust(offset, b"\0") + t.raw_data
            set_external_data(t, location="types.onnx.data", offset=offset, length=len(t.raw_data))
            t.ClearField("raw_data")
    with open(os.path.join(HERE, "types.onnx.data"), "wb") as f:
        f.write(data)
    with open(os.path.join(HERE, "types.onnx"), "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    with open(os.path.join(HERE, "types.expected.json"), "w") as f:
        json.dump(expected, f, indent=0, sort_keys=True)
        f.write("\n")


def arr(name, values, dtype):
    return numpy_helper.from_array(np.array(values, dtype=dtype), name)


def eval_model(opset, cases):
    """cases: (op, inputs as [(values, dtype) | None], attrs)"""
    nodes, inits, feeds = [], [], {}
    for k, (op, inputs, attrs) in enumerate(cases):
        names = []
        for j, spec in enumerate(inputs):
            if spec is None:
                names.append("")
                continue
            name = f"n{k}_in{j}"
            t = arr(name, *spec)
            inits.append(t)
            names.append(name)
        nodes.append(helper.make_node(op, names, [f"n{k}_out"], name=f"case{k}_{op}", **attrs))
    outputs = [helper.make_tensor_value_info(n.output[0], TensorProto.UNDEFINED, None) for n in nodes]
    graph = helper.make_graph(nodes, f"eval{opset}", [], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    results = ReferenceEvaluator(model).run(None, {})
    for n, r in zip(nodes, results):
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(r), "expected:" + n.output[0]))
    with open(os.path.join(HERE, f"eval_opset{opset}.onnx"), "wb") as f:
        f.write(model.SerializeToString(deterministic=True))


I64, F32, I32, B = np.int64, np.float32, np.int32, np.bool_
BIG = 2**63 - 1


def main():
    types_model()
    eval_model(13, [
        ("Gather", [([10, 20, 30, 40], I64), ([-1, 0], I64)], {}),
        ("Gather", [([[1, 2, 3], [4, 5, 6]], F32), ([[2, 0], [1, 1]], I64)], {"axis": 1}),
        ("Gather", [([[1, 2, 3], [4, 5, 6]], I64), (1, I64)], {"axis": 0}),
        ("Concat", [([1, 2], I64), ([3], I64), ([], I64)], {"axis": 0}),
        ("Concat", [([[1], [2]], F32), ([[3, 4], [5, 6]], F32)], {"axis": -1}),
        ("Reshape", [(np.arange(24).reshape(2, 3, 4), F32), ([0, -1, 2], I64)], {}),
        ("Range", [(10, I64), (4, I64), (-3, I64)], {}),
        ("Range", [(0.5, F32), (3.0, F32), (0.7, F32)], {}),
        ("Range", [(0, I32), (5, I32), (2, I32)], {}),
        ("ConstantOfShape", [([2, 3], I64)], {"value": arr("v", [7], I64)}),
        ("ConstantOfShape", [([3], I64)], {}),
        ("Cast", [([-2.7, 2.7, 0.5, 1e10], F32)], {"to": TensorProto.INT64}),
        ("Cast", [([-2.7, 0.0, 0.1], F32)], {"to": TensorProto.BOOL}),
        ("Cast", [([0.1, 1.0 / 3.0, 65519.0], F32)], {"to": TensorProto.FLOAT16}),
        ("Cast", [([3, -4], I64)], {"to": TensorProto.FLOAT}),
        ("Cast", [([300, -1], I64)], {"to": TensorProto.UINT8}),
        ("Unsqueeze", [([1, 2, 3], I64), ([0, -1], I64)], {}),
        ("Squeeze", [(np.zeros((1, 3, 1)), F32), ([-1], I64)], {}),
        ("Squeeze", [(np.zeros((1, 3, 1)), F32)], {}),
        ("Slice", [(np.arange(10), I64), ([-1], I64), ([-BIG - 1], I64), None, ([-2], I64)], {}),
        ("Slice", [(np.arange(24).reshape(4, 6), F32), ([1, 8], I64), ([BIG, -10], I64), ([0, -1], I64), ([2, -3], I64)], {}),
        ("Slice", [(np.arange(10), I64), ([2], I64), ([-3], I64)], {}),
        ("Slice", [(np.arange(5), I64), ([3], I64), ([1], I64)], {}),
        ("Add", [([[1], [2]], I64), ([10, 20, 30], I64)], {}),
        ("Sub", [([1.5, 2.5], F32), (0.5, F32)], {}),
        ("Mul", [([3, -4], I64), ([[2], [-1]], I64)], {}),
        ("Div", [([-7, 7, -7, 6], I64), ([2, -2, -2, 3], I64)], {}),
        ("Div", [([1.0, -3.0], F32), ([4.0, 7.0], F32)], {}),
        ("Mod", [([-7, 7, 5], I64), ([3, -3, 5], I64)], {}),
        ("Pow", [([2.0, 3.0], F32), ([3.0, 0.5], F32)], {}),
        ("Equal", [([1, 2, 3], I64), ([[1], [3]], I64)], {}),
        ("Less", [([1.0, 2.0, 3.0], F32), (2.0, F32)], {}),
        ("Where", [([[True], [False]], B), ([1, 2, 3], I64), (-1, I64)], {}),
        ("Expand", [([[1], [2]], I64), ([2, 1, 3], I64)], {}),
        ("Identity", [([5, 6], I64)], {}),
        ("Floor", [([-1.5, 1.5], F32)], {}),
        ("Ceil", [([-1.5, 1.5], F32)], {}),
        ("Max", [([1, 5], I64), ([3, 2], I64), (4, I64)], {}),
        ("Min", [([1.0, 5.0], F32), ([[3.0], [0.0]], F32)], {}),
        ("Neg", [([1, -2], I64)], {}),
        ("Sqrt", [([4.0, 2.0], F32)], {}),
        ("ReduceProd", [(np.arange(1, 7).reshape(2, 3), I64)], {"axes": [1], "keepdims": 0}),
        ("ReduceProd", [(np.arange(1, 7).reshape(2, 3), F32)], {}),
        ("ReduceSum", [(np.arange(6).reshape(2, 3), I64), ([0], I64)], {}),
        ("ReduceMean", [(np.arange(6).reshape(2, 3), F32)], {"axes": [-1]}),
        ("Transpose", [(np.arange(6).reshape(1, 2, 3), I64)], {"perm": [2, 0, 1]}),
        ("Tile", [([[1, 2]], I64), ([2, 2], I64)], {}),
        ("Flatten", [(np.zeros((2, 3, 4)), F32)], {"axis": 2}),
        ("Shape", [(np.zeros((2, 3, 4)), F32)], {}),
        ("Size", [(np.zeros((2, 3, 4)), F32)], {}),
        ("Not", [([True, False], B)], {}),
        ("Greater", [([1, 5], I32), ([3, 3], I32)], {}),
    ])
    eval_model(11, [
        ("Squeeze", [(np.zeros((1, 3, 1)), F32)], {"axes": [0]}),
        ("Unsqueeze", [([1, 2], I64)], {"axes": [1]}),
        ("Slice", [(np.arange(10), I64), ([8], I64), ([1], I64), ([0], I64), ([-3], I64)], {}),
        ("ReduceSum", [(np.arange(6).reshape(2, 3), I64)], {"axes": [0], "keepdims": 0}),
        ("Reshape", [(np.arange(6).reshape(2, 3), I64), ([-1, 0], I64)], {}),
    ])
    eval_model(9, [
        ("Slice", [(np.arange(24).reshape(4, 6), F32)], {"starts": [1, -4], "ends": [1000, -1], "axes": [0, 1]}),
        ("Unsqueeze", [([1, 2], I64)], {"axes": [0]}),
    ])
    eval_model(18, [
        ("Shape", [(np.zeros((2, 3, 4, 5)), F32)], {"start": 1, "end": -1}),
        ("Shape", [(np.zeros((2, 3, 4, 5)), F32)], {"start": -10}),
        ("Reshape", [(np.zeros((0, 3)), F32), ([3, 0], I64)], {"allowzero": 1}),
        ("ReduceProd", [(np.arange(1, 7).reshape(2, 3), I64), ([0], I64)], {}),
        ("ReduceMax", [(np.arange(6).reshape(2, 3), F32)], {"noop_with_empty_axes": 1}),
        ("ReduceMin", [(np.arange(6).reshape(2, 3), I64), ([-1], I64)], {"keepdims": 0}),
    ])


if __name__ == "__main__":
    main()
