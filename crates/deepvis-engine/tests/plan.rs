//! The planner decides fusions and what is kept from the data flow, not from the order in
//! which an architecture pushed its nodes; and an op written outside the engine, through the
//! `Operator` trait alone, runs and differentiates in a graph.

mod common;

use common::{random, rng};
use deepvis_engine::*;
use rand::Rng;
use std::any::Any;

fn conv(cin: usize, cout: usize, r: &mut rand_chacha::ChaCha8Rng) -> Conv2d {
    let conv = Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: (3, 3),
        stride: (1, 1),
        dilation: (1, 1),
        groups: 1,
        padding: Padding::symmetric(1),
        weight: (0..cout * cin * 9)
            .map(|_| r.gen_range(-0.5..0.5))
            .collect(),
        bias: Some((0..cout).map(|_| r.gen_range(-0.5..0.5)).collect()),
        cache: Default::default(),
    };
    conv.validate().unwrap();
    conv
}

/// Two branches conv → ReLU summed, then a 2×2 pool; `interleaved` pushes each branch's conv
/// right before its ReLU, otherwise both convolutions come first.
fn branches(interleaved: bool) -> (Graph, [NodeId; 2], [NodeId; 2], NodeId) {
    let mut r = rng(7);
    let (ca, cb) = (conv(3, 16, &mut r), conv(3, 16, &mut r));
    let mut g = Graph::new();
    let (a, b, ra, rb);
    if interleaved {
        a = g.push("a", ca, &[0]);
        ra = g.push("a.relu", Relu, &[a]);
        b = g.push("b", cb, &[0]);
        rb = g.push("b.relu", Relu, &[b]);
    } else {
        a = g.push("a", ca, &[0]);
        b = g.push("b", cb, &[0]);
        ra = g.push("a.relu", Relu, &[a]);
        rb = g.push("b.relu", Relu, &[b]);
    }
    let sum = g.push("sum", Add, &[ra, rb]);
    let out = g.push("pool", MaxPool2d::square(2, 2), &[sum]);
    (g, [a, b], [ra, rb], out)
}

#[test]
fn fusion_does_not_depend_on_the_order_nodes_were_pushed() {
    let x = random(&[2, 3, 12, 10], &mut rng(1));
    let seed = random(&[2, 16, 6, 5], &mut rng(2));
    let mut results = Vec::new();
    for interleaved in [true, false] {
        let (g, convs, relus, out) = branches(interleaved);
        let fused = g.forward(x.clone(), out).unwrap();
        // Each ReLU ran in its convolution's pass, whichever order they were pushed in.
        for (c, r) in convs.iter().zip(&relus) {
            assert_eq!(
                fused.fused_producer(*r),
                Some(*c),
                "interleaved {interleaved}"
            );
            assert!(fused.value(*c).is_none());
        }
        let dx = g.backward(&fused, seed.clone()).unwrap();
        // Asking for the convolutions' outputs turns the fusion off: same numbers.
        let plain = g
            .forward_multi(x.clone(), &[convs[0], convs[1], out])
            .unwrap();
        assert!(convs.iter().all(|&c| plain.value(c).is_some()));
        assert!(relus.iter().all(|&r| plain.fused_producer(r).is_none()));
        assert_eq!(plain.output().data(), fused.output().data());
        assert_eq!(g.backward(&plain, seed.clone()).unwrap().data(), dx.data());
        results.push((fused.output().clone(), dx));
    }
    assert_eq!(results[0].0.data(), results[1].0.data());
    assert_eq!(results[0].1.data(), results[1].1.data());
}

