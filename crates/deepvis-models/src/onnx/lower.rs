//! The op table: ONNX `op_type` → the engine op(s) that compute it, the same ops the native
//! architectures build. Each entry reads its attributes (in whichever opset form they come)
//! and its constant inputs, and pushes engine nodes; shape arithmetic on constants is folded
//! by the reader's evaluator instead.

use super::{Lowering, Value};
use deepvis_engine::{
    AdaptiveAvgPool2d, Add, AvgPool2d, Binary, BinaryConst, BinaryKind, ChannelAffine, Concat,
    Conv2d, ConvTranspose2d, CoordMode, Flatten, Identity, LayerNorm, Linear, MatMulConst,
    MaxPool2d, NearestMode, NodeId, PRelu, Pad, PadMode, Padding, ReduceMean, Relu, Relu6, Reshape,
    ReshapeDim, Resize, ResizeMode, ResizeTo, Slice, SliceAxis, Softmax, Tensor, Transpose, Unary,
    UnaryKind,
};
use deepvis_onnx::{eval_constant, eval_shape, OnnxNode, TensorData};

type Lowered = Result<Vec<NodeId>, String>;

/// One entry of the table: lowers a node whose non-constant inputs are engine nodes.
type LowerFn = fn(&mut Lowering, &OnnxNode, &[Option<NodeId>]) -> Lowered;

/// Every ONNX op the engine computes, and how. An op outside this table is one error naming
/// the op, the node and the opset.
const TABLE: &[(&str, LowerFn)] = &[
    ("Conv", conv),
    ("ConvTranspose", conv_transpose),
    ("BatchNormalization", batch_norm),
    ("Relu", |lw, n, x| single(lw, n, x, Relu)),
    ("Clip", clip),
    ("LeakyRelu", |lw, n, x| {
        let alpha = n.attr_float_or("alpha", 0.01).map_err(err)?;
        single(lw, n, x, Unary(UnaryKind::LeakyRelu { alpha }))
    }),
    ("Sigmoid", |lw, n, x| unary(lw, n, x, UnaryKind::Sigmoid)),
    ("Tanh", |lw, n, x| unary(lw, n, x, UnaryKind::Tanh)),
    ("HardSigmoid", |lw, n, x| {
        // ONNX's defaults (0.2, 0.5) are not PyTorch's (1/6, 0.5): read what the node says.
        let alpha = n.attr_float_or("alpha", 0.2).map_err(err)?;
        let beta = n.attr_float_or("beta", 0.5).map_err(err)?;
        unary(lw, n, x, UnaryKind::HardSigmoid { alpha, beta })
    }),
    ("HardSwish", |lw, n, x| {
        unary(lw, n, x, UnaryKind::HardSwish)
    }),
    ("Erf", |lw, n, x| unary(lw, n, x, UnaryKind::Erf)),
    ("Gelu", |lw, n, x| {
        let kind = match n
            .attr_string_or("approximate", "none")
            .map_err(err)?
            .as_str()
        {
            "tanh" => UnaryKind::GeluTanh,
            _ => UnaryKind::Gelu,
        };
        unary(lw, n, x, kind)
    }),
    ("Sqrt", |lw, n, x| unary(lw, n, x, UnaryKind::Sqrt)),
    ("Exp", |lw, n, x| unary(lw, n, x, UnaryKind::Exp)),
    ("Neg", |lw, n, x| unary(lw, n, x, UnaryKind::Neg)),
    ("Abs", |lw, n, x| unary(lw, n, x, UnaryKind::Abs)),
    ("Softplus", |lw, n, x| unary(lw, n, x, UnaryKind::Softplus)),
    ("Reciprocal", |lw, n, x| {
        unary(lw, n, x, UnaryKind::Reciprocal)
    }),
    ("Elu", |lw, n, x| {
        let alpha = n.attr_float_or("alpha", 1.0).map_err(err)?;
        unary(lw, n, x, UnaryKind::Elu { alpha })
    }),
    ("PRelu", prelu),
    ("Add", |lw, n, x| binary(lw, n, x, BinaryKind::Add)),
    ("Sub", |lw, n, x| binary(lw, n, x, BinaryKind::Sub)),
    ("Mul", |lw, n, x| binary(lw, n, x, BinaryKind::Mul)),
    ("Div", |lw, n, x| binary(lw, n, x, BinaryKind::Div)),
    ("Pow", |lw, n, x| binary(lw, n, x, BinaryKind::Pow)),
    ("Sum", sum),
    ("Concat", concat),
    ("Split", split),
    ("Slice", slice),
    ("Reshape", reshape),
    ("Flatten", flatten),
    ("Squeeze", squeeze_unsqueeze),
    ("Unsqueeze", squeeze_unsqueeze),
    ("Transpose", transpose),
    ("MaxPool", max_pool),
    ("AveragePool", avg_pool),
    ("GlobalAveragePool", |lw, n, x| {
        single(lw, n, x, AdaptiveAvgPool2d { output: (1, 1) })
    }),
    ("ReduceMean", reduce_mean),
    ("Gemm", gemm),
    ("MatMul", matmul),
    ("Pad", pad),
    ("Resize", resize),
    ("Upsample", resize),
    ("Identity", |lw, n, x| single(lw, n, x, Identity)),
    ("Dropout", |lw, n, x| single(lw, n, x, Identity)),
    ("Cast", cast),
    ("Softmax", softmax),
    ("LayerNormalization", layer_norm),
];

