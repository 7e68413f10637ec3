//! Single-thread GFLOP/s of the `gemm` crate on the transform-domain GEMM shapes of VGG16's
//! Winograd layers at 224 px (one block: [cout × cin] · [cin × t], row-major output).
use std::time::Instant;

fn main() {
    // (cout, cin, t): 224, 112, 56, 28, 14 px layers.
    for (m, k, n) in [
        (64, 64, 112),
        (128, 128, 96),
        (256, 256, 80),
        (512, 512, 64),
        (512, 512, 16),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let reps = (2_000_000_000 / (2 * m * n * k)).max(10);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        println!(
            "m {m} k {k} n {n}: {:.1} GFLOP/s",
            2.0 * (m * n * k) as f64 / best / 1e9
        );
    }
}