/// A residual sum and the ReLU after it (ResNet's `relu(out + identity)`) run as one pass each
/// way, for two and for three summands, with the same numbers as the two ops apart.
#[test]
fn a_residual_sum_absorbs_the_relu_after_it() {
    let x = random(&[2, 3, 9, 7], &mut rng(3));
    let seed = random(&[2, 3, 9, 7], &mut rng(4));
    for summands in [2, 3] {
        let mut r = rng(5);
        let mut g = Graph::new();
        let a = g.push("a", conv(3, 3, &mut r), &[0]);
        let b = g.push("b", conv(3, 3, &mut r), &[0]);
        let inputs: Vec<NodeId> = [a, 0, b][..summands].to_vec();
        let sum = g.push("sum", Add, &inputs);
        let out = g.push("relu", Relu, &[sum]);
        let fused = g.forward(x.clone(), out).unwrap();
        assert_eq!(fused.fused_producer(out), Some(sum), "{summands} summands");
        assert!(fused.value(sum).is_none());
        let dx = g.backward(&fused, seed.clone()).unwrap();
        // Asking for the sum too keeps the two ops apart.
        let plain = g.forward_multi(x.clone(), &[sum, out]).unwrap();
        assert!(plain.fused_producer(out).is_none());
        assert_eq!(plain.output().data(), fused.output().data());
        let dx_plain = g.backward(&plain, seed.clone()).unwrap();
        for (u, v) in dx.data().iter().zip(dx_plain.data()) {
            assert!(
                (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                "{summands}: {u} vs {v}"
            );
        }
        // And some outputs were cut by the ReLU, so the mask mattered.
        assert!(fused.output().data().contains(&0.0));
    }
}

/// Batch norm → ReLU fused gives what the ReLU op gives, NaN included (it maps NaN to 0).
#[test]
fn batch_norm_and_relu_fused_treat_nan_as_the_relu_op_does() {
    let mut x = random(&[1, 2, 3, 3], &mut rng(12));
    x.data_mut()[4] = f32::NAN;
    let mut g = Graph::new();
    let bn = g.push(
        "bn",
        ChannelAffine {
            scale: vec![1.5, -0.5],
            shift: vec![0.1, 0.2],
        },
        &[0],
    );
    let out = g.push("relu", Relu, &[bn]);
    let fused = g.forward(x.clone(), out).unwrap();
    assert_eq!(fused.fused_producer(out), Some(bn));
    let plain = g.forward_multi(x, &[bn, out]).unwrap();
    let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(fused.output()), bits(plain.output()));
}

/// Batch norm → SiLU (EfficientNet) runs as one pass each way, keeping the batch norm's input
/// for the backward pass instead of the SiLU's, with exactly the numbers of the two ops apart.
#[test]
fn batch_norm_absorbs_a_silu_bit_for_bit() {
    let x = random(&[2, 3, 9, 7], &mut rng(9));
    let seed = random(&[2, 5, 9, 7], &mut rng(10));
    let mut r = rng(11);
    let mut g = Graph::new();
    let a = g.push("conv", conv(3, 4, &mut r), &[0]);
    // Not the convolution itself before the norm, which would fold the norm into itself.
    let a = g.push("conv.act", Unary(UnaryKind::Tanh), &[a]);
    let bn = g.push(
        "bn",
        ChannelAffine {
            scale: vec![1.7, -0.6, 0.9, 2.2],
            shift: vec![-0.3, 0.4, 0.0, -1.1],
        },
        &[a],
    );
    let act = g.push("act", Unary(UnaryKind::Silu), &[bn]);
    let out = g.push("head", conv(4, 5, &mut r), &[act]);
    let fused = g.forward(x.clone(), out).unwrap();
    assert_eq!(fused.fused_producer(act), Some(bn));
    assert!(fused.value(bn).is_none());
    let dx = g.backward(&fused, seed.clone()).unwrap();
    let plain = g.forward_multi(x, &[bn, out]).unwrap();
    assert!(plain.fused_producer(act).is_none());
    assert_eq!(plain.output().data(), fused.output().data());
    assert_eq!(g.backward(&plain, seed).unwrap().data(), dx.data());
}

