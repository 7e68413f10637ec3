//! The constant folder on hand-built nodes: a typical exporter flatten chain, opset
//! differences, and its refusals.

mod common;

use std::collections::HashMap;

use deepvis_onnx::{
    eval_constant, eval_shape, shape_of, AttrValue, Attribute, OnnxError, OnnxNode, TensorData,
    Values,
};

fn node(op: &str, inputs: &[&str], attrs: Vec<(&str, AttrValue)>) -> OnnxNode {
    OnnxNode {
        name: format!("{op}_0"),
        op_type: op.into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![format!("{op}_out")],
        attributes: attrs
            .into_iter()
            .map(|(name, value)| Attribute {
                name: name.into(),
                value,
            })
            .collect(),
        ..Default::default()
    }
}

fn run(n: &OnnxNode, opset: i64, inputs: &[&TensorData]) -> Result<TensorData, OnnxError> {
    let inputs: Vec<Option<&TensorData>> = inputs.iter().map(|t| Some(*t)).collect();
    eval_constant(n, opset, &inputs).map(|mut v| v.remove(0))
}

fn i64s(t: &TensorData) -> (Vec<usize>, Vec<i64>) {
    (t.dims.clone(), t.as_i64().unwrap())
}

/// `x.view(x.size(0), -1)` as the TorchScript exporter writes it: Shape → Gather(0) →
/// Unsqueeze → Concat with [-1] → Reshape.
#[test]
fn flatten_chain_folds_for_a_fixed_input_shape() {
    let x_dims = [2usize, 8, 3, 3];
    let x = TensorData::f32(x_dims.to_vec(), (0..144).map(|i| i as f32).collect()).unwrap();
    let mut values: HashMap<&str, TensorData> = HashMap::new();
    values.insert("zero", TensorData::scalar_i64(0));
    values.insert("minus1", TensorData::vec_i64(vec![-1]));
    values.insert("axes0", TensorData::vec_i64(vec![0]));

    let shape = node("Shape", &["x"], vec![]);
    values.insert("shape", eval_shape(&shape, 13, &x_dims).unwrap());
    let gather = node(
        "Gather",
        &["shape", "zero"],
        vec![("axis", AttrValue::Int(0))],
    );
    values.insert(
        "batch",
        run(&gather, 13, &[&values["shape"], &values["zero"]]).unwrap(),
    );
    assert_eq!(i64s(&values["batch"]), (vec![], vec![2]));
    let unsq = node("Unsqueeze", &["batch", "axes0"], vec![]);
    values.insert(
        "batch1",
        run(&unsq, 13, &[&values["batch"], &values["axes0"]]).unwrap(),
    );
    assert_eq!(i64s(&values["batch1"]), (vec![1], vec![2]));
    let concat = node(
        "Concat",
        &["batch1", "minus1"],
        vec![("axis", AttrValue::Int(0))],
    );
    values.insert(
        "target",
        run(&concat, 13, &[&values["batch1"], &values["minus1"]]).unwrap(),
    );
    assert_eq!(i64s(&values["target"]), (vec![2], vec![2, -1]));
    let reshape = node("Reshape", &["x", "target"], vec![]);
    let y = run(&reshape, 13, &[&x, &values["target"]]).unwrap();
    assert_eq!(y.dims, vec![2, 72]);
    assert_eq!(y.values, x.values);
}