/// Lowers one node: folded when all its inputs are constants, pushed as engine nodes
/// otherwise; where neither works its outputs become unavailable with the reason.
pub(crate) fn lower_node(lw: &mut Lowering, node: &OnnxNode) {
    let mut ins: Vec<Option<&Value>> = Vec::with_capacity(node.inputs.len());
    for name in &node.inputs {
        ins.push(if name.is_empty() {
            None
        } else {
            lw.values.get(name)
        });
    }
    // A value nobody produced: the graph is malformed or reads a value we never saw.
    if let Some(name) = node
        .inputs
        .iter()
        .zip(&ins)
        .find(|(n, v)| !n.is_empty() && v.is_none())
        .map(|(n, _)| n)
    {
        return unavailable(lw, node, format!("input '{name}' is produced by no node"));
    }
    if let Some(Some(Value::Unavailable(why))) = ins
        .iter()
        .find(|v| matches!(v, Some(Value::Unavailable(_))))
    {
        let why = why.clone();
        return unavailable(lw, node, why);
    }
    let all_const = ins
        .iter()
        .all(|v| matches!(v, None | Some(Value::Const(_))));
    let std_domain = node.domain.is_empty() || node.domain == "ai.onnx";
    if std_domain && (all_const || node.op_type == "Constant") {
        let consts: Vec<Option<&TensorData>> = ins
            .iter()
            .map(|v| match v {
                Some(Value::Const(t)) => Some(t),
                _ => None,
            })
            .collect();
        match eval_constant(node, lw.opset, &consts) {
            Ok(outs) => {
                for (name, t) in node.outputs.iter().zip(outs) {
                    lw.values.insert(name.clone(), Value::Const(t));
                }
                return;
            }
            // Constants that only the engine computes (a Conv of constants) fall through.
            Err(e) if !TABLE.iter().any(|(op, _)| *op == node.op_type) => {
                return unavailable(lw, node, e.to_string())
            }
            Err(_) => {}
        }
    }
    if node.op_type == "Shape" && std_domain {
        if let Some(Some(Value::Node(id))) = ins.first() {
            let dims = lw.shape(*id).to_vec();
            match eval_shape(node, lw.opset, &dims) {
                Ok(t) => {
                    if let Some(out) = node.outputs.first() {
                        lw.values.insert(out.clone(), Value::Const(t));
                    }
                }
                Err(e) => unavailable(lw, node, e.to_string()),
            }
            return;
        }
    }
    let Some((_, lower)) = TABLE
        .iter()
        .find(|(op, _)| std_domain && *op == node.op_type)
    else {
        let domain = if std_domain {
            String::new()
        } else {
            format!(" (domain '{}')", node.domain)
        };
        return unavailable(
            lw,
            node,
            format!(
                "node '{}': op {}{domain} at opset {} is not supported; see the README's list of supported ops",
                node.label(),
                node.op_type,
                lw.opset
            ),
        );
    };
    let nodes: Vec<Option<NodeId>> = ins
        .iter()
        .map(|v| match v {
            Some(Value::Node(id)) => Some(*id),
            _ => None,
        })
        .collect();
    match lower(lw, node, &nodes) {
        Ok(ids) => {
            for (name, id) in node.outputs.iter().zip(ids) {
                if !name.is_empty() {
                    lw.values.insert(name.clone(), Value::Node(id));
                }
            }
        }
        Err(why) => unavailable(
            lw,
            node,
            format!("node '{}' ({}): {why}", node.label(), node.op_type),
        ),
    }
}

fn unavailable(lw: &mut Lowering, node: &OnnxNode, why: String) {
    for name in node.outputs.iter().filter(|n| !n.is_empty()) {
        lw.values
            .insert(name.clone(), Value::Unavailable(why.clone()));
    }
}

fn err(e: deepvis_onnx::OnnxError) -> String {
    e.to_string()
}

