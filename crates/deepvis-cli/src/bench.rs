//! `deepvis bench`: milliseconds per optimization step (forward to a layer and the gradient
//! back to the input) beside PyTorch's number for the same step, as a ratio.

use crate::source::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use deepvis_engine::Tensor;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Target layer.
    #[arg(long, default_value = "28")]
    pub layer: String,
    /// Channel whose mean activation is differentiated.
    #[arg(long, default_value_t = 15)]
    pub channel: usize,
    /// Image size, N or HxW (default: the model's native size).
    #[arg(long, value_name = "N|HxW", value_parser = crate::settings::parse_size)]
    pub size: Option<(usize, usize)>,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 9)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Skip measuring the float32 GEMM peak (a 2048³ matmul) that GFLOP/s is compared with.
    #[arg(long)]
    pub no_peak: bool,
    /// Time a forward pass only (no gradient, nothing kept for one: what `deepvis examples` runs),
    /// instead of forward + input gradient.
    #[arg(long)]
    pub forward_only: bool,
    /// JSON line from `../shared/bench/torch_reference.py step` for the same case.
    #[arg(long)]
    pub reference: Option<PathBuf>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let loaded = a.model.load_at(a.size)?;
    let model = &loaded.model;
    let layer = model.layer(&a.layer)?;
    let (h, w) = a.size.unwrap_or(model.info.native_size);
    let shape = [a.batch, model.info.channels, h, w];
    let x = Tensor::full(&shape, 0.1);
    // Forward and input gradient cost about the same each.
    let passes = if a.forward_only { 1 } else { 2 };
    let flops = passes * model.graph.forward_flops(&shape, layer)?;
    let channels: Vec<usize> = vec![a.channel; a.batch];
    let norm = deepvis_models::Normalization {
        mean: std::borrow::Cow::Borrowed(&[0.0]),
        std: std::borrow::Cow::Borrowed(&[1.0]),
    };
    let mut times = Vec::with_capacity(a.iters);
    for i in 0..a.warmup + a.iters.max(1) {
        let t = Instant::now();
        if a.forward_only {
            std::hint::black_box(model.graph.infer(x.clone(), layer)?);
        } else {
            let (_, g) =
                deepvis_render::objective_and_grad(&model.graph, &norm, layer, &x, &channels)?;
            std::hint::black_box(g);
        }
        if i >= a.warmup {
            times.push(t.elapsed().as_secs_f64());
        } else if i + 1 == a.warmup {
            deepvis_engine::profile::take_report();
        }
    }
    if deepvis_engine::profile::enabled() {
        eprint!(
            "time per op over {} timed steps (DEEPVIS_PROFILE):\n{}",
            times.len(),
            deepvis_engine::profile::take_report()
        );
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2] * 1e3;
    let gflops = flops as f64 / 1e9 / (ms / 1e3);
    let mut line = serde_json::json!({
        "what": if a.forward_only { "deepvis forward only" } else { "deepvis fwd+input-grad step" },
        "model": a.model.model,
        "layer": model.graph.nodes()[layer].name,
        "size": if h == w { serde_json::json!(h) } else { serde_json::json!(format!("{h}x{w}")) },
        "batch": a.batch,
        "threads": rayon::current_num_threads(),
        "precision": deepvis_engine::precision().name(),
        "ms_per_step": (ms * 100.0).round() / 100.0,
        "ms_per_image_step": (ms / a.batch as f64 * 100.0).round() / 100.0,
        "gflop_per_step": (flops as f64 / 1e7).round() / 100.0,
        "gflop_per_s": (gflops * 10.0).round() / 10.0,
    });
    if !a.no_peak {
        let peak = gemm_peak_gflops();
        line["gemm_peak_gflop_per_s"] = ((peak * 10.0).round() / 10.0).into();
        line["percent_of_gemm_peak"] = ((gflops / peak * 1000.0).round() / 10.0).into();
    }
    if let Some(path) = &a.reference {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let reference: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or(""))
            .with_context(|| {
                format!(
                    "{} is not a JSON line from torch_reference.py",
                    path.display()
                )
            })?;
        let torch_ms = reference["ms_per_step"]
            .as_f64()
            .context("the reference has no ms_per_step")?;
        line["torch_ms_per_step"] = torch_ms.into();
        line["speedup_vs_torch"] = ((torch_ms / ms * 100.0).round() / 100.0).into();
    }
    outln!("{line}");
    Ok(())
}

/// The best of a few 2048³ float32 matmuls through `gemm` on all threads: what "100 %" means
/// for a convolution engine built on it.
fn gemm_peak_gflops() -> f64 {
    const N: usize = 2048;
    let a = vec![0.5f32; N * N];
    let b = vec![0.25f32; N * N];
    let mut c = vec![0f32; N * N];
    let mut best = f64::MAX;
    for _ in 0..4 {
        let t = Instant::now();
        // SAFETY: three owned N×N row-major matrices; c aliases neither input.
        unsafe {
            gemm::gemm(
                N,
                N,
                N,
                c.as_mut_ptr(),
                1,
                N as isize,
                false,
                a.as_ptr(),
                1,
                N as isize,
                b.as_ptr(),
                1,
                N as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            )
        };
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&c);
    2.0 * (N as f64).powi(3) / best / 1e9
}
