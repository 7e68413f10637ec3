//! The data-movement and shape ops ONNX models need (Concat, Slice, Reshape, Transpose, Pad,
//! Resize, ReduceMean, MatMulConst, ConvTranspose2d): each forward pass against a naive
//! reference spelled out here with index arithmetic, each input gradient against finite
//! differences through the `Operator` trait, and each op's shape errors.

mod common;

use common::{check_gradient, random, rng};
use deepvis_engine::*;

fn fwd(op: &Op, inputs: &[&Tensor]) -> Tensor {
    let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
    let expected = op.output_shape(&shapes).expect("output shape");
    let y = op.forward(inputs).expect("forward");
    assert_eq!(
        y.shape(),
        &expected[..],
        "{op:?}: forward shape = output_shape"
    );
    y
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for i in (0..shape.len()).rev() {
        idx[i] = flat % shape[i];
        flat /= shape[i];
    }
    idx
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

fn shape_err(op: &Op, shapes: &[&[usize]]) -> String {
    match op.output_shape(shapes) {
        Err(EngineError::Shape(m)) => m,
        other => panic!("{op:?} on {shapes:?}: expected a shape error, got {other:?}"),
    }
}

fn grad_check(op: &Op, inputs: &[Tensor]) {
    check_gradient(op, inputs, 1e-2, 1e-3, 300);
}

// ---------------------------------------------------------------- Concat

fn naive_concat(inputs: &[&Tensor], axis: usize) -> Tensor {
    let mut out = inputs[0].shape().to_vec();
    out[axis] = inputs.iter().map(|t| t.shape()[axis]).sum();
    let n: usize = out.iter().product();
    let mut data = vec![0.0; n];
    for (flat, v) in data.iter_mut().enumerate() {
        let mut idx = unravel(flat, &out);
        let mut k = 0;
        while idx[axis] >= inputs[k].shape()[axis] {
            idx[axis] -= inputs[k].shape()[axis];
            k += 1;
        }
        *v = inputs[k].data()[ravel(&idx, inputs[k].shape())];
    }
    Tensor::new(out, data).unwrap()
}

#[test]
fn concat_matches_reference_and_gradient() {
    let mut r = rng(1);
    for (axis, shapes) in [
        (
            1,
            vec![vec![2, 3, 4, 5], vec![2, 1, 4, 5], vec![2, 2, 4, 5]],
        ),
        (2, vec![vec![3, 2, 1, 5], vec![3, 2, 4, 5]]),
        (
            3,
            vec![vec![2, 3, 4, 2], vec![2, 3, 4, 5], vec![2, 3, 4, 1]],
        ),
        (1, vec![vec![4, 7]]),
        (2, vec![vec![2, 3, 6], vec![2, 3, 1]]),
        // More than one parallel chunk, a single row at batch 1.
        (1, vec![vec![1, 40, 20, 20], vec![1, 24, 20, 20]]),
    ] {
        let xs: Vec<Tensor> = shapes.iter().map(|s| random(s, &mut r)).collect();
        let refs: Vec<&Tensor> = xs.iter().collect();
        let op = Op::new(Concat { axis });
        let y = fwd(&op, &refs);
        assert_eq!(
            y,
            naive_concat(&refs, axis),
            "concat axis {axis} {shapes:?}"
        );
        if xs[0].numel() < 5000 {
            grad_check(&op, &xs);
        }
    }
}

#[test]
fn concat_shape_errors() {
    let op = Op::new(Concat { axis: 1 });
    assert!(shape_err(&op, &[]).contains("no inputs"));
    shape_err(&op, &[&[2, 3, 4], &[2, 3, 5]]);
    shape_err(&op, &[&[2, 3, 4], &[3, 3, 4]]);
    shape_err(&op, &[&[2, 3, 4], &[2, 3]]);
    shape_err(&Op::new(Concat { axis: 0 }), &[&[2, 3], &[2, 3]]);
    shape_err(&Op::new(Concat { axis: 2 }), &[&[2, 3], &[2, 3]]);
    assert_eq!(op.receptive_field(), Field::Merge);
}

// ---------------------------------------------------------------- Slice

fn sl(axis: usize, start: i64, end: i64, step: i64) -> SliceAxis {
    SliceAxis {
        axis,
        start,
        end,
        step,
    }
}

/// Applies per-axis lists of kept input indices.
fn naive_take(x: &Tensor, keep: &[Vec<usize>]) -> Tensor {
    let out: Vec<usize> = keep.iter().map(|k| k.len()).collect();
    let n: usize = out.iter().product();
    let data = (0..n)
        .map(|flat| {
            let idx = unravel(flat, &out);
            let src: Vec<usize> = idx.iter().zip(keep).map(|(&i, k)| k[i]).collect();
            x.data()[ravel(&src, x.shape())]
        })
        .collect();
    Tensor::new(out, data).unwrap()
}

#[test]
fn slice_follows_onnx_semantics() {
    // (start, end, step) on a dim of 10, and the indices ONNX (numpy) keeps.
    let cases: Vec<(i64, i64, i64, Vec<usize>)> = vec![
        (1, -1, 1, (1..9).collect()),
        (-3, i64::MAX, 1, vec![7, 8, 9]),
        (i64::MAX, i64::MIN, -1, (0..10).rev().collect()),
        (-1, i64::MIN, -1, (0..10).rev().collect()),
        (8, 2, -2, vec![8, 6, 4]),
        (-1, -100, -3, vec![9, 6, 3, 0]),
        (100, 0, -1, (1..10).rev().collect()),
        (0, 100, 4, vec![0, 4, 8]),
        (-100, 3, 1, vec![0, 1, 2]),
        (2, 3, i64::MAX, vec![2]),
        (5, -6, -1, vec![5]),
    ];
    let mut r = rng(2);
    let x = random(&[2, 10, 3], &mut r);
    for (start, end, step, want) in cases {
        let op = Op::new(Slice {
            axes: vec![sl(1, start, end, step)],
        });
        let y = fwd(&op, &[&x]);
        let keep = vec![vec![0, 1], want.clone(), vec![0, 1, 2]];
        assert_eq!(
            y,
            naive_take(&x, &keep),
            "[{start}:{end}:{step}] → {want:?}"
        );
        grad_check(&op, std::slice::from_ref(&x));
    }
}

#[test]
fn slice_several_axes_and_changing_input_sizes() {
    let mut r = rng(3);
    let op = Op::new(Slice {
        axes: vec![sl(3, 1, -1, 2), sl(1, -2, i64::MAX, 1), sl(2, -1, 0, -2)],
    });
    // The same op on inputs of several spatial sizes: ends resolve against each.
    for (h, w) in [(5, 7), (6, 9), (3, 3)] {
        let x = random(&[3, 4, h, w], &mut r);
        let y = fwd(&op, &[&x]);
        let keep = vec![
            (0..3).collect(),
            vec![2, 3],
            (1..h).rev().step_by(2).collect(),
            (1..w - 1).step_by(2).collect(),
        ];
        assert_eq!(y, naive_take(&x, &keep), "{h}x{w}");
        grad_check(&op, &[x]);
    }
    // Spanning several parallel chunks, with a reversed inner axis.
    let x = random(&[2, 16, 30, 40], &mut r);
    let op = Op::new(Slice {
        axes: vec![sl(3, i64::MAX, i64::MIN, -3), sl(1, 3, 13, 1)],
    });
    let keep = vec![
        vec![0, 1],
        (3..13).collect(),
        (0..30).collect(),
        (0..40).rev().step_by(3).collect(),
    ];
    assert_eq!(fwd(&op, &[&x]), naive_take(&x, &keep));
}

#[test]
fn slice_shape_errors() {
    let s: &[usize] = &[2, 4, 5];
    let err = |axes: Vec<SliceAxis>| shape_err(&Op::new(Slice { axes }), &[s]);
    err(vec![sl(0, 0, 1, 1)]);
    err(vec![sl(3, 0, 1, 1)]);
    err(vec![sl(1, 0, 1, 0)]);
    assert!(err(vec![sl(2, 3, 3, 1)]).contains("empty"));
    assert!(err(vec![sl(2, 1, 4, -1)]).contains("empty"));
    assert!(err(vec![sl(1, 0, 2, 1), sl(1, 0, 1, 1)]).contains("twice"));
    let op = Op::new(Slice {
        axes: vec![sl(1, 0, 2, 1)],
    });
    shape_err(&op, &[s, s]);
}

// ---------------------------------------------------------------- Reshape

#[test]
fn reshape_resolves_keep_and_infer() {
    use ReshapeDim::*;
    let mut r = rng(4);
    let x = random(&[2, 3, 4, 5], &mut r);
    for (dims, want) in [
        (vec![Keep, Fixed(12), Infer], vec![2, 12, 5]),
        (vec![Keep, Infer], vec![2, 60]),
        (
            vec![Keep, Keep, Fixed(2), Infer, Fixed(5)],
            vec![2, 3, 2, 2, 5],
        ),
        (vec![Keep, Keep, Keep, Keep], vec![2, 3, 4, 5]),
        (vec![Keep, Fixed(60)], vec![2, 60]),
    ] {
        let op = Op::new(Reshape { dims: dims.clone() });
        let y = fwd(&op, &[&x]);
        assert_eq!(y.shape(), &want[..], "{dims:?}");
        assert_eq!(y.data(), x.data(), "{dims:?}: values unmoved");
        grad_check(&op, std::slice::from_ref(&x));
    }
    // The batch passes through whatever it is.
    let op = Op::new(Reshape {
        dims: vec![Keep, Infer],
    });
    assert_eq!(op.output_shape(&[&[7, 3, 2]]).unwrap(), vec![7, 6]);
    assert_eq!(op.receptive_field(), Field::Global);
}

#[test]
fn reshape_shape_errors() {
    use ReshapeDim::*;
    let s: &[usize] = &[2, 3, 4];
    let err = |dims: Vec<ReshapeDim>| shape_err(&Op::new(Reshape { dims }), &[s]);
    assert!(err(vec![Fixed(2), Infer]).contains("batch"));
    assert!(err(vec![Keep, Infer, Infer]).contains("more than one"));
    assert!(err(vec![Keep, Fixed(5)]).contains("counts"));
    assert!(err(vec![Keep, Fixed(5), Infer]).contains("inferred"));
    err(vec![Keep, Keep, Keep, Keep]);
    err(vec![Keep, Fixed(0), Infer]);
    err(vec![]);
}

// ---------------------------------------------------------------- Transpose

fn naive_transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let s = x.shape();
    let out: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
    let n = x.numel();
    let data = (0..n)
        .map(|flat| {
            let o = unravel(flat, &out);
            let mut i = vec![0; s.len()];
            for (k, &p) in perm.iter().enumerate() {
                i[p] = o[k];
            }
            x.data()[ravel(&i, s)]
        })
        .collect();
    Tensor::new(out, data).unwrap()
}