/// The engine node name of a node's first output.
fn out_name(node: &OnnxNode) -> &str {
    node.outputs
        .first()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| node.label())
}

/// The node input `k`, which must be computed (not a constant).
fn data(_node: &OnnxNode, x: &[Option<NodeId>], k: usize) -> Result<NodeId, String> {
    x.get(k)
        .copied()
        .flatten()
        .ok_or_else(|| format!("input {k} must be computed from the image, not a constant"))
}

/// The constant input `k`, if it is one.
fn konst<'a>(lw: &'a Lowering, node: &OnnxNode, k: usize) -> Option<&'a TensorData> {
    node.input(k).and_then(|name| lw.constant(name))
}

fn konst_req<'a>(
    lw: &'a Lowering,
    node: &OnnxNode,
    k: usize,
    what: &str,
) -> Result<&'a TensorData, String> {
    konst(lw, node, k).ok_or_else(|| format!("its {what} (input {k}) must be a constant"))
}

fn f32s(t: &TensorData) -> Result<Vec<f32>, String> {
    t.as_f32().map_err(err)
}

fn ints_or<'a>(
    lw: &'a Lowering,
    node: &OnnxNode,
    k: usize,
    attr: &str,
) -> Result<Option<Vec<i64>>, String> {
    let lookup = |name: &str| lw.constant(name);
    node.ints_input_or_attr(k, attr, &lookup).map_err(err)
}

fn single(
    lw: &mut Lowering,
    node: &OnnxNode,
    x: &[Option<NodeId>],
    op: impl Into<deepvis_engine::Op>,
) -> Lowered {
    let x = data(node, x, 0)?;
    Ok(vec![lw.push(out_name(node), op, &[x])?])
}

fn unary(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>], kind: UnaryKind) -> Lowered {
    single(lw, node, x, Unary(kind))
}

/// Axis `a` of a rank-`rank` value, counted from the end when negative; never the batch axis.
fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let i = if a < 0 { a + r } else { a };
    if !(0..r).contains(&i) {
        return Err(format!("axis {a} is out of range for rank {rank}"));
    }
    if i == 0 {
        return Err("operating along the batch axis is not supported".into());
    }
    Ok(i as usize)
}

/// A 2-D window attribute (`strides`, `dilations`, …), `default` where absent.
fn attr_pair(
    node: &OnnxNode,
    name: &str,
    default: (usize, usize),
) -> Result<(usize, usize), String> {
    match node.attr_ints(name).map_err(err)? {
        Some(v) => pair(v, name),
        None => Ok(default),
    }
}

fn attr_pair_req(node: &OnnxNode, name: &str) -> Result<(usize, usize), String> {
    pair(node.attr_ints_req(name).map_err(err)?, name)
}

/// `pads` as (top, left, bottom, right), zeros where absent.
fn pads4(node: &OnnxNode) -> Result<(usize, usize, usize, usize), String> {
    match node.attr_ints_or("pads", &[0, 0, 0, 0]).map_err(err)?[..] {
        [t, l, b, r] if t >= 0 && l >= 0 && b >= 0 && r >= 0 => {
            Ok((t as usize, l as usize, b as usize, r as usize))
        }
        ref p => Err(format!("pads {p:?}: expected 4 non-negative values")),
    }
}

fn pair(v: &[i64], what: &str) -> Result<(usize, usize), String> {
    match v {
        [a, b] if *a >= 0 && *b >= 0 => Ok((*a as usize, *b as usize)),
        _ => Err(format!(
            "{what} {v:?}: only 2-D (NCHW) windows are supported"
        )),
    }
}