/// A pass-through (a container's output, eval-mode dropout) whose input is kept for the
/// backward pass is that value under its own name, not a copy: it reads the same, and
/// gradients through it are those of the graph without it.
#[test]
fn a_pass_through_names_its_input_value() {
    let x = random(&[1, 3, 8, 8], &mut rng(6));
    let mut r = rng(7);
    let (c1, c2) = (conv(3, 4, &mut r), conv(4, 2, &mut r));
    let mut g = Graph::new();
    let a = g.push("a", c1.clone(), &[0]);
    let relu = g.push("a.act", Unary(UnaryKind::Sigmoid), &[a]);
    let block = g.push("block", Identity, &[relu]);
    let stage = g.push("stage", Identity, &[block]);
    let out = g.push("b", c2.clone(), &[stage]);
    let trace = g.forward(x.clone(), out).unwrap();
    // The sigmoid keeps its output for its backward pass; both names read that one value.
    let (v, w) = (trace.value(relu).unwrap(), trace.value(stage).unwrap());
    assert!(std::ptr::eq(v, w));
    let seed = random(&[1, 2, 8, 8], &mut rng(8));
    let dx = g.backward(&trace, seed.clone()).unwrap();

    let mut h = Graph::new();
    let a = h.push("a", c1, &[0]);
    let relu = h.push("a.act", Unary(UnaryKind::Sigmoid), &[a]);
    let out_h = h.push("b", c2, &[relu]);
    let plain = h.forward(x, out_h).unwrap();
    assert_eq!(plain.output().data(), trace.output().data());
    assert_eq!(h.backward(&plain, seed).unwrap().data(), dx.data());
}

/// y = x², written here as any new op would be: one `Operator` impl.
#[derive(Debug)]
struct Square;