#[test]
fn transpose_matches_reference_and_gradient() {
    let mut r = rng(5);
    for (shape, perm) in [
        (vec![2, 3, 4, 5], vec![0, 2, 3, 1]),
        (vec![2, 4, 5, 3], vec![0, 3, 1, 2]),
        (vec![2, 3, 4, 5], vec![0, 2, 1, 3]),
        (vec![2, 3, 4, 5], vec![0, 3, 2, 1]),
        (vec![2, 3, 4, 5], vec![0, 1, 2, 3]),
        (vec![2, 3, 4, 5, 2], vec![0, 4, 1, 3, 2]),
        (vec![2, 3, 4, 5, 2], vec![0, 3, 4, 1, 2]),
        (vec![3, 5, 7], vec![0, 2, 1]),
        // Tiles with ragged edges in both directions.
        (vec![2, 40, 7, 9], vec![0, 2, 3, 1]),
        (vec![1, 7, 9, 70], vec![0, 3, 1, 2]),
    ] {
        let x = random(&shape, &mut r);
        let op = Op::new(Transpose { perm: perm.clone() });
        assert_eq!(
            fwd(&op, &[&x]),
            naive_transpose(&x, &perm),
            "{shape:?} {perm:?}"
        );
        grad_check(&op, &[x]);
    }
    // Large enough for several parallel tasks on the general path too.
    let x = random(&[2, 24, 30, 31], &mut r);
    for perm in [vec![0, 2, 3, 1], vec![0, 3, 2, 1]] {
        let op = Op::new(Transpose { perm: perm.clone() });
        assert_eq!(fwd(&op, &[&x]), naive_transpose(&x, &perm), "{perm:?}");
    }
}