/// ONNX pads [top, left, bottom, right] for 2-D windows, resolving `auto_pad` for this input.
fn window_pads(
    node: &OnnxNode,
    in_hw: (usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
) -> Result<(usize, usize, usize, usize), String> {
    let auto = node.attr_string_or("auto_pad", "NOTSET").map_err(err)?;
    match auto.as_str() {
        "NOTSET" => pads4(node),
        "VALID" => Ok((0, 0, 0, 0)),
        "SAME_UPPER" | "SAME_LOWER" => {
            let total = |i: usize, k: usize, s: usize, d: usize| {
                let out = i.div_ceil(s);
                ((out - 1) * s + (k - 1) * d + 1).saturating_sub(i)
            };
            let th = total(in_hw.0, kernel.0, stride.0, dilation.0);
            let tw = total(in_hw.1, kernel.1, stride.1, dilation.1);
            Ok(if auto == "SAME_UPPER" {
                (th / 2, tw / 2, th - th / 2, tw - tw / 2)
            } else {
                (th - th / 2, tw - tw / 2, th / 2, tw / 2)
            })
        }
        other => Err(format!("auto_pad '{other}' is not an ONNX value")),
    }
}

fn spatial(lw: &Lowering, id: NodeId) -> Result<(usize, usize), String> {
    match lw.shape(id) {
        [_, _, h, w] => Ok((*h, *w)),
        s => Err(format!("expects an NCHW input, got shape {s:?}")),
    }
}

fn conv(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let w = konst_req(lw, node, 1, "weight")?;
    let [cout, cin_g, kh, kw] = w.dims[..] else {
        return Err(format!(
            "weight of shape {:?}: only 2-D convolutions are supported",
            w.dims
        ));
    };
    let groups = node.attr_int_or("group", 1).map_err(err)?.max(1) as usize;
    let stride = attr_pair(node, "strides", (1, 1))?;
    let dilation = attr_pair(node, "dilations", (1, 1))?;
    let (t, l, b, r) = window_pads(node, spatial(lw, xi)?, (kh, kw), stride, dilation)?;
    let bias = konst(lw, node, 2).map(f32s).transpose()?;
    let conv = Conv2d {
        in_channels: cin_g * groups,
        out_channels: cout,
        kernel: (kh, kw),
        stride,
        dilation,
        groups,
        padding: Padding::Explicit {
            top: t,
            bottom: b,
            left: l,
            right: r,
        },
        weight: f32s(w)?,
        bias,
        cache: Default::default(),
    };
    conv.validate().map_err(|e| e.to_string())?;
    Ok(vec![lw.push(out_name(node), conv, &[xi])?])
}

fn conv_transpose(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let w = konst_req(lw, node, 1, "weight")?;
    let [cin, cout_g, kh, kw] = w.dims[..] else {
        return Err(format!(
            "weight of shape {:?}: only 2-D transposed convolutions are supported",
            w.dims
        ));
    };
    if node.attr_ints("output_shape").map_err(err)?.is_some() {
        return Err("the output_shape attribute is not supported; export with pads instead".into());
    }
    let groups = node.attr_int_or("group", 1).map_err(err)?.max(1) as usize;
    let stride = attr_pair(node, "strides", (1, 1))?;
    let dilation = attr_pair(node, "dilations", (1, 1))?;
    let output_padding = attr_pair(node, "output_padding", (0, 0))?;
    let auto = node.attr_string_or("auto_pad", "NOTSET").map_err(err)?;
    if auto != "NOTSET" && auto != "VALID" {
        return Err(format!(
            "auto_pad '{auto}' is not supported for ConvTranspose"
        ));
    }
    let pads = pads4(node)?;
    let op = ConvTranspose2d {
        in_channels: cin,
        out_channels: cout_g * groups,
        kernel: (kh, kw),
        stride,
        dilation,
        groups,
        pads,
        output_padding,
        weight: f32s(w)?,
        bias: konst(lw, node, 2).map(f32s).transpose()?,
    };
    Ok(vec![lw.push(out_name(node), op, &[xi])?])
}

fn batch_norm(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let eps = node.attr_float_or("epsilon", 1e-5).map_err(err)?;
    let get = |k: usize, what: &str| konst_req(lw, node, k, what).and_then(f32s);
    let op = ChannelAffine::from_batch_norm(
        &get(1, "scale")?,
        &get(2, "bias")?,
        &get(3, "mean")?,
        &get(4, "variance")?,
        eps,
    );
    single(lw, node, x, op)
}

fn clip(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let lookup = |name: &str| lw.constant(name);
    let min = node
        .float_input_or_attr(1, "min", &lookup)
        .map_err(err)?
        .unwrap_or(f32::NEG_INFINITY);
    let max = node
        .float_input_or_attr(2, "max", &lookup)
        .map_err(err)?
        .unwrap_or(f32::INFINITY);
    // The exporters write ReLU6 and ReLU as Clip; the engine's own ops fuse with producers.
    match (min, max) {
        (0.0, 6.0) => single(lw, node, x, Relu6),
        (0.0, m) if m == f32::INFINITY => single(lw, node, x, Relu),
        _ => unary(lw, node, x, UnaryKind::Clip { min, max }),
    }
}

fn prelu(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let slope = konst_req(lw, node, 1, "slope")?;
    let slope = Tensor::new(slope.dims.clone(), f32s(slope)?).map_err(|e| e.to_string())?;
    single(lw, node, x, PRelu { slope })
}

fn binary(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>], kind: BinaryKind) -> Lowered {
    let name = out_name(node);
    match (x.first().copied().flatten(), x.get(1).copied().flatten()) {
        (Some(a), Some(b)) => {
            if kind == BinaryKind::Add && lw.shape(a) == lw.shape(b) {
                Ok(vec![lw.push(name, Add, &[a, b])?])
            } else {
                Ok(vec![lw.push(name, Binary(kind), &[a, b])?])
            }
        }
        (Some(a), None) | (None, Some(a)) => {
            let constant_first = x.first().copied().flatten().is_none();
            let c = konst_req(lw, node, usize::from(!constant_first), "operand")?;
            let constant = Tensor::new(c.dims.clone(), f32s(c)?).map_err(|e| e.to_string())?;
            let op = BinaryConst {
                kind,
                constant,
                constant_first,
            };
            Ok(vec![lw.push(name, op, &[a])?])
        }
        (None, None) => Err("has no computed operand".into()),
    }
}

