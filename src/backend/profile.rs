//! Per-op device time, for finding where a model's time goes (`VISWORD_PROFILE`).
//!
//! * `VISWORD_PROFILE=1` (or any value but `0` and `sync`): on a GPU every op is bracketed by
//!   two device timestamps queued with its work, so nothing waits and the host keeps running
//!   ahead of the device as in an unprofiled run. CUDA: timing events on the op's stream (the
//!   lane's ops on the lane); an op's time runs from the moment the stream reached its first
//!   event (the previous op done, or the host's record if the stream was idle) to its end, so
//!   where the device waits for launches the wait is counted in the op. wgpu: timestamp
//!   queries inside the compute pass, where the adapter offers them (timestamps.rs); an op's
//!   time is the device's work on it alone, and the device's waits for the host's next batch
//!   fall between ops. Either way a section's wall time against its ops' sum shows what the
//!   ops did not account for. The stamps are read back when a `Section` ends, for `report()`,
//!   or every `FLUSH_AT` ops. Where the backend has no stamps (the CPU, an adapter without
//!   timestamp queries inside passes) ops are timed as with `sync`.
//! * `VISWORD_PROFILE=sync`: every op waits for the device before and after it and its host
//!   wall time is counted. The waits remove the overlap of launches with device work and add
//!   their own cost (~8 µs a call on CUDA, ~100 µs on wgpu), so the sum is larger than an
//!   unprofiled run's time.
//!
//! Either way the benchmark, not the profile, says how fast a stage is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use super::Backend;
use crate::error::Result;

/// Per op name: calls and total milliseconds.
type Totals = HashMap<String, (u64, f64)>;

/// Ops whose stamps are waiting to be read back before they are resolved (bounds the events or
/// queries held at once; resolving waits for the device).
const FLUSH_AT: usize = 8192;

/// How ops are timed (`VISWORD_PROFILE`, read once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    /// Device timestamps where the backend has them, else `Synced`.
    Stamps,
    /// Host wall time between device syncs.
    Synced,
}

impl Mode {
    pub fn parse(v: Option<&str>) -> Mode {
        match v.map(str::trim) {
            None | Some("") | Some("0") => Mode::Off,
            Some(s) if s.eq_ignore_ascii_case("sync") => Mode::Synced,
            Some(_) => Mode::Stamps,
        }
    }
}

pub fn mode() -> Mode {
    static M: OnceLock<Mode> = OnceLock::new();
    *M.get_or_init(|| Mode::parse(std::env::var("VISWORD_PROFILE").ok().as_deref()))
}

/// Whether profiling is on (`VISWORD_PROFILE` set to something other than 0).
pub fn enabled() -> bool {
    mode() != Mode::Off
}

/// A device timestamp queued on a backend's stream: read back later by `resolve_ms`.
pub(crate) enum Stamp {
    Cuda(cudarc::driver::CudaEvent),
    /// The runtime that wrote it and the stamp's number there.
    Wgpu(Arc<super::wgpu::Runtime>, u64),
}

/// Milliseconds from `start` to `end` (waits for `end` to be reached).
fn resolve_ms(start: &Stamp, end: &Stamp) -> Result<f64> {
    match (start, end) {
        (Stamp::Cuda(a), Stamp::Cuda(b)) => super::cuda::lane::elapsed_ms(a, b),
        (Stamp::Wgpu(rt, a), Stamp::Wgpu(_, b)) => {
            let (ta, tb) = (rt.stamp_ns(*a)?, rt.stamp_ns(*b)?);
            Ok(tb.saturating_sub(ta) as f64 * 1e-6)
        }
        _ => Err(crate::error::Error::shape("profile", "an op's two stamps come from different backends")),
    }
}

/// What the profiler holds: the totals so far, ops whose stamps are not yet read, and how many
/// of the totals' ops were timed by stamps and by syncs.
#[derive(Default)]
struct State {
    totals: Totals,
    pending: Vec<(String, Stamp, Stamp)>,
    stamped: u64,
    synced: u64,
    failed: u64,
}

fn state() -> MutexGuard<'static, State> {
    static S: OnceLock<Mutex<State>> = OnceLock::new();
    S.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

fn add(t: &mut Totals, name: String, ms: f64) {
    let e = t.entry(name).or_default();
    e.0 += 1;
    e.1 += ms;
}

/// Read back every pending stamp into the totals. A pair that cannot be read (a device error)
/// is counted in `failed` and left out.
fn flush(s: &mut State) {
    let pending = std::mem::take(&mut s.pending);
    let mut wgpu_runtimes: Vec<(Arc<super::wgpu::Runtime>, u64)> = Vec::new();
    for (name, a, b) in pending {
        match resolve_ms(&a, &b) {
            Ok(ms) => {
                add(&mut s.totals, name, ms);
                s.stamped += 1;
            }
            Err(_) => s.failed += 1,
        }
        if let Stamp::Wgpu(rt, id) = b {
            match wgpu_runtimes.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &rt)) {
                Some(e) => e.1 = e.1.max(id + 1),
                None => wgpu_runtimes.push((rt, id + 1)),
            }
        }
    }
    for (rt, upto) in wgpu_runtimes {
        rt.forget_stamps(upto);
    }
}

/// Times one op from `start` to its drop (only when profiling is on).
pub(crate) struct Span<'a> {
    on: Option<(&'a Backend, String, Timing)>,
}

enum Timing {
    Stamp(Stamp),
    Clock(Instant),
}

