//! What the superpixel stage's prompt batch buys on a GPU: the stage timed at several points per
//! batch on the same embeddings (the preset's 64 as in SAM's automatic mask generator, then
//! larger batches: fewer launches and larger GEMMs, more memory). A size the device cannot hold
//! is reported with its error, not fatal.

use serde::Serialize;

use super::report::median;
use super::stack::{Encoded, Stack};
use crate::backend::Backend;
use crate::error::Result;

/// Batch sizes tried after the preset's own.
const LARGER: [usize; 2] = [256, 1024];

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BatchTiming {
    pub points_per_batch: usize,
    /// Median of the timed runs (after one warm-up), when every run succeeded.
    pub ms: Option<f64>,
    pub error: Option<String>,
}

/// The sizes to try for `prompts` point prompts: the preset's `own`, then each larger size
/// below the prompt count, and the prompt count itself (one batch) when a larger size reaches
/// it.
pub fn sizes(own: usize, prompts: usize) -> Vec<usize> {
    let mut out = vec![own.min(prompts).max(1)];
    for s in LARGER {
        let s = s.min(prompts);
        if s > *out.last().unwrap_or(&0) {
            out.push(s);
        }
    }
    out
}

/// The superpixel stage on `enc`'s embeddings at each of `sizes`, `runs` timed runs each.
pub fn sweep(be: &Backend, stack: &Stack, enc: &Encoded, sizes: &[usize], runs: usize) -> Vec<BatchTiming> {
    sizes
        .iter()
        .map(|&points_per_batch| {
            let cfg = crate::superpixels::SuperpixelConfig { points_per_batch, ..stack.superpixel_config().clone() };
            let timed: Result<Vec<f64>> = (0..=runs).map(|_| Ok(stack.superpixels_timed(be, enc, &cfg)?.1)).collect();
            match timed {
                Ok(ms) => BatchTiming { points_per_batch, ms: median(&ms[1..]).map(|x| (x * 1e3).round() / 1e3), error: None },
                Err(e) => BatchTiming { points_per_batch, ms: None, error: Some(e.to_string()) },
            }
        })
        .collect()
}

/// "64: 95.1 ms · 256: 60.2 ms · 1024: failed (…)".
pub fn render(t: &[BatchTiming]) -> String {
    t.iter()
        .map(|b| match (b.ms, &b.error) {
            (Some(ms), _) => format!("{}: {ms:.1} ms", b.points_per_batch),
            (None, Some(e)) => format!("{}: failed ({e})", b.points_per_batch),
            (None, None) => format!("{}: —", b.points_per_batch),
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_up_to_one_batch_of_every_prompt() {
        assert_eq!(sizes(64, 1024), vec![64, 256, 1024]);
        assert_eq!(sizes(64, 4096), vec![64, 256, 1024]);
        assert_eq!(sizes(64, 100), vec![64, 100]);
        assert_eq!(sizes(64, 64), vec![64]);
        assert_eq!(sizes(16, 16), vec![16]);
        assert_eq!(sizes(300, 1024), vec![300, 1024]);
    }

    #[test]
    fn failures_are_shown_with_their_reason() {
        let t = [
            BatchTiming { points_per_batch: 64, ms: Some(95.14), error: None },
            BatchTiming { points_per_batch: 1024, ms: None, error: Some("out of memory".into()) },
        ];
        assert_eq!(render(&t), "64: 95.1 ms · 1024: failed (out of memory)");
    }
}