fn sum(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let ids: Vec<NodeId> = (0..x.len())
        .map(|k| data(node, x, k))
        .collect::<Result<_, _>>()?;
    Ok(vec![lw.push(out_name(node), Add, &ids)?])
}

fn concat(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let ids: Vec<NodeId> = (0..x.len())
        .map(|k| data(node, x, k))
        .collect::<Result<_, _>>()?;
    let first = *ids.first().ok_or("has no inputs")?;
    let a = axis(
        node.attr_int_req("axis").map_err(err)?,
        lw.shape(first).len(),
    )?;
    Ok(vec![lw.push(out_name(node), Concat { axis: a }, &ids)?])
}

fn split(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let shape = lw.shape(xi).to_vec();
    let a = axis(node.attr_int_or("axis", 0).map_err(err)?, shape.len())?;
    let parts = node.outputs.len();
    let sizes: Vec<i64> = match ints_or(lw, node, 1, "split")? {
        Some(s) => s,
        None => {
            let d = shape[a] as i64;
            let per = (d + parts as i64 - 1) / parts as i64;
            (0..parts as i64)
                .map(|i| per.min(d - i * per).max(0))
                .collect()
        }
    };
    if sizes.len() != parts {
        return Err(format!("{} sizes for {parts} outputs", sizes.len()));
    }
    let mut start = 0i64;
    let mut ids = Vec::with_capacity(parts);
    for (name, size) in node.outputs.iter().zip(sizes) {
        let op = Slice {
            axes: vec![SliceAxis {
                axis: a,
                start,
                end: start + size,
                step: 1,
            }],
        };
        ids.push(lw.push(name, op, &[xi])?);
        start += size;
    }
    Ok(ids)
}

fn slice(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let rank = lw.shape(xi).len();
    let starts = ints_or(lw, node, 1, "starts")?.ok_or("has no starts")?;
    let ends = ints_or(lw, node, 2, "ends")?.ok_or("has no ends")?;
    let axes = ints_or(lw, node, 3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = ints_or(lw, node, 4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    let mut list = Vec::with_capacity(starts.len());
    for i in 0..starts.len() {
        list.push(SliceAxis {
            axis: axis(axes[i], rank)?,
            start: starts[i],
            end: ends[i],
            step: steps[i],
        });
    }
    single(lw, node, x, Slice { axes: list })
}

/// A reshape to `target` (ONNX semantics: 0 copies, -1 infers), batch kept. A flatten to
/// [N, rest] stays size-agnostic; other targets keep the sizes the export fixed.
fn reshape_to(
    lw: &mut Lowering,
    node: &OnnxNode,
    xi: NodeId,
    target: &[i64],
    allowzero: bool,
) -> Lowered {
    let input = lw.shape(xi).to_vec();
    let name = out_name(node);
    if target.len() == 2 && input.len() > 2 {
        let rest: usize = input[1..].iter().product();
        if target[1] == -1 || target[1] == rest as i64 {
            return Ok(vec![lw.push(name, Flatten, &[xi])?]);
        }
    }
    let mut dims = Vec::with_capacity(target.len());
    for (i, &d) in target.iter().enumerate() {
        dims.push(match d {
            _ if i == 0 => {
                if d != 0 && d != -1 && d != input[0] as i64 {
                    return Err(format!(
                        "reshaping the batch axis ({target:?}) is not supported"
                    ));
                }
                ReshapeDim::Keep
            }
            0 if !allowzero => ReshapeDim::Keep,
            -1 => ReshapeDim::Infer,
            d if d >= 0 => ReshapeDim::Fixed(d as usize),
            _ => return Err(format!("target shape {target:?} is not valid")),
        });
    }
    Ok(vec![lw.push(name, Reshape { dims }, &[xi])?])
}

fn reshape(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let target = konst_req(lw, node, 1, "shape")?.as_i64().map_err(err)?;
    let allowzero = node.attr_int_or("allowzero", 0).map_err(err)? != 0;
    reshape_to(lw, node, xi, &target, allowzero)
}

fn flatten(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let shape = lw.shape(xi).to_vec();
    let a = node.attr_int_or("axis", 1).map_err(err)?;
    let a = if a < 0 { a + shape.len() as i64 } else { a };
    if a == 1 {
        return Ok(vec![lw.push(out_name(node), Flatten, &[xi])?]);
    }
    if a < 1 || a as usize > shape.len() {
        return Err(format!(
            "flatten at axis {a} of rank {} is not supported",
            shape.len()
        ));
    }
    let a = a as usize;
    let target = [
        shape[..a].iter().product::<usize>() as i64,
        shape[a..].iter().product::<usize>() as i64,
    ];
    reshape_to(lw, node, xi, &target, false)
}

fn squeeze_unsqueeze(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let shape = lw.shape(xi).to_vec();
    let axes = ints_or(lw, node, 1, "axes")?;
    let out: Vec<usize> = if node.op_type == "Squeeze" {
        let rank = shape.len() as i64;
        let axes: Vec<usize> = match axes {
            Some(a) => a
                .iter()
                .map(|&v| (if v < 0 { v + rank } else { v }) as usize)
                .collect(),
            None => (0..shape.len()).filter(|&i| shape[i] == 1).collect(),
        };
        shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i) || *i == 0)
            .map(|(_, &d)| d)
            .collect()
    } else {
        let axes = axes.ok_or("has no axes")?;
        let rank = (shape.len() + axes.len()) as i64;
        let axes: Vec<usize> = axes
            .iter()
            .map(|&v| (if v < 0 { v + rank } else { v }) as usize)
            .collect();
        let mut it = shape.iter();
        (0..rank as usize)
            .map(|i| {
                if axes.contains(&i) {
                    1
                } else {
                    it.next().copied().unwrap_or(1)
                }
            })
            .collect()
    };
    let target: Vec<i64> = out.iter().map(|&d| d as i64).collect();
    reshape_to(lw, node, xi, &target, true)
}

