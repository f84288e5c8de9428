//! Per-op device time, for finding where a model's time goes (`VISWORD_PROFILE=1`).
//!
//! With profiling on, every `Backend` op waits for the device before and after it runs, and
//! its wall time is added to its name's total; `report()` lists the totals. The waits remove
//! the overlap of host launches with device work, so the sum is larger than an unprofiled
//! run's time: the shares tell where to look, the benchmark says how fast it is.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use super::Backend;

/// Per op name: calls and total milliseconds.
type Totals = HashMap<String, (u64, f64)>;

fn totals() -> &'static Mutex<Totals> {
    static T: OnceLock<Mutex<Totals>> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// Whether `VISWORD_PROFILE` is set to something other than 0 (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("VISWORD_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// Times one op from `start` to its drop (only when profiling is on).
pub(crate) struct Span<'a> {
    on: Option<(&'a Backend, String, Instant)>,
}

impl<'a> Span<'a> {
    pub(crate) fn start(be: &'a Backend, name: impl FnOnce() -> String) -> Span<'a> {
        if !enabled() {
            return Span { on: None };
        }
        // Earlier ops' device work must not be counted here.
        let _ = be.synchronize();
        Span { on: Some((be, name(), Instant::now())) }
    }
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        if let Some((be, name, t0)) = self.on.take() {
            let _ = be.synchronize();
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            let mut t = totals().lock().unwrap_or_else(|p| p.into_inner());
            let e = t.entry(name).or_default();
            e.0 += 1;
            e.1 += ms;
        }
    }
}

/// The totals so far, largest first: op, calls, total ms, mean µs, share of the sum.
pub fn report() -> String {
    let t = totals().lock().unwrap_or_else(|p| p.into_inner());
    format_rows(t.iter().map(|(k, &v)| (k.clone(), v)).collect())
}

fn format_rows(mut rows: Vec<(String, (u64, f64))>) -> String {
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    let sum: f64 = rows.iter().map(|r| r.1 .1).sum();
    let mut out = format!("{:<28} {:>9} {:>11} {:>10} {:>6}\n", "op (device time, synced)", "calls", "total ms", "mean µs", "share");
    for (name, (calls, ms)) in rows {
        out += &format!("{name:<28} {calls:>9} {ms:>11.2} {:>10.1} {:>5.1}%\n", ms * 1e3 / calls.max(1) as f64, 100.0 * ms / sum.max(1e-12));
    }
    out += &format!("{:<28} {:>9} {sum:>11.2}\n", "all ops", "");
    out
}

/// While profiling, the ops of one section of a run (e.g. one benchmark stage): on drop, the
/// ops timed since `start` are printed to stderr under `name`. The totals keep counting.
pub struct Section {
    on: Option<(String, Totals)>,
}

impl Section {
    pub fn start(name: &str) -> Section {
        if !enabled() {
            return Section { on: None };
        }
        Section { on: Some((name.to_string(), totals().lock().unwrap_or_else(|p| p.into_inner()).clone())) }
    }
}

impl Drop for Section {
    fn drop(&mut self) {
        if let Some((name, before)) = self.on.take() {
            let now = totals().lock().unwrap_or_else(|p| p.into_inner()).clone();
            let rows = now
                .into_iter()
                .filter_map(|(k, (c, ms))| {
                    let (c0, ms0) = before.get(&k).copied().unwrap_or_default();
                    (c > c0).then(|| (k, (c - c0, ms - ms0)))
                })
                .collect();
            eprintln!("profile of {name}:\n{}", format_rows(rows));
        }
    }
}