#[test]
fn transpose_shape_errors() {
    let s: &[usize] = &[2, 3, 4, 5];
    let err = |perm: Vec<usize>| shape_err(&Op::new(Transpose { perm }), &[s]);
    err(vec![1, 0, 2, 3]);
    err(vec![0, 2, 3]);
    err(vec![0, 2, 2, 1]);
    err(vec![0, 1, 2, 4]);
    assert_eq!(
        Op::new(Transpose {
            perm: vec![0, 2, 3, 1]
        })
        .receptive_field(),
        Field::Pointwise
    );
}

// ---------------------------------------------------------------- Pad

fn naive_pad(x: &Tensor, pads: &[(usize, usize)], mode: PadMode, value: f32) -> Tensor {
    let s = x.shape();
    let out: Vec<usize> = s.iter().zip(pads).map(|(&d, &(b, a))| d + b + a).collect();
    let n: usize = out.iter().product();
    let data = (0..n)
        .map(|flat| {
            let o = unravel(flat, &out);
            let mut src = Vec::new();
            for ((&oi, &(b, _)), &d) in o.iter().zip(pads).zip(s) {
                let i = oi as i64 - b as i64;
                let d = d as i64;
                let j = match mode {
                    PadMode::Constant if i < 0 || i >= d => return value,
                    PadMode::Constant => i,
                    // numpy 'reflect': index -1 is 1, index d is d-2.
                    PadMode::Reflect if i < 0 => -i,
                    PadMode::Reflect if i >= d => 2 * (d - 1) - i,
                    PadMode::Reflect => i,
                    PadMode::Edge => i.max(0).min(d - 1),
                };
                src.push(j as usize);
            }
            x.data()[ravel(&src, s)]
        })
        .collect();
    Tensor::new(out, data).unwrap()
}