fn transpose(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let rank = lw.shape(xi).len();
    let perm: Vec<usize> = match node.attr_ints("perm").map_err(err)? {
        Some(p) => p.iter().map(|&v| v.max(0) as usize).collect(),
        None => (0..rank).rev().collect(),
    };
    if perm.first() != Some(&0) {
        return Err(format!("permutation {perm:?} moves the batch axis"));
    }
    single(lw, node, x, Transpose { perm })
}

fn pool_window(
    node: &OnnxNode,
) -> Result<((usize, usize), (usize, usize), (usize, usize)), String> {
    let kernel = attr_pair_req(node, "kernel_shape")?;
    let stride = attr_pair(node, "strides", (1, 1))?;
    let dilation = attr_pair(node, "dilations", (1, 1))?;
    Ok((kernel, stride, dilation))
}

/// Asymmetric pads become an explicit Pad node before a window op with symmetric (zero) ones.
fn symmetric_or_pad(
    lw: &mut Lowering,
    node: &OnnxNode,
    xi: NodeId,
    pads: (usize, usize, usize, usize),
    value: f32,
) -> Result<(NodeId, (usize, usize)), String> {
    let (t, l, b, r) = pads;
    if t == b && l == r {
        return Ok((xi, (t, l)));
    }
    let op = Pad {
        pads: vec![(0, 0), (0, 0), (t, b), (l, r)],
        mode: PadMode::Constant,
        value,
    };
    let id = lw.push(&format!("{}/pad", out_name(node)), op, &[xi])?;
    Ok((id, (0, 0)))
}

fn max_pool(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    if node.outputs.len() > 1 && !node.outputs[1].is_empty() {
        return Err("the Indices output is not supported".into());
    }
    let (kernel, stride, dilation) = pool_window(node)?;
    let pads = window_pads(node, spatial(lw, xi)?, kernel, stride, dilation)?;
    let (xi, padding) = symmetric_or_pad(lw, node, xi, pads, f32::NEG_INFINITY)?;
    let op = MaxPool2d {
        kernel,
        stride,
        padding,
        dilation,
        ceil_mode: node.attr_int_or("ceil_mode", 0).map_err(err)? != 0,
    };
    Ok(vec![lw.push(out_name(node), op, &[xi])?])
}