impl Operator for Square {
    fn describe(&self) -> String {
        "Square".into()
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, EngineError> {
        Ok(inputs[0].to_vec())
    }
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor, EngineError> {
        let x = inputs[0];
        Tensor::new(x.shape().to_vec(), x.data().iter().map(|v| v * v).collect())
    }
    fn backward_needs(&self) -> Needs {
        Needs::INPUTS
    }
    fn backward(&self, saved: &Saved, grad: Tensor) -> Result<Vec<Tensor>, EngineError> {
        let x = saved.input(0)?;
        let data = grad
            .data()
            .iter()
            .zip(x.data())
            .map(|(g, x)| 2.0 * x * g)
            .collect();
        Ok(vec![Tensor::new(grad.shape().to_vec(), data)?])
    }
    fn receptive_field(&self) -> Field {
        Field::Pointwise
    }
    fn flops(&self, _inputs: &[&[usize]], _output: &[usize]) -> u64 {
        0
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[test]
fn an_op_from_outside_the_engine_runs_in_a_graph() {
    let mut r = rng(3);
    let mut g = Graph::new();
    let c = g.then("conv", conv(3, 4, &mut r));
    let s = g.then("square", Square);
    let out = g.then("relu", Relu);
    assert_eq!(g.receptive_field(out), Some(3));
    assert_eq!(g.nodes()[s].op.describe(), "Square");
    let x = random(&[1, 3, 6, 6], &mut r);
    let trace = g.forward(x.clone(), out).unwrap();
    let seed = random(trace.output().shape(), &mut r);
    let dx = g.backward(&trace, seed.clone()).unwrap();
    // Against the chain rule spelled out: relu(square(conv(x))).
    let y = g.forward(x.clone(), c).unwrap().output().clone();
    let cv = g.nodes()[c].op.downcast_ref::<Conv2d>().unwrap();
    let gy: Vec<f32> = y
        .data()
        .iter()
        .zip(seed.data())
        .map(|(y, s)| if y * y > 0.0 { 2.0 * y * s } else { 0.0 })
        .collect();
    let want = cv
        .backward(x.shape(), &Tensor::new(y.shape().to_vec(), gy).unwrap())
        .unwrap();
    assert_eq!(dx.data(), want.data());
}

#[test]
fn a_seed_on_a_node_the_pass_did_not_reach_is_an_error() {
    let (g, convs, _, _) = branches(true);
    let trace = g
        .forward(random(&[1, 3, 8, 8], &mut rng(4)), convs[0])
        .unwrap();
    let far = g.last();
    let err = g
        .backward_multi(&trace, vec![(far, Tensor::zeros(&[1, 16, 4, 4]))])
        .unwrap_err();
    assert!(err.to_string().contains("did not reach"), "{err}");
}

fn affine(c: usize, r: &mut rand_chacha::ChaCha8Rng) -> ChannelAffine {
    ChannelAffine {
        scale: (0..c).map(|_| r.gen_range(-2.0..2.0)).collect(),
        shift: (0..c).map(|_| r.gen_range(-1.0..1.0)).collect(),
    }
}

/// A batch norm wide enough that a ReLU6 after it meets both of its bounds.
fn wide_affine(c: usize, r: &mut rand_chacha::ChaCha8Rng) -> ChannelAffine {
    ChannelAffine {
        scale: (0..c).map(|_| r.gen_range(3.0..8.0)).collect(),
        shift: (0..c).map(|_| r.gen_range(0.0..4.0)).collect(),
    }
}

/// A 3×3 depthwise convolution over `c` channels.
fn depthwise(c: usize, stride: usize, r: &mut rand_chacha::ChaCha8Rng) -> Conv2d {
    let mut dw = conv(1, c, r);
    dw.in_channels = c;
    dw.groups = c;
    dw.stride = (stride, stride);
    dw.validate().unwrap();
    dw
}

/// A batch norm after a convolution that nobody else reads is folded into it: the convolution
/// does not run on its own, an activation after the norm fuses with the folded convolution,
/// and values and input gradients are those of the ops apart (asking for the convolutions'
/// outputs keeps them apart) up to rounding. Covered: 3×3 (Winograd), 1×1, strided (im2col),
/// depthwise (strided and not), with and without a bias, followed by ReLU6, ReLU, SiLU or
/// nothing; and a channel selection on a folded norm.
#[test]
fn a_batch_norm_folds_into_the_convolution_before_it() {
    let mut r = rng(21);
    let mut g = Graph::new();
    let mut c3 = conv(3, 16, &mut r);
    c3.bias = None;
    let c3 = g.push("c3", c3, &[0]);
    let bn1 = g.push("bn1", affine(16, &mut r), &[c3]);
    let relu = g.push("relu6", Relu6, &[bn1]);
    let mut c1 = conv(16, 24, &mut r);
    c1.kernel = (1, 1);
    c1.padding = Padding::symmetric(0);
    c1.weight.truncate(24 * 16);
    let c1 = g.push("c1", c1, &[relu]);
    let bn2 = g.push("bn2", wide_affine(24, &mut r), &[c1]);
    let relu6 = g.push("bn2.act", Relu6, &[bn2]);
    let dw = g.push("dw", depthwise(24, 2, &mut r), &[relu6]);
    let bn3 = g.push("bn3", affine(24, &mut r), &[dw]);
    let silu = g.push("silu", Unary(UnaryKind::Silu), &[bn3]);
    let dw2 = g.push("dw2", depthwise(24, 1, &mut r), &[silu]);
    let bn5 = g.push("bn5", wide_affine(24, &mut r), &[dw2]);
    let dw_relu6 = g.push("bn5.act", Relu6, &[bn5]);
    let mut cs = conv(24, 8, &mut r);
    cs.stride = (2, 2);
    cs.validate().unwrap();
    let cs = g.push("cs", cs, &[dw_relu6]);
    let bn4 = g.push("bn4", affine(8, &mut r), &[cs]);
    let out = g.push("out", Relu, &[bn4]);

    let x = random(&[2, 3, 19, 17], &mut rng(22));
    let convs = [c3, c1, dw, dw2, cs];
    let folded = g.forward(x.clone(), out).unwrap();
    for c in convs {
        assert!(folded.value(c).is_none(), "{c} ran on its own");
    }
    // The ReLU6s and the ReLU ran in the folded convolutions' passes (Winograd, a 1×1 GEMM,
    // im2col); the SiLU, which a convolution does not take, alone.
    assert_eq!(folded.fused_producer(relu), Some(bn1));
    assert_eq!(folded.fused_producer(relu6), Some(bn2));
    assert_eq!(folded.fused_producer(dw_relu6), Some(bn5));
    assert_eq!(folded.fused_producer(out), Some(bn4));
    assert!(folded.fused_producer(silu).is_none());
    // The clamps cut some values and kept others, so both sides of them were checked.
    for node in [relu6, dw_relu6] {
        let t = g.forward(x.clone(), node).unwrap();
        let v = t.output().data();
        assert!(v.contains(&0.0) && v.contains(&6.0) && v.iter().any(|&y| y > 0.0 && y < 6.0));
    }
    let plain = g
        .forward_multi(x.clone(), &[c3, c1, dw, dw2, cs, out])
        .unwrap();
    assert!(convs.iter().all(|&c| plain.value(c).is_some()));
    let close = |a: &Tensor, b: &Tensor, tol: f32, what: &str| {
        assert_eq!(a.shape(), b.shape());
        let scale = b.data().iter().fold(0f32, |m, v| m.max(v.abs()));
        for (u, v) in a.data().iter().zip(b.data()) {
            assert!(
                (u - v).abs() <= tol * scale,
                "{what}: {u} vs {v} (scale {scale})"
            );
        }
    };
    close(folded.output(), plain.output(), 1e-5, "forward");
    let seed = random(plain.output().shape(), &mut rng(23));
    let dx = g.backward(&folded, seed.clone()).unwrap();
    let dx_plain = g.backward(&plain, seed.clone()).unwrap();
    close(&dx, &dx_plain, 1e-5, "input gradient");

    // A gradient seeded at a folded norm flows through the folded convolution.
    let extra = random(&[2, 24, 19, 17], &mut rng(24));
    let both = g
        .backward_multi(
            &folded,
            vec![(out, Tensor::zeros(seed.shape())), (relu6, extra.clone())],
        )
        .unwrap();
    let want = g.backward_multi(&plain, vec![(relu6, extra)]).unwrap();
    close(&both, &want, 1e-5, "seeded at bn2.act");

    // Only channels 1 and 6 of the folded last norm computed.
    let some = g.forward_channels(x.clone(), &[out], &[1, 6]).unwrap();
    assert_eq!(some.computed_channels(out), Some(&[1usize, 6][..]));
    let mut seed_some = Tensor::zeros(seed.shape());
    let plane = seed.shape()[2] * seed.shape()[3];
    for b in 0..2 {
        for ch in [1, 6] {
            let at = (b * 8 + ch) * plane;
            seed_some.data_mut()[at..at + plane].copy_from_slice(&seed.data()[at..at + plane]);
        }
    }
    let dx_some = g.backward(&some, seed_some.clone()).unwrap();
    close(
        &dx_some,
        &g.backward(&plain, seed_some).unwrap(),
        1e-5,
        "selected",
    );

    // Replacing the norm (`node_mut`) is seen: the fold is made again from the new one.
    let doubled = {
        let a = g.nodes()[bn4].op.downcast_ref::<ChannelAffine>().unwrap();
        ChannelAffine {
            scale: a.scale.iter().map(|s| 2.0 * s).collect(),
            shift: a.shift.iter().map(|s| 2.0 * s).collect(),
        }
    };
    g.node_mut(bn4).op = doubled.into();
    let again = g.forward(x, out).unwrap();
    let twice: Vec<f32> = plain.output().data().iter().map(|v| 2.0 * v).collect();
    close(
        again.output(),
        &Tensor::new(seed.shape().to_vec(), twice).unwrap(),
        1e-5,
        "after node_mut",
    );
}