#[test]
fn pad_matches_reference_and_gradient() {
    let mut r = rng(6);
    for (shape, pads) in [
        (vec![2, 3, 4, 5], vec![(0, 0), (1, 2), (2, 1), (3, 0)]),
        (vec![2, 3, 4, 5], vec![(0, 0), (0, 0), (1, 1), (1, 1)]),
        (vec![1, 2, 3, 3], vec![(0, 0), (0, 0), (2, 2), (0, 2)]),
        (vec![3, 6], vec![(0, 0), (5, 4)]),
        (vec![2, 3, 4, 5], vec![(0, 0); 4]),
    ] {
        let x = random(&shape, &mut r);
        for mode in [PadMode::Constant, PadMode::Reflect, PadMode::Edge] {
            let op = Op::new(Pad {
                pads: pads.clone(),
                mode,
                value: 0.75,
            });
            let want = naive_pad(&x, &pads, mode, 0.75);
            assert_eq!(fwd(&op, &[&x]), want, "{shape:?} {pads:?} {mode:?}");
            grad_check(&op, std::slice::from_ref(&x));
        }
    }
    // Several parallel tasks.
    let x = random(&[2, 8, 40, 50], &mut r);
    let pads = vec![(0, 0), (0, 1), (3, 3), (2, 5)];
    for mode in [PadMode::Constant, PadMode::Reflect, PadMode::Edge] {
        let op = Op::new(Pad {
            pads: pads.clone(),
            mode,
            value: -1.0,
        });
        assert_eq!(
            fwd(&op, &[&x]),
            naive_pad(&x, &pads, mode, -1.0),
            "{mode:?}"
        );
    }
}

#[test]
fn pad_shape_errors() {
    let pad = |pads: Vec<(usize, usize)>, mode| {
        Op::new(Pad {
            pads,
            mode,
            value: 0.0,
        })
    };
    let s: &[usize] = &[2, 3, 4];
    shape_err(&pad(vec![(0, 0), (1, 1)], PadMode::Constant), &[s]);
    assert!(
        shape_err(&pad(vec![(1, 0), (0, 0), (0, 0)], PadMode::Constant), &[s]).contains("batch")
    );
    assert!(
        shape_err(&pad(vec![(0, 0), (0, 0), (4, 0)], PadMode::Reflect), &[s]).contains("smaller")
    );
    assert!(
        shape_err(&pad(vec![(0, 0), (0, 3), (0, 0)], PadMode::Reflect), &[s]).contains("smaller")
    );
    // Edge has no such limit.
    let op = pad(vec![(0, 0), (0, 3), (9, 0)], PadMode::Edge);
    assert_eq!(op.output_shape(&[s]).unwrap(), vec![2, 6, 13]);
    assert_eq!(op.receptive_field(), Field::Pointwise);
}

// ---------------------------------------------------------------- Resize

/// ONNX Resize on [N, C, H, W], written from the spec's formulas (f32 coordinates, as
/// onnxruntime computes them).
fn naive_resize(x: &Tensor, op: &Resize) -> Tensor {
    let (n, c, h, w) = x.dims4().unwrap();
    let (oh, ow, sh, sw) = match op.to {
        ResizeTo::Scales(sh, sw) => (
            (h as f32 * sh).floor() as usize,
            (w as f32 * sw).floor() as usize,
            sh,
            sw,
        ),
        ResizeTo::Size(oh, ow) => (oh, ow, oh as f32 / h as f32, ow as f32 / w as f32),
    };
    let orig = |xr: usize, len: usize, out: usize, scale: f32| -> f32 {
        let xr = xr as f32;
        match op.coord {
            CoordMode::HalfPixel => (xr + 0.5) / scale - 0.5,
            CoordMode::PytorchHalfPixel => {
                if out > 1 {
                    (xr + 0.5) / scale - 0.5
                } else {
                    0.0
                }
            }
            CoordMode::AlignCorners => {
                if out > 1 {
                    xr * (len as f32 - 1.0) / (out as f32 - 1.0)
                } else {
                    0.0
                }
            }
            CoordMode::Asymmetric => xr / scale,
        }
    };
    let nearest = |v: f32, len: usize| -> usize {
        let r = match op.nearest {
            NearestMode::Floor => v.floor(),
            NearestMode::Ceil => v.ceil(),
            NearestMode::RoundPreferFloor => {
                if v - v.floor() == 0.5 {
                    v.floor()
                } else {
                    v.round()
                }
            }
            NearestMode::RoundPreferCeil => {
                if v - v.floor() == 0.5 {
                    v.ceil()
                } else {
                    v.round()
                }
            }
        };
        (r.max(0.0) as usize).min(len - 1)
    };
    let mut out = vec![0.0; n * c * oh * ow];
    for p in 0..n * c {
        let plane = &x.data()[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let (fy, fx) = (orig(oy, h, oh, sh), orig(ox, w, ow, sw));
                out[(p * oh + oy) * ow + ox] = match op.mode {
                    ResizeMode::Nearest => plane[nearest(fy, h) * w + nearest(fx, w)],
                    ResizeMode::Linear => {
                        let fy = fy.max(0.0).min(h as f32 - 1.0);
                        let fx = fx.max(0.0).min(w as f32 - 1.0);
                        let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
                        let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
                        let (ly, lx) = (fy - y0 as f32, fx - x0 as f32);
                        let at = |y: usize, x: usize| plane[y * w + x];
                        (1.0 - ly) * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1))
                            + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1))
                    }
                };
            }
        }
    }
    Tensor::new(vec![n, c, oh, ow], out).unwrap()
}

fn resize(mode: ResizeMode, coord: CoordMode, nearest: NearestMode, to: ResizeTo) -> Resize {
    Resize {
        mode,
        coord,
        nearest,
        to,
    }
}

