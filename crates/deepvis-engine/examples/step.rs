//! One activation-maximization step on VGG16's feature extractor with random weights, built
//! from engine ops only (no weight files), for timing the engine alone:
//!
//!     cargo run --release -p deepvis-engine --example step -- [--layer 28] [--size 224]
//!         [--batch 1] [--iters 9] [--algo auto|im2col|winograd] [--precision f32|bf16]
//!         [--profile] [--all-channels] [--pair]
//!
//! `--pair` times two steps side by side, one per thread (as `deepvis filters` renders
//! single images with `--jobs 2`); its time is for both. Prints the median wall time per step, CPU time per step (user and system, so page-fault
//! overhead shows), and with `--profile` the time of every op forward and backward.

use deepvis_engine::*;
use std::time::Instant;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

fn vgg16(layer: usize) -> Graph {
    const CFG: [i32; 18] = [
        64, 64, -1, 128, 128, -1, 256, 256, 256, -1, 512, 512, 512, -1, 512, 512, 512, -1,
    ];
    let mut g = Graph::new();
    let mut seed = 1u64;
    let mut cin = 3;
    let mut idx = 0;
    for &c in &CFG {
        if idx > layer {
            break;
        }
        if c < 0 {
            g.then(format!("features.{idx}"), MaxPool2d::square(2, 2));
            idx += 1;
            continue;
        }
        let c = c as usize;
        let scale = (2.0 / (cin * 9) as f32).sqrt() * 2.0;
        let conv = Conv2d {
            in_channels: cin,
            out_channels: c,
            kernel: (3, 3),
            stride: (1, 1),
            dilation: (1, 1),
            groups: 1,
            padding: Padding::symmetric(1),
            weight: (0..c * cin * 9).map(|_| lcg(&mut seed) * scale).collect(),
            bias: Some((0..c).map(|_| lcg(&mut seed) * 0.1).collect()),
            cache: ConvCache::default(),
        };
        g.then(format!("features.{idx}"), conv);
        g.then(format!("features.{}", idx + 1), Relu);
        idx += 2;
        cin = c;
    }
    g
}

fn cpu_seconds() -> (f64, f64) {
    // /proc/self/stat fields 14 and 15: utime and stime in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (tick(11), tick(12))
}

fn main() {
    retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let layer: usize = arg("--layer", "28").parse().expect("--layer N");
    let size: usize = arg("--size", "224").parse().expect("--size N");
    let batch: usize = arg("--batch", "1").parse().expect("--batch N");
    let iters: usize = arg("--iters", "9").parse().expect("--iters N");
    let algo = ConvAlgo::parse(&arg("--algo", "auto")).expect("--algo auto|im2col|winograd");
    let profile = args.iter().any(|a| a == "--profile");
    let pair = args.iter().any(|a| a == "--pair");
    if pair {
        set_concurrent_passes(2);
    }
    set_conv_algo(algo);
    let prec = Precision::parse(&arg("--precision", "f32")).expect("--precision f32|bf16");
    if let Err(e) = set_precision(prec) {
        eprintln!("{e}");
        std::process::exit(2);
    }

    let graph = vgg16(layer);
    let target = graph
        .find(&format!("features.{layer}"))
        .expect("layer exists");
    let shape = [batch, 3, size, size];
    let mut seed = 7u64;
    let x = Tensor::new(
        shape.to_vec(),
        (0..shape.iter().product::<usize>())
            .map(|_| lcg(&mut seed))
            .collect(),
    )
    .expect("shape");
    let all_channels = args.iter().any(|a| a == "--all-channels");
    // As the render loop does: the whole step on a pool worker.
    let step = |x: &Tensor| {
        on_pool(|| {
            // The objective reads channel 15 only; --all-channels computes the whole last layer.
            let trace = if all_channels {
                graph.forward(x.clone(), target)
            } else {
                graph.forward_channels(x.clone(), &[target], &[15])
            }
            .expect("forward");
            let out = trace.output();
            let mut g = Tensor::zeros(out.shape());
            let plane: usize = out.shape()[2..].iter().product();
            let c = out.shape()[1];
            for (i, p) in g.data_mut().chunks_mut(plane).enumerate() {
                if i % c == 15 % c {
                    p.fill(1.0 / plane as f32);
                }
            }
            graph.backward(&trace, g).expect("backward")
        })
    };
    for _ in 0..2 {
        std::hint::black_box(step(&x));
    }
    if prec == Precision::Bf16 {
        // How far bf16 moves the input gradient from float32's.
        let low = step(&x);
        set_precision(Precision::F32).expect("f32");
        let high = step(&x);
        set_precision(prec).expect("bf16");
        let scale = high.data().iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = low
            .data()
            .iter()
            .zip(high.data())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
        for (a, b) in low.data().iter().zip(high.data()) {
            ab += (*a as f64) * (*b as f64);
            aa += (*a as f64) * (*a as f64);
            bb += (*b as f64) * (*b as f64);
        }
        eprintln!(
            "bf16 vs f32 input gradient: max |diff| / max |f32| = {:.2e}, cosine = {:.6}",
            err / scale,
            ab / (aa.sqrt() * bb.sqrt())
        );
    }
    let mut times = Vec::new();
    let (u0, s0) = cpu_seconds();
    for _ in 0..iters {
        let t = Instant::now();
        if pair {
            on_pool(|| std::hint::black_box(rayon::join(|| step(&x), || step(&x))));
        } else {
            std::hint::black_box(step(&x));
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (u1, s1) = cpu_seconds();
    times.sort_by(f64::total_cmp);
    let flops = 2 * graph.forward_flops(&shape, target).expect("flops");
    let ms = times[times.len() / 2];
    println!(
        "{{\"layer\":{layer},\"size\":{size},\"batch\":{batch},\"algo\":\"{algo:?}\",\"precision\":\"{prec:?}\",\"ms_per_step\":{ms:.2},\"min_ms\":{:.2},\"max_ms\":{:.2},\"gflop_per_s\":{:.1},\"user_ms_per_step\":{:.1},\"sys_ms_per_step\":{:.1}}}",
        times[0],
        times[times.len() - 1],
        flops as f64 / 1e6 / ms,
        (u1 - u0) * 1e3 / iters as f64,
        (s1 - s0) * 1e3 / iters as f64
    );
    if profile {
        let mut values = vec![x.clone()];
        let mut fwd = Vec::new();
        for node in &graph.nodes()[1..=target] {
            let input = values.last().expect("input");
            let t = Instant::now();
            let y = node.op.forward(&[input]).expect("forward");
            fwd.push(t.elapsed().as_secs_f64() * 1e3);
            values.push(y);
        }
        let mut g = Tensor::full(values[target].shape(), 1e-3);
        for (i, node) in graph.nodes()[1..=target].iter().enumerate().rev() {
            let t = Instant::now();
            let saved = Saved::new(
                &node.name,
                vec![values[i].shape()],
                vec![Some(&values[i])],
                Some(&values[i + 1]),
            );
            g = node.op.backward(&saved, g).expect("backward").remove(0);
            let bwd = t.elapsed().as_secs_f64() * 1e3;
            println!(
                "{:<12} {:<22} {:>20} fwd {:7.2} ms  bwd {:7.2} ms",
                node.name,
                node.op.describe(),
                format!("{:?}", values[i].shape()),
                fwd[i],
                bwd
            );
        }
    }
}
