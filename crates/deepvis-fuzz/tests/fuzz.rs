//! Every fuzz target, for a bounded few seconds per CI run: mutations of the committed seeds
//! must never panic, allocate more than `MAX_EXEC_BYTES` in one execution, or be refused with
//! a message of more than one line. `DEEPVIS_FUZZ_SECS=600` (or `DEEPVIS_FUZZ_ITERS=N`) runs
//! longer; `DEEPVIS_FUZZ_SEED` picks another sequence (the default is fixed, so CI is
//! reproducible).

use deepvis_fuzz::{fuzz, target, Budget, PeakAlloc};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// The allocation counter is global, so targets run one at a time: another target's
/// allocations must not count against this one's executions.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(name: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let t = target(name).expect("target exists");
    let seed = std::env::var("DEEPVIS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let r = fuzz(t, Budget::from_env(2.0), seed);
    eprintln!(
        "{name}: {} executions clean of {} ({} accepted, {} refused, {} distinct messages), slowest {:?}, peak {} MiB",
        r.execs - r.findings.len() as u64,
        r.execs,
        r.accepted,
        r.refused,
        r.messages,
        r.slowest,
        r.peak_bytes >> 20
    );
    assert!(r.findings.is_empty(), "{name}:\n{}", r.findings.join("\n"));
    // The seeds themselves must run, and the mutations must reach past the first check.
    assert!(r.execs >= 20, "{name}: only {} executions", r.execs);
    assert!(
        r.messages >= 2,
        "{name}: mutations never changed the outcome"
    );
}

#[test]
fn pth_zip() {
    run("pth_zip");
}

#[test]
fn pth_legacy() {
    run("pth_legacy");
}

#[test]
fn safetensors() {
    run("safetensors");
}

#[test]
fn onnx() {
    run("onnx");
}

#[test]
fn onnx_lower() {
    run("onnx_lower");
}

#[test]
fn image() {
    run("image");
}

#[test]
fn objective() {
    run("objective");
}

#[test]
fn direction() {
    run("direction");
}

#[test]
fn npy() {
    run("npy");
}
