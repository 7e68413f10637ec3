//! `cargo run --release -p deepvis-fuzz -- [TARGET...] [--secs N] [--iters N] [--seed S]`:
//! fuzzes the named targets (all by default) for longer than CI does, and prints one line
//! per target: executions run clean, outcomes, slowest execution, peak allocation.

use deepvis_fuzz::{fuzz, target, targets, Budget, PeakAlloc};
use std::time::Duration;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fn main() {
    let mut names = Vec::new();
    let mut budget = Budget::from_env(60.0);
    let mut seed = 1u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| {
                    eprintln!("error: {a} needs a number ({what})");
                    std::process::exit(2)
                })
        };
        match a.as_str() {
            "--secs" => budget.time = Duration::from_secs_f64(value("seconds per target")),
            "--iters" => budget.execs = value("executions per target") as u64,
            "--seed" => seed = value("the mutation sequence") as u64,
            "--list" => {
                for t in targets() {
                    println!("{:12} {}", t.name, t.what);
                }
                return;
            }
            name if target(name).is_some() => names.push(name.to_string()),
            other => {
                let all: Vec<&str> = targets().iter().map(|t| t.name).collect();
                eprintln!(
                    "error: unknown target '{other}'; targets: {}",
                    all.join(", ")
                );
                std::process::exit(2);
            }
        }
    }
    if names.is_empty() {
        names = targets().iter().map(|t| t.name.to_string()).collect();
    }
    let mut failed = false;
    for name in names {
        let t = target(&name).expect("checked above");
        let r = fuzz(t, budget, seed);
        println!(
            "{name:12} seed {seed}: {} executions clean of {} in {:.0} s ({} accepted, {} refused, {} distinct messages, corpus {}), slowest {:.1} ms, peak {} MiB",
            r.execs - r.findings.len() as u64,
            r.execs,
            r.elapsed.as_secs_f64(),
            r.accepted,
            r.refused,
            r.messages,
            r.corpus,
            r.slowest.as_secs_f64() * 1e3,
            r.peak_bytes >> 20
        );
        for f in &r.findings {
            println!("  FINDING {f}");
            failed = true;
        }
    }
    std::process::exit(i32::from(failed));
}