#[test]
fn shape_of_takes_start_and_end_like_shape_15() {
    let dims = [2, 3, 4, 5];
    assert_eq!(
        shape_of(&dims, None, None).as_i64().unwrap(),
        vec![2, 3, 4, 5]
    );
    assert_eq!(shape_of(&dims, Some(-1), None).as_i64().unwrap(), vec![5]);
    assert_eq!(
        shape_of(&dims, Some(1), Some(-1)).as_i64().unwrap(),
        vec![3, 4]
    );
    assert_eq!(
        shape_of(&dims, Some(3), Some(1)).as_i64().unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(
        shape_of(&dims, Some(-100), Some(100)).as_i64().unwrap(),
        vec![2, 3, 4, 5]
    );
    // Before opset 15 the attributes do not exist and are not read.
    let n = node("Shape", &["x"], vec![("start", AttrValue::Int(2))]);
    assert_eq!(eval_shape(&n, 13, &dims).unwrap().numel(), 4);
    assert_eq!(
        eval_shape(&n, 15, &dims).unwrap().as_i64().unwrap(),
        vec![4, 5]
    );
}

#[test]
fn slice_with_negative_steps_and_clamping() {
    let data = TensorData::i64(vec![10], (0..10).collect()).unwrap();
    let n = node("Slice", &["d", "s", "e", "a", "k"], vec![]);
    let t = |v: Vec<i64>| TensorData::vec_i64(v);
    let slice = |s, e, k| {
        run(
            &n,
            13,
            &[&data, &t(vec![s]), &t(vec![e]), &t(vec![0]), &t(vec![k])],
        )
        .unwrap()
        .as_i64()
        .unwrap()
    };
    assert_eq!(
        slice(-1, i64::MIN, -1),
        vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        "full reverse"
    );
    assert_eq!(slice(8, 1, -3), vec![8, 5, 2]);
    assert_eq!(
        slice(100, -100, -4),
        vec![9, 5, 1],
        "start clamps to dim - 1"
    );
    assert_eq!(slice(2, 2, -1), Vec::<i64>::new());
    assert_eq!(slice(1, 5, -1), Vec::<i64>::new());
    assert_eq!(slice(-3, i64::MAX, 1), vec![7, 8, 9]);
    let err = run(
        &n,
        13,
        &[&data, &t(vec![0]), &t(vec![1]), &t(vec![0]), &t(vec![0])],
    )
    .unwrap_err();
    assert!(common::one_line(&err).contains("step of 0"), "{err}");
}

#[test]
fn range_and_constant_of_shape() {
    let n = node("Range", &["s", "l", "d"], vec![]);
    let s = |v: i64| TensorData::scalar_i64(v);
    assert_eq!(
        run(&n, 11, &[&s(0), &s(5), &s(2)])
            .unwrap()
            .as_i64()
            .unwrap(),
        vec![0, 2, 4]
    );
    assert_eq!(
        run(&n, 11, &[&s(5), &s(0), &s(-2)])
            .unwrap()
            .as_i64()
            .unwrap(),
        vec![5, 3, 1]
    );
    assert_eq!(run(&n, 11, &[&s(5), &s(0), &s(2)]).unwrap().numel(), 0);
    // A hostile range is refused instead of allocating 2^62 elements.
    let err = run(&n, 11, &[&s(0), &s(i64::MAX), &s(2)]).unwrap_err();
    assert!(
        common::one_line(&err).contains("too large to fold"),
        "{err}"
    );

    let value = TensorData::i64(vec![1], vec![7]).unwrap();
    let n = node(
        "ConstantOfShape",
        &["shape"],
        vec![("value", AttrValue::Tensor(value))],
    );
    let t = run(&n, 11, &[&TensorData::vec_i64(vec![2, 0, 3])]).unwrap();
    assert_eq!(i64s(&t), (vec![2, 0, 3], vec![]));
    let t = run(&n, 11, &[&TensorData::vec_i64(vec![2, 2])]).unwrap();
    assert_eq!(i64s(&t), (vec![2, 2], vec![7; 4]));
    let n = node("ConstantOfShape", &["shape"], vec![]);
    let t = run(&n, 11, &[&TensorData::vec_i64(vec![3])]).unwrap();
    assert_eq!(t.values, Values::F32(vec![0.0; 3]));
    let err = run(&n, 11, &[&TensorData::vec_i64(vec![1 << 40, 1 << 40])]).unwrap_err();
    assert!(
        common::one_line(&err).contains("too large to fold"),
        "{err}"
    );
}

#[test]
fn squeeze_axes_moved_from_attribute_to_input_at_opset_13() {
    let x = TensorData::f32(vec![1, 3, 1], vec![1.0, 2.0, 3.0]).unwrap();
    let v11 = node("Squeeze", &["x"], vec![("axes", AttrValue::Ints(vec![0]))]);
    assert_eq!(run(&v11, 11, &[&x]).unwrap().dims, vec![3, 1]);
    let v13 = node("Squeeze", &["x", "axes"], vec![]);
    assert_eq!(
        run(&v13, 13, &[&x, &TensorData::vec_i64(vec![-1])])
            .unwrap()
            .dims,
        vec![1, 3]
    );
    assert_eq!(
        run(&node("Squeeze", &["x"], vec![]), 13, &[&x])
            .unwrap()
            .dims,
        vec![3]
    );
    let err = run(&v13, 13, &[&x, &TensorData::vec_i64(vec![1])]).unwrap_err();
    assert!(
        common::one_line(&err).contains("cannot squeeze axis 1 of size 3"),
        "{err}"
    );

    // The lowering reads either form with one call.
    let consts: HashMap<String, TensorData> =
        [("axes".to_string(), TensorData::vec_i64(vec![2]))].into();
    let lookup = |name: &str| consts.get(name);
    assert_eq!(
        v11.ints_input_or_attr(1, "axes", &lookup).unwrap(),
        Some(vec![0])
    );
    assert_eq!(
        v13.ints_input_or_attr(1, "axes", &lookup).unwrap(),
        Some(vec![2])
    );
}

#[test]
fn unknown_ops_and_domains_are_unsupported() {
    let x = TensorData::vec_i64(vec![1, 2]);
    let err = run(&node("NonZero", &["x"], vec![]), 13, &[&x]).unwrap_err();
    assert!(matches!(err, OnnxError::Unsupported { .. }));
    assert_eq!(
        common::one_line(&err),
        "cannot evaluate NonZero (node 'NonZero_0', opset 13) on constants: the constant folder \
         does not implement it; simplify the model first (e.g. onnxsim) or export it with a fixed \
         input shape"
    );
    let mut n = node("Add", &["x", "x"], vec![]);
    n.domain = "com.microsoft".into();
    assert!(matches!(
        run(&n, 13, &[&x, &x]),
        Err(OnnxError::Unsupported { .. })
    ));
}

#[test]
fn malformed_inputs_are_errors_not_panics() {
    let x = TensorData::vec_i64(vec![1, 2, 3]);
    let idx = TensorData::vec_i64(vec![3]);
    let err = run(&node("Gather", &["x", "i"], vec![]), 13, &[&x, &idx]).unwrap_err();
    assert!(
        common::one_line(&err).contains("index 3 is out of range for axis 0 of size 3"),
        "{err}"
    );
    let err = run(
        &node("Div", &["x", "z"], vec![]),
        13,
        &[&x, &TensorData::scalar_i64(0)],
    )
    .unwrap_err();
    assert!(common::one_line(&err).contains("divides by zero"), "{err}");
    let err = run(
        &node("Add", &["x", "y"], vec![]),
        13,
        &[&x, &TensorData::vec_i64(vec![1, 2])],
    )
    .unwrap_err();
    assert!(common::one_line(&err).contains("do not broadcast"), "{err}");
    let err = run(
        &node("Reshape", &["x", "s"], vec![]),
        13,
        &[&x, &TensorData::vec_i64(vec![2, -1])],
    )
    .unwrap_err();
    assert!(
        common::one_line(&err).contains("cannot infer the -1"),
        "{err}"
    );
    let err = run(
        &node("Reshape", &["x", "s"], vec![]),
        13,
        &[&x, &TensorData::vec_i64(vec![-1, -1])],
    )
    .unwrap_err();
    assert!(
        common::one_line(&err).contains("not a valid target shape"),
        "{err}"
    );
    let err = run(&node("Concat", &["x"], vec![]), 13, &[&x]).unwrap_err();
    assert!(
        common::one_line(&err).contains("attribute 'axis' is required but missing"),
        "{err}"
    );
    let f = TensorData::f32(vec![2], vec![1.0, 2.0]).unwrap();
    let err = run(&node("Add", &["x", "f"], vec![]), 13, &[&x, &f]).unwrap_err();
    assert!(
        common::one_line(&err).contains("inputs are INT64 and FLOAT"),
        "{err}"
    );
    let n = node("Add", &["x", "f"], vec![]);
    let err = eval_constant(&n, 13, &[Some(&x)]).unwrap_err();
    assert!(
        common::one_line(&err).contains("input 1 is missing"),
        "{err}"
    );
}

#[test]
fn wrapped_value_errors_give_one_fix() {
    let x = TensorData::vec_i64(vec![1, 2, 3]);
    let f = TensorData::f32(vec![1], vec![0.0]).unwrap();
    let err = run(&node("Gather", &["x", "f"], vec![]), 13, &[&x, &f]).unwrap_err();
    assert_eq!(
        common::one_line(&err),
        "node 'Gather_0' (Gather): input 1: expected an integer tensor, found FLOAT; the model is \
         malformed: re-export it"
    );
}

#[test]
fn split_has_several_outputs() {
    let x = TensorData::i64(vec![2, 5], (0..10).collect()).unwrap();
    let mut n = node("Split", &["x", "s"], vec![("axis", AttrValue::Int(1))]);
    let parts = eval_constant(&n, 13, &[Some(&x), Some(&TensorData::vec_i64(vec![2, 3]))]).unwrap();
    assert_eq!(i64s(&parts[0]), (vec![2, 2], vec![0, 1, 5, 6]));
    assert_eq!(i64s(&parts[1]), (vec![2, 3], vec![2, 3, 4, 7, 8, 9]));
    // Equal parts, one per output, the last one smaller (opset 18 rule).
    n.outputs = vec!["a".into(), "b".into(), "c".into()];
    let parts = eval_constant(&n, 18, &[Some(&x)]).unwrap();
    let widths: Vec<usize> = parts.iter().map(|p| p.dims[1]).collect();
    assert_eq!(widths, vec![2, 2, 1]);
    let bad = eval_constant(&n, 13, &[Some(&x), Some(&TensorData::vec_i64(vec![2, 2]))]);
    assert!(common::one_line(&bad.unwrap_err()).contains("do not add up to 5"));
}
