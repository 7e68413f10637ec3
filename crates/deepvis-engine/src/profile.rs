//! Time per kind of op, forward and backward, for finding where a model's step goes
//! (`DEEPVIS_PROFILE=1 deepvis bench …`). Off by default: then each node costs one relaxed
//! atomic load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

const UNSET: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNSET);

/// Seconds and calls per op description, forward and backward.
type Table = BTreeMap<String, [(f64, u64); 2]>;
static TABLE: Mutex<Table> = Mutex::new(BTreeMap::new());

/// Whether `DEEPVIS_PROFILE` is set to something other than `0`.
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = std::env::var_os("DEEPVIS_PROFILE").is_some_and(|v| v != "0");
            STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
            on
        }
    }
}

/// Starts timing a node when profiling is on.
pub(crate) fn start() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// Adds the time since `started` to `what`'s forward (`backward == false`) or backward row.
pub(crate) fn record(started: Option<Instant>, what: impl FnOnce() -> String, backward: bool) {
    if let Some(t) = started {
        let seconds = t.elapsed().as_secs_f64();
        let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        let row = &mut table.entry(what()).or_default()[backward as usize];
        row.0 += seconds;
        row.1 += 1;
    }
}

/// The table so far, slowest first, as text; and clears it.
pub fn take_report() -> String {
    let table = std::mem::take(&mut *TABLE.lock().unwrap_or_else(|e| e.into_inner()));
    let total: f64 = table.values().map(|r| r[0].0 + r[1].0).sum();
    let mut rows: Vec<_> = table.into_iter().collect();
    rows.sort_by(|a, b| (b.1[0].0 + b.1[1].0).total_cmp(&(a.1[0].0 + a.1[1].0)));
    let mut out = format!(
        "{:>7} {:>9} {:>9} {:>6}  op\n",
        "share", "fwd ms", "bwd ms", "calls"
    );
    for (what, [f, b]) in rows {
        out += &format!(
            "{:>6.1}% {:>9.2} {:>9.2} {:>6}  {what}\n",
            100.0 * (f.0 + b.0) / total.max(1e-12),
            1e3 * f.0,
            1e3 * b.0,
            f.1.max(b.1)
        );
    }
    out
}