fn avg_pool(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let (kernel, stride, dilation) = pool_window(node)?;
    if dilation != (1, 1) {
        return Err("dilated average pooling is not supported".into());
    }
    let count_include_pad = node.attr_int_or("count_include_pad", 0).map_err(err)? != 0;
    let pads = window_pads(node, spatial(lw, xi)?, kernel, stride, dilation)?;
    if !count_include_pad && (pads.0 != pads.2 || pads.1 != pads.3) {
        return Err("asymmetric pads without count_include_pad are not supported".into());
    }
    let (xi, padding) = symmetric_or_pad(lw, node, xi, pads, 0.0)?;
    let op = AvgPool2d {
        kernel,
        stride,
        padding,
        ceil_mode: node.attr_int_or("ceil_mode", 0).map_err(err)? != 0,
        count_include_pad,
    };
    Ok(vec![lw.push(out_name(node), op, &[xi])?])
}

fn reduce_mean(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let rank = lw.shape(xi).len();
    let keepdims = node.attr_int_or("keepdims", 1).map_err(err)? != 0;
    let mut axes: Vec<usize> = match ints_or(lw, node, 1, "axes")? {
        Some(a) => a.iter().map(|&v| axis(v, rank)).collect::<Result<_, _>>()?,
        None => (1..rank).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    if keepdims && rank == 4 && axes == [2, 3] {
        return single(lw, node, &[Some(xi)], AdaptiveAvgPool2d { output: (1, 1) });
    }
    single(lw, node, &[Some(xi)], ReduceMean { axes, keepdims })
}

fn gemm(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    if node.attr_int_or("transA", 0).map_err(err)? != 0 {
        return Err("transA=1 is not supported".into());
    }
    let alpha = node.attr_float_or("alpha", 1.0).map_err(err)?;
    let beta = node.attr_float_or("beta", 1.0).map_err(err)?;
    let trans_b = node.attr_int_or("transB", 0).map_err(err)? != 0;
    let b = konst_req(lw, node, 1, "B")?;
    let [d0, d1] = b.dims[..] else {
        return Err(format!("B of shape {:?} is not a matrix", b.dims));
    };
    let bv = f32s(b)?;
    // Linear keeps PyTorch's [out, in]: B as is with transB, transposed otherwise.
    let (fout, fin) = if trans_b { (d0, d1) } else { (d1, d0) };
    let mut weight = vec![0.0f32; fin * fout];
    for o in 0..fout {
        for i in 0..fin {
            let v = if trans_b {
                bv[o * fin + i]
            } else {
                bv[i * fout + o]
            };
            weight[o * fin + i] = alpha * v;
        }
    }
    let bias = match konst(lw, node, 2) {
        Some(c) => {
            let c = f32s(c)?;
            match c.len() {
                1 => Some(vec![beta * c[0]; fout]),
                n if n == fout => Some(c.iter().map(|v| beta * v).collect()),
                n => {
                    return Err(format!(
                        "C of {n} values does not broadcast to {fout} outputs"
                    ))
                }
            }
        }
        None if node.input(2).is_some() => return Err("C must be a constant".into()),
        None => None,
    };
    let op = Linear {
        in_features: fin,
        out_features: fout,
        weight,
        bias,
    };
    Ok(vec![lw.push(out_name(node), op, &[xi])?])
}

fn matmul(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let b = konst_req(lw, node, 1, "right operand")?;
    let [k, m] = b.dims[..] else {
        return Err(format!(
            "right operand of shape {:?}: only a constant matrix is supported",
            b.dims
        ));
    };
    let op = MatMulConst {
        k,
        m,
        weight: f32s(b)?,
        bias: None,
    };
    Ok(vec![lw.push(out_name(node), op, &[xi])?])
}

fn pad(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let rank = lw.shape(xi).len();
    let raw = ints_or(lw, node, 1, "pads")?.ok_or("has no pads")?;
    let axes: Vec<usize> = match ints_or(lw, node, 3, "axes")? {
        Some(a) => a
            .iter()
            .map(|&v| (if v < 0 { v + rank as i64 } else { v }) as usize)
            .collect(),
        None => (0..rank).collect(),
    };
    if raw.len() != 2 * axes.len() {
        return Err(format!("{} pads for {} axes", raw.len(), axes.len()));
    }
    let mut pads = vec![(0usize, 0usize); rank];
    for (i, &a) in axes.iter().enumerate() {
        let (b, e) = (raw[i], raw[i + axes.len()]);
        if b < 0 || e < 0 {
            return Err("negative pads (cropping) are not supported".into());
        }
        *pads.get_mut(a).ok_or("a pad axis is out of range")? = (b as usize, e as usize);
    }
    let mode = match node
        .attr_string_or("mode", "constant")
        .map_err(err)?
        .as_str()
    {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        other => return Err(format!("mode '{other}' is not supported")),
    };
    let lookup = |name: &str| lw.constant(name);
    let value = node
        .float_input_or_attr(2, "value", &lookup)
        .map_err(err)?
        .unwrap_or(0.0);
    single(lw, node, x, Pad { pads, mode, value })
}

fn resize(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let (h, w) = spatial(lw, xi)?;
    let mode = match node
        .attr_string_or("mode", "nearest")
        .map_err(err)?
        .as_str()
    {
        "nearest" => ResizeMode::Nearest,
        "linear" | "bilinear" => ResizeMode::Linear,
        other => return Err(format!("mode '{other}' is not supported")),
    };
    let coord = match node
        .attr_string_or("coordinate_transformation_mode", "half_pixel")
        .map_err(err)?
        .as_str()
    {
        "half_pixel" => CoordMode::HalfPixel,
        "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
        "align_corners" => CoordMode::AlignCorners,
        "asymmetric" => CoordMode::Asymmetric,
        other => {
            return Err(format!(
                "coordinate_transformation_mode '{other}' is not supported"
            ))
        }
    };
    let nearest = match node
        .attr_string_or("nearest_mode", "round_prefer_floor")
        .map_err(err)?
        .as_str()
    {
        "round_prefer_floor" => NearestMode::RoundPreferFloor,
        "round_prefer_ceil" => NearestMode::RoundPreferCeil,
        "floor" => NearestMode::Floor,
        "ceil" => NearestMode::Ceil,
        other => return Err(format!("nearest_mode '{other}' is not supported")),
    };
    // Upsample (opset 9) has scales at input 1; Resize has roi, scales, sizes at 1, 2, 3.
    let (scales, sizes) = if node.op_type == "Upsample" {
        let s = match konst(lw, node, 1) {
            Some(t) => Some(f32s(t)?),
            None => node
                .attr_floats("scales")
                .map_err(err)?
                .map(<[f32]>::to_vec),
        };
        (s, None)
    } else {
        let s = konst(lw, node, 2)
            .map(f32s)
            .transpose()?
            .filter(|s| !s.is_empty());
        let z = konst(lw, node, 3)
            .map(|t| t.as_i64().map_err(err))
            .transpose()?
            .filter(|s| !s.is_empty());
        (s, z)
    };
    // Upsample in opset 9 meant asymmetric coordinates.
    let coord = if node.op_type == "Upsample" {
        CoordMode::Asymmetric
    } else {
        coord
    };
    let nearest = if node.op_type == "Upsample" {
        NearestMode::Floor
    } else {
        nearest
    };
    let to = match (scales, sizes) {
        (_, Some(z)) if z.len() == 4 => ResizeTo::Size(z[2].max(1) as usize, z[3].max(1) as usize),
        (Some(s), _) if s.len() == 4 => {
            if s[0] != 1.0 || s[1] != 1.0 {
                return Err("resizing the batch or channel axis is not supported".into());
            }
            ResizeTo::Scales(s[2], s[3])
        }
        _ => return Err(format!("needs 4 scales or 4 sizes for an input of {h}x{w}")),
    };
    single(
        lw,
        node,
        x,
        Resize {
            mode,
            coord,
            nearest,
            to,
        },
    )
}

fn cast(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    match node.attr_int_req("to").map_err(err)? {
        1 => single(lw, node, x, Identity),
        to => Err(format!(
            "cast of an image value to {} is not supported",
            deepvis_onnx::data_type_name(to as i32)
        )),
    }
}

fn softmax(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let rank = lw.shape(xi).len();
    // Before opset 13 Softmax flattened everything from `axis` on into one row (default 1);
    // that is the same as the newer per-axis softmax only where `axis` is the last axis.
    let default = if lw.opset < 13 { 1 } else { -1 };
    let a = axis(node.attr_int_or("axis", default).map_err(err)?, rank)?;
    if lw.opset < 13 && a != rank - 1 {
        return Err(format!(
            "softmax over the flattened axes {a}.. of a rank-{rank} value (opset < 13) is not supported"
        ));
    }
    single(lw, node, x, Softmax { axis: a })
}

fn layer_norm(lw: &mut Lowering, node: &OnnxNode, x: &[Option<NodeId>]) -> Lowered {
    let xi = data(node, x, 0)?;
    let rank = lw.shape(xi).len();
    if node.outputs.iter().skip(1).any(|o| !o.is_empty()) {
        return Err("the Mean and InvStdDev outputs are not supported".into());
    }
    let a = axis(node.attr_int_or("axis", -1).map_err(err)?, rank)?;
    let eps = node.attr_float_or("epsilon", 1e-5).map_err(err)?;
    let scale = Some(f32s(konst_req(lw, node, 1, "scale")?)?);
    let bias = konst(lw, node, 2).map(f32s).transpose()?;
    single(
        lw,
        node,
        x,
        LayerNorm {
            axis: a,
            eps,
            scale,
            bias,
        },
    )
}