#[test]
fn resize_matches_pytorch_on_known_values() {
    use CoordMode::*;
    let x = Tensor::new(vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    // F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)
    let op = Op::new(resize(
        ResizeMode::Linear,
        PytorchHalfPixel,
        NearestMode::Floor,
        ResizeTo::Scales(2.0, 2.0),
    ));
    #[rustfmt::skip]
    let want = [
        1.0, 1.25, 1.75, 2.0,
        1.5, 1.75, 2.25, 2.5,
        2.5, 2.75, 3.25, 3.5,
        3.0, 3.25, 3.75, 4.0,
    ];
    assert_close(fwd(&op, &[&x]).data(), &want, 1e-6, "bilinear x2");
    // align_corners=True, size=4
    let op = Op::new(resize(
        ResizeMode::Linear,
        AlignCorners,
        NearestMode::Floor,
        ResizeTo::Size(4, 4),
    ));
    let t = 1.0 / 3.0;
    #[rustfmt::skip]
    let want = [
        1.0, 1.0 + t, 2.0 - t, 2.0,
        1.0 + 2.0 * t, 2.0, 2.0 + t, 3.0 - t,
        3.0 - 2.0 * t, 3.0 - t, 3.0, 3.0 + t,
        3.0, 3.0 + t, 4.0 - t, 4.0,
    ];
    assert_close(
        fwd(&op, &[&x]).data(),
        &want,
        1e-6,
        "bilinear align_corners",
    );
    // F.interpolate(x, size=(3, 3), mode='nearest'): asymmetric + floor, source floor(i·2/3).
    let op = Op::new(resize(
        ResizeMode::Nearest,
        Asymmetric,
        NearestMode::Floor,
        ResizeTo::Size(3, 3),
    ));
    let want = [1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0];
    assert_close(fwd(&op, &[&x]).data(), &want, 0.0, "nearest 2→3");
    // Half-pixel downsampling by 2 averages 2×2 blocks.
    let x = Tensor::new(vec![1, 1, 2, 4], (0..8).map(|v| v as f32).collect()).unwrap();
    let op = Op::new(resize(
        ResizeMode::Linear,
        HalfPixel,
        NearestMode::Floor,
        ResizeTo::Scales(0.5, 0.5),
    ));
    assert_close(fwd(&op, &[&x]).data(), &[2.5, 4.5], 1e-6, "bilinear /2");
}

#[test]
fn resize_matches_reference_and_gradient() {
    use CoordMode::*;
    use NearestMode::*;
    let mut r = rng(7);
    let mut cases = Vec::new();
    for coord in [HalfPixel, PytorchHalfPixel, AlignCorners, Asymmetric] {
        for to in [
            ResizeTo::Scales(2.0, 2.0),
            ResizeTo::Scales(1.5, 0.5),
            ResizeTo::Scales(0.7, 3.0),
            ResizeTo::Size(9, 4),
            ResizeTo::Size(1, 1),
            ResizeTo::Size(5, 7),
        ] {
            cases.push(resize(ResizeMode::Linear, coord, Floor, to));
            for nearest in [RoundPreferFloor, RoundPreferCeil, Floor, Ceil] {
                cases.push(resize(ResizeMode::Nearest, coord, nearest, to));
            }
        }
    }
    for (k, op) in cases.into_iter().enumerate() {
        let shape = [[2, 3, 5, 7], [1, 2, 4, 4], [2, 1, 2, 3]][k % 3];
        let x = random(&shape, &mut r);
        let want = naive_resize(&x, &op);
        let op = Op::new(op);
        assert_close(
            fwd(&op, &[&x]).data(),
            want.data(),
            1e-6,
            &format!("{op:?} {shape:?}"),
        );
        if k % 2 == 0 {
            grad_check(&op, &[x]);
        }
    }
    // Output size follows the input: floor(H·scale), and 10·0.7 is 7 in f32 as in onnxruntime.
    let op = Op::new(resize(
        ResizeMode::Nearest,
        Asymmetric,
        Floor,
        ResizeTo::Scales(0.7, 2.0),
    ));
    assert_eq!(
        op.output_shape(&[&[3, 2, 10, 5]]).unwrap(),
        vec![3, 2, 7, 10]
    );
    assert_eq!(
        op.output_shape(&[&[3, 2, 9, 6]]).unwrap(),
        vec![3, 2, 6, 12]
    );
}

#[test]
fn resize_shape_errors() {
    let op = |to| {
        Op::new(resize(
            ResizeMode::Linear,
            CoordMode::HalfPixel,
            NearestMode::Floor,
            to,
        ))
    };
    shape_err(&op(ResizeTo::Scales(2.0, 2.0)), &[&[2, 3, 4]]);
    shape_err(&op(ResizeTo::Scales(0.0, 2.0)), &[&[2, 3, 4, 4]]);
    shape_err(&op(ResizeTo::Scales(f32::NAN, 2.0)), &[&[2, 3, 4, 4]]);
    assert!(shape_err(&op(ResizeTo::Scales(0.1, 1.0)), &[&[2, 3, 5, 4]]).contains("empty"));
    shape_err(&op(ResizeTo::Size(0, 3)), &[&[2, 3, 5, 4]]);
    shape_err(&op(ResizeTo::Size(3, 3)), &[&[2, 3, 0, 4]]);
}

// ---------------------------------------------------------------- ReduceMean

fn naive_reduce_mean(x: &Tensor, axes: &[usize], keepdims: bool) -> Tensor {
    let s = x.shape();
    let kept: Vec<usize> = (0..s.len())
        .map(|i| if axes.contains(&i) { 1 } else { s[i] })
        .collect();
    let count: usize = axes.iter().map(|&a| s[a]).product();
    let mut sums = vec![0f64; kept.iter().product()];
    for flat in 0..x.numel() {
        let mut idx = unravel(flat, s);
        for &a in axes {
            idx[a] = 0;
        }
        sums[ravel(&idx, &kept)] += x.data()[flat] as f64;
    }
    let out = if keepdims {
        kept
    } else {
        (0..s.len())
            .filter(|i| !axes.contains(i))
            .map(|i| s[i])
            .collect()
    };
    Tensor::new(
        out,
        sums.iter().map(|v| (v / count as f64) as f32).collect(),
    )
    .unwrap()
}

#[test]
fn reduce_mean_matches_reference_and_gradient() {
    let mut r = rng(8);
    for (shape, axes) in [
        (vec![2, 3, 4, 5], vec![2, 3]),
        (vec![2, 3, 4, 5], vec![1]),
        (vec![2, 3, 4, 5], vec![1, 3]),
        (vec![2, 3, 4, 5], vec![3]),
        (vec![2, 3, 4, 5], vec![2]),
        (vec![2, 3, 4, 5], vec![1, 2, 3]),
        (vec![3, 7], vec![1]),
        (vec![1, 64, 33, 35], vec![2, 3]),
        (vec![2, 20, 30, 40], vec![1]),
    ] {
        let x = random(&shape, &mut r);
        for keepdims in [true, false] {
            let op = Op::new(ReduceMean {
                axes: axes.clone(),
                keepdims,
            });
            let want = naive_reduce_mean(&x, &axes, keepdims);
            let y = fwd(&op, &[&x]);
            assert_eq!(y.shape(), want.shape(), "{shape:?} {axes:?} {keepdims}");
            assert_close(y.data(), want.data(), 1e-5, &format!("{shape:?} {axes:?}"));
            if x.numel() < 1000 {
                grad_check(&op, std::slice::from_ref(&x));
            }
        }
    }
}

#[test]
fn reduce_mean_shape_errors_and_field() {
    let op = |axes: Vec<usize>| {
        Op::new(ReduceMean {
            axes,
            keepdims: true,
        })
    };
    let s: &[usize] = &[2, 3, 4, 5];
    shape_err(&op(vec![0, 1]), &[s]);
    shape_err(&op(vec![3, 2]), &[s]);
    shape_err(&op(vec![2, 2]), &[s]);
    shape_err(&op(vec![4]), &[s]);
    shape_err(&op(vec![]), &[s]);
    assert_eq!(op(vec![1]).receptive_field(), Field::Pointwise);
    assert_eq!(op(vec![2, 3]).receptive_field(), Field::Global);
}

// ---------------------------------------------------------------- MatMulConst

#[test]
fn matmul_const_matches_reference_and_gradient() {
    let mut r = rng(9);
    for (shape, m, bias) in [
        (vec![2, 3, 4, 5], 6, true),
        (vec![3, 5], 2, false),
        (vec![2, 7, 5], 1, true),
    ] {
        let k = *shape.last().unwrap();
        let x = random(&shape, &mut r);
        let weight = random(&[k, m], &mut r).into_data();
        let bias = bias.then(|| random(&[m], &mut r).into_data());
        let op = MatMulConst {
            k,
            m,
            weight: weight.clone(),
            bias: bias.clone(),
        };
        let rows = x.numel() / k;
        let mut want = vec![0.0; rows * m];
        for row in 0..rows {
            for j in 0..m {
                let mut acc = bias.as_ref().map_or(0.0, |b| b[j] as f64);
                for i in 0..k {
                    acc += x.data()[row * k + i] as f64 * weight[i * m + j] as f64;
                }
                want[row * m + j] = acc as f32;
            }
        }
        let op = Op::new(op);
        let y = fwd(&op, &[&x]);
        let mut out = shape.clone();
        *out.last_mut().unwrap() = m;
        assert_eq!(y.shape(), &out[..]);
        assert_close(y.data(), &want, 1e-5, &format!("{shape:?} → {m}"));
        assert_eq!(op.flops(&[&shape], &out), 2 * (rows * m * k) as u64);
        grad_check(&op, &[x]);
    }
}

#[test]
fn matmul_const_shape_errors() {
    let op = |k: usize, m: usize, w: usize, b: Option<usize>| {
        Op::new(MatMulConst {
            k,
            m,
            weight: vec![0.5; w],
            bias: b.map(|b| vec![0.0; b]),
        })
    };
    shape_err(&op(4, 3, 12, None), &[&[2, 5]]);
    shape_err(&op(4, 3, 12, None), &[&[4]]);
    shape_err(&op(4, 3, 11, None), &[&[2, 4]]);
    shape_err(&op(4, 3, 12, Some(4)), &[&[2, 4]]);
    assert_eq!(
        op(4, 3, 12, Some(3)).output_shape(&[&[2, 9, 4]]).unwrap(),
        vec![2, 9, 3]
    );
}

// ---------------------------------------------------------------- ConvTranspose2d

/// The transposed convolution as PyTorch defines it: every input value scatters
/// x·w[ic, oc, ky, kx] to output (iy·s − pt + ky·d, ix·s − pl + kx·d).
fn naive_conv_transpose(x: &Tensor, c: &ConvTranspose2d) -> Tensor {
    let (n, cin, h, w) = x.dims4().unwrap();
    let (kh, kw) = c.kernel;
    let (pt, pl, pb, pr) = c.pads;
    let oh = (h - 1) * c.stride.0 + c.dilation.0 * (kh - 1) + c.output_padding.0 + 1 - pt - pb;
    let ow = (w - 1) * c.stride.1 + c.dilation.1 * (kw - 1) + c.output_padding.1 + 1 - pl - pr;
    let (cin_g, cout_g) = (cin / c.groups, c.out_channels / c.groups);
    let cout = c.out_channels;
    let mut out = vec![0f64; n * cout * oh * ow];
    for b in 0..n {
        for o in 0..cout {
            let bias = c.bias.as_ref().map_or(0.0, |v| v[o] as f64);
            for v in &mut out[(b * cout + o) * oh * ow..][..oh * ow] {
                *v = bias;
            }
        }
        for ic in 0..cin {
            let g = ic / cin_g;
            for j in 0..cout_g {
                let o = g * cout_g + j;
                for iy in 0..h {
                    for ix in 0..w {
                        let xv = x.data()[((b * cin + ic) * h + iy) * w + ix] as f64;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let oy =
                                    (iy * c.stride.0 + ky * c.dilation.0) as isize - pt as isize;
                                let ox =
                                    (ix * c.stride.1 + kx * c.dilation.1) as isize - pl as isize;
                                if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                    continue;
                                }
                                let wv = c.weight[((ic * cout_g + j) * kh + ky) * kw + kx] as f64;
                                out[((b * cout + o) * oh + oy as usize) * ow + ox as usize] +=
                                    xv * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    Tensor::new(
        vec![n, cout, oh, ow],
        out.iter().map(|&v| v as f32).collect(),
    )
    .unwrap()
}

struct TCase {
    n: usize,
    cin: usize,
    cout: usize,
    hw: (usize, usize),
    k: (usize, usize),
    s: (usize, usize),
    d: (usize, usize),
    groups: usize,
    pads: (usize, usize, usize, usize),
    op: (usize, usize),
}

fn tconv(c: &TCase, r: &mut rand_chacha::ChaCha8Rng) -> ConvTranspose2d {
    ConvTranspose2d {
        in_channels: c.cin,
        out_channels: c.cout,
        kernel: c.k,
        stride: c.s,
        dilation: c.d,
        groups: c.groups,
        pads: c.pads,
        output_padding: c.op,
        weight: random(&[c.cin, c.cout / c.groups, c.k.0, c.k.1], r).into_data(),
        bias: Some(random(&[c.cout], r).into_data()),
    }
}

#[test]
fn conv_transpose_matches_scatter_reference_and_gradient() {
    let cases = [
        // The usual ×2 upsampling (k4 s2 p1), and k2 s2.
        TCase {
            n: 2,
            cin: 3,
            cout: 4,
            hw: (5, 6),
            k: (4, 4),
            s: (2, 2),
            d: (1, 1),
            groups: 1,
            pads: (1, 1, 1, 1),
            op: (0, 0),
        },
        TCase {
            n: 1,
            cin: 4,
            cout: 2,
            hw: (3, 4),
            k: (2, 2),
            s: (2, 2),
            d: (1, 1),
            groups: 1,
            pads: (0, 0, 0, 0),
            op: (0, 0),
        },
        // k3 s2 p1 with output_padding 1: the PyTorch idiom for exact ×2.
        TCase {
            n: 2,
            cin: 2,
            cout: 3,
            hw: (4, 5),
            k: (3, 3),
            s: (2, 2),
            d: (1, 1),
            groups: 1,
            pads: (1, 1, 1, 1),
            op: (1, 1),
        },
        // Asymmetric pads and strides, output padding larger than the bottom pad.
        TCase {
            n: 1,
            cin: 2,
            cout: 2,
            hw: (4, 3),
            k: (3, 2),
            s: (3, 2),
            d: (1, 1),
            groups: 1,
            pads: (2, 0, 0, 1),
            op: (2, 1),
        },
        // Groups and dilation.
        TCase {
            n: 2,
            cin: 4,
            cout: 6,
            hw: (4, 4),
            k: (3, 3),
            s: (2, 1),
            d: (2, 2),
            groups: 2,
            pads: (1, 2, 0, 1),
            op: (1, 0),
        },
        // Depthwise-like: groups = channels.
        TCase {
            n: 1,
            cin: 3,
            cout: 3,
            hw: (5, 5),
            k: (3, 3),
            s: (1, 1),
            d: (1, 1),
            groups: 3,
            pads: (1, 1, 1, 1),
            op: (0, 0),
        },
        // output_padding ≥ stride (allowed by dilation): trailing rows get only the bias.
        TCase {
            n: 1,
            cin: 2,
            cout: 3,
            hw: (3, 4),
            k: (2, 2),
            s: (1, 1),
            d: (3, 2),
            groups: 1,
            pads: (0, 0, 0, 0),
            op: (2, 1),
        },
        TCase {
            n: 2,
            cin: 2,
            cout: 2,
            hw: (3, 3),
            k: (2, 3),
            s: (2, 1),
            d: (3, 2),
            groups: 1,
            pads: (1, 0, 0, 1),
            op: (2, 1),
        },
        // t = op − pb = 3 ≥ s = 2 and t mod s = 1: only the last two rows lie beyond the
        // convolution; the row before them is still reached.
        TCase {
            n: 1,
            cin: 2,
            cout: 2,
            hw: (3, 3),
            k: (2, 2),
            s: (2, 1),
            d: (4, 1),
            groups: 1,
            pads: (0, 0, 0, 0),
            op: (3, 0),
        },
        // Stride 1, 3×3: the Winograd path of the underlying convolution.
        TCase {
            n: 1,
            cin: 8,
            cout: 8,
            hw: (12, 12),
            k: (3, 3),
            s: (1, 1),
            d: (1, 1),
            groups: 1,
            pads: (1, 1, 1, 1),
            op: (0, 0),
        },
    ];
    let mut r = rng(10);
    for (i, c) in cases.iter().enumerate() {
        let t = tconv(c, &mut r);
        let x = random(&[c.n, c.cin, c.hw.0, c.hw.1], &mut r);
        let want = naive_conv_transpose(&x, &t);
        let op = Op::new(t);
        let y = fwd(&op, &[&x]);
        assert_eq!(y.shape(), want.shape(), "case {i}");
        assert_close(y.data(), want.data(), 2e-4, &format!("case {i}"));
        check_gradient(&op, &[x], 1e-2, 2e-3, 200);
    }
}

#[test]
fn conv_transpose_shape_errors() {
    let mut r = rng(11);
    let c = TCase {
        n: 1,
        cin: 4,
        cout: 2,
        hw: (3, 3),
        k: (3, 3),
        s: (2, 2),
        d: (1, 1),
        groups: 2,
        pads: (1, 1, 1, 1),
        op: (0, 0),
    };
    let t = tconv(&c, &mut r);
    let op = Op::new(t.clone());
    assert_eq!(op.output_shape(&[&[5, 4, 3, 3]]).unwrap(), vec![5, 2, 5, 5]);
    shape_err(&op, &[&[1, 3, 3, 3]]);
    shape_err(&op, &[&[1, 4, 3]]);
    let mut bad = t.clone();
    bad.weight.pop();
    shape_err(&Op::new(bad), &[&[1, 4, 3, 3]]);
    let mut bad = t.clone();
    bad.groups = 3;
    shape_err(&Op::new(bad), &[&[1, 4, 3, 3]]);
    let mut bad = t.clone();
    bad.bias = Some(vec![0.0; 3]);
    shape_err(&Op::new(bad), &[&[1, 4, 3, 3]]);
    let mut bad = t;
    bad.pads = (3, 3, 3, 3);
    assert!(shape_err(&Op::new(bad), &[&[1, 4, 1, 1]]).contains("empty"));
}

// ---------------------------------------------------------------- all ops

#[test]
fn backward_rejects_a_gradient_of_the_wrong_shape() {
    let x: &[usize] = &[2, 3, 4, 5];
    let ops: Vec<Op> = vec![
        Op::new(Concat { axis: 1 }),
        Op::new(Slice {
            axes: vec![sl(2, 0, 2, 1)],
        }),
        Op::new(Transpose {
            perm: vec![0, 2, 3, 1],
        }),
        Op::new(Pad {
            pads: vec![(0, 0), (0, 0), (1, 1), (1, 1)],
            mode: PadMode::Reflect,
            value: 0.0,
        }),
        Op::new(resize(
            ResizeMode::Linear,
            CoordMode::HalfPixel,
            NearestMode::Floor,
            ResizeTo::Scales(2.0, 2.0),
        )),
        Op::new(ReduceMean {
            axes: vec![2, 3],
            keepdims: true,
        }),
        Op::new(MatMulConst {
            k: 5,
            m: 2,
            weight: vec![0.0; 10],
            bias: None,
        }),
    ];
    for op in ops {
        let saved = Saved::new("t", vec![x], vec![None], None);
        let wrong = Tensor::zeros(&[2, 3, 4, 4]);
        assert!(
            matches!(op.backward(&saved, wrong), Err(EngineError::Shape(_))),
            "{op:?}"
        );
        assert!(!op.describe().is_empty());
        assert_eq!(op.backward_needs(), Needs::NOTHING);
    }
}