impl<'a> Span<'a> {
    pub(crate) fn start(be: &'a Backend, name: impl FnOnce() -> String) -> Span<'a> {
        let timing = match mode() {
            Mode::Off => return Span { on: None },
            Mode::Stamps => match be.profile_stamp(false) {
                Some(s) => Timing::Stamp(s),
                None => synced_start(be),
            },
            Mode::Synced => synced_start(be),
        };
        Span { on: Some((be, name(), timing)) }
    }
}

fn synced_start(be: &Backend) -> Timing {
    // Earlier ops' device work must not be counted here.
    let _ = be.synchronize();
    Timing::Clock(Instant::now())
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        let Some((be, name, timing)) = self.on.take() else { return };
        match timing {
            Timing::Stamp(start) => {
                let Some(end) = be.profile_stamp(true) else {
                    state().failed += 1;
                    return;
                };
                let mut s = state();
                s.pending.push((name, start, end));
                if s.pending.len() >= FLUSH_AT {
                    flush(&mut s);
                }
            }
            Timing::Clock(t0) => {
                let _ = be.synchronize();
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                let mut s = state();
                add(&mut s.totals, name, ms);
                s.synced += 1;
            }
        }
    }
}

/// How the totals' ops were timed, for the report's heading.
fn how(stamped: u64, synced: u64, failed: u64) -> String {
    let mut h = match (stamped > 0, synced > 0) {
        (true, false) => "device time, stamps".to_string(),
        (false, _) => "device time, synced".to_string(),
        (true, true) => format!("device time: {stamped} stamped, {synced} synced"),
    };
    if failed > 0 {
        h += &format!("; {failed} unreadable, left out");
    }
    h
}

/// The totals so far, largest first: op, calls, total ms, mean µs, share of the sum (reads
/// back any pending stamps first).
pub fn report() -> String {
    let mut s = state();
    flush(&mut s);
    format_rows(&how(s.stamped, s.synced, s.failed), s.totals.iter().map(|(k, &v)| (k.clone(), v)).collect())
}

fn format_rows(how: &str, mut rows: Vec<(String, (u64, f64))>) -> String {
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    let sum: f64 = rows.iter().map(|r| r.1 .1).sum();
    let mut out = format!("{:<28} {:>9} {:>11} {:>10} {:>6}   ({how})\n", "op", "calls", "total ms", "mean µs", "share");
    for (name, (calls, ms)) in rows {
        out += &format!("{name:<28} {calls:>9} {ms:>11.2} {:>10.1} {:>5.1}%\n", ms * 1e3 / calls.max(1) as f64, 100.0 * ms / sum.max(1e-12));
    }
    out += &format!("{:<28} {:>9} {sum:>11.2}\n", "all ops", "");
    out
}

/// The ops of one section of a run (e.g. one benchmark stage) since `start`, against the
/// section's wall time (the stamps are read back first, so the wall time ends when the
/// section's last op has finished on the device).
struct SectionRows {
    rows: Vec<(String, (u64, f64))>,
    how: String,
    wall_ms: f64,
}

fn section_rows(before: &State, t0: Instant) -> SectionRows {
    let mut s = state();
    flush(&mut s);
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rows = s
        .totals
        .iter()
        .filter_map(|(k, &(c, ms))| {
            let (c0, ms0) = before.totals.get(k).copied().unwrap_or_default();
            (c > c0).then(|| (k.clone(), (c - c0, ms - ms0)))
        })
        .collect();
    let how = how(s.stamped - before.stamped, s.synced - before.synced, s.failed - before.failed);
    SectionRows { rows, how, wall_ms }
}

/// While profiling, the ops of one section of a run: on drop, the ops timed since `start` are
/// printed to stderr under `name`, with the section's wall time. The totals keep counting.
pub struct Section {
    on: Option<(String, State, Instant)>,
}

impl Section {
    pub fn start(name: &str) -> Section {
        if !enabled() {
            return Section { on: None };
        }
        let before = {
            let mut s = state();
            flush(&mut s);
            State { totals: s.totals.clone(), pending: Vec::new(), stamped: s.stamped, synced: s.synced, failed: s.failed }
        };
        Section { on: Some((name.to_string(), before, Instant::now())) }
    }
}

impl Drop for Section {
    fn drop(&mut self) {
        if let Some((name, before, t0)) = self.on.take() {
            let r = section_rows(&before, t0);
            eprintln!("profile of {name} ({:.2} ms wall, from the section's start to its last op's end):\n{}", r.wall_ms, format_rows(&r.how, r.rows));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_follows_the_variable() {
        assert_eq!(Mode::parse(None), Mode::Off);
        assert_eq!(Mode::parse(Some("0")), Mode::Off);
        assert_eq!(Mode::parse(Some(" ")), Mode::Off);
        assert_eq!(Mode::parse(Some("1")), Mode::Stamps);
        assert_eq!(Mode::parse(Some("SYNC")), Mode::Synced);
    }

    #[test]
    fn rows_are_largest_first_with_shares_of_the_sum() {
        let out = format_rows("device time, stamps", vec![("small".into(), (2, 1.0)), ("big".into(), (1, 3.0))]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with("(device time, stamps)"), "{out}");
        assert!(lines[1].starts_with("big") && lines[1].contains("3000.0") && lines[1].ends_with("75.0%"), "{out}");
        assert!(lines[2].starts_with("small") && lines[2].contains("500.0") && lines[2].ends_with("25.0%"), "{out}");
        assert!(lines[3].starts_with("all ops") && lines[3].ends_with("4.00"), "{out}");
    }

    #[test]
    fn the_heading_says_how_the_ops_were_timed() {
        assert_eq!(how(5, 0, 0), "device time, stamps");
        assert_eq!(how(0, 5, 0), "device time, synced");
        assert_eq!(how(0, 0, 0), "device time, synced");
        assert_eq!(how(3, 2, 1), "device time: 3 stamped, 2 synced; 1 unreadable, left out");
    }
}
