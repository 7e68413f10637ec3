//! ShuffleNet's channel shuffle: the forward pass against the view/transpose/view it stands
//! for, at several spatial sizes, its gradient against finite differences, and its shape errors.

mod common;

use common::{check_gradient, random, rng};
use deepvis_engine::*;

/// torch's `x.view(n, g, c/g, h, w).transpose(1, 2).reshape(n, c, h, w)` with index arithmetic.
fn reference(x: &Tensor, g: usize) -> Vec<f32> {
    let s = x.shape();
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let per = c / g;
    let mut out = vec![0.0; x.numel()];
    for b in 0..n {
        for i in 0..g {
            for j in 0..per {
                for p in 0..h * w {
                    // view position (b, i, j) moves to (b, j, i), channel j·g + i.
                    out[((b * c) + j * g + i) * h * w + p] =
                        x.data()[((b * c) + i * per + j) * h * w + p];
                }
            }
        }
    }
    out
}

#[test]
fn channel_shuffle_is_view_transpose_view_at_any_size() {
    let mut r = rng(3);
    for (shape, g) in [
        ([1, 8, 5, 7], 2),
        ([2, 12, 3, 4], 3),
        ([1, 6, 1, 1], 2),
        ([2, 4, 9, 2], 4),
        ([1, 10, 4, 4], 1),
    ] {
        let x = random(&shape, &mut r);
        let op: Op = ChannelShuffle { groups: g }.into();
        assert_eq!(op.output_shape(&[&shape]).unwrap(), shape.to_vec());
        let y = op.forward(&[&x]).unwrap();
        assert_eq!(y.shape(), &shape);
        assert_eq!(y.data(), &reference(&x, g)[..], "{shape:?} g={g}");
    }
}

#[test]
fn channel_shuffle_gradient_matches_finite_differences() {
    let mut r = rng(4);
    for (shape, g) in [([1, 8, 3, 5], 2), ([2, 6, 2, 3], 3)] {
        let x = random(&shape, &mut r);
        check_gradient(&ChannelShuffle { groups: g }.into(), &[x], 1e-2, 1e-3, 200);
    }
}

#[test]
fn channel_shuffle_rejects_channels_not_divisible_by_groups() {
    let op: Op = ChannelShuffle { groups: 2 }.into();
    assert!(op.output_shape(&[&[1, 7, 4, 4]]).is_err());
    assert!(op.output_shape(&[&[1, 8, 4, 4], &[1, 8, 4, 4]]).is_err());
    assert!(ChannelShuffle { groups: 0 }
        .output_shape(&[&[1, 8, 4, 4]])
        .is_err());
}
