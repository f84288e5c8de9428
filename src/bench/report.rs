//! The benchmark's result: one row per projector, rendered as a table or as one JSON object.

use serde::Serialize;

/// Median time of each stage, in milliseconds. `None` for a stage that did not run:
/// `superpixels` outside the svp row, `decode_per_token` with 0 decode tokens.
#[derive(Clone, Debug, Serialize)]
pub struct StagesMs {
    pub vision_encoder: f64,
    pub sam_encoder: f64,
    pub superpixels: Option<f64>,
    pub projector: f64,
    pub prefill: f64,
    pub decode_per_token: Option<f64>,
    pub mask_decoder: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub projector: String,
    /// Median over the timed runs (svp's count depends on the photo).
    pub visual_tokens: usize,
    /// Visual tokens plus the text around them.
    pub prompt_tokens: usize,
    pub stages_ms: StagesMs,
    /// vision + SAM + superpixels + projector + prefill + N·decode + mask decoder.
    pub end_to_end_ms: f64,
    /// Peak resident memory while this row's pipeline ran (VmHWM; None off Linux).
    pub peak_memory_bytes: Option<u64>,
    /// mlp's end-to-end time over this row's.
    pub speedup_vs_mlp: Option<f64>,
    /// mlp's prefill time over this row's.
    pub prefill_speedup_vs_mlp: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: String,
    /// The git commit visword was built from (`-dirty` with uncommitted changes).
    pub commit: String,
    pub preset: String,
    pub models: String,
    pub threads: usize,
    pub cpu_model: Option<String>,
    pub weight_dtype: String,
    pub text_tokens: usize,
    /// Photos the timed runs cycle through.
    pub photos: usize,
    pub decode_tokens: usize,
    /// Timed repetitions per stage (medians reported), after `warmup_runs` untimed ones.
    pub timed_runs: usize,
    pub warmup_runs: usize,
    pub runs: Vec<RunReport>,
}

impl StagesMs {
    pub fn end_to_end(&self, decode_tokens: usize) -> f64 {
        self.vision_encoder
            + self.sam_encoder
            + self.superpixels.unwrap_or(0.0)
            + self.projector
            + self.prefill
            + self.decode_per_token.unwrap_or(0.0) * decode_tokens as f64
            + self.mask_decoder
    }
}

/// Fill in each row's speed-ups against the `mlp` row.
pub fn fill_speedups(runs: &mut [RunReport]) {
    let Some(base) = runs.iter().find(|r| r.projector == "mlp").map(|r| (r.end_to_end_ms, r.stages_ms.prefill)) else {
        return;
    };
    for r in runs {
        r.speedup_vs_mlp = ratio(base.0, r.end_to_end_ms);
        r.prefill_speedup_vs_mlp = ratio(base.1, r.stages_ms.prefill);
    }
}

fn ratio(base: f64, x: f64) -> Option<f64> {
    (x > 0.0 && base.is_finite()).then(|| base / x)
}

/// Median of samples (mean of the middle two for an even count); None for no samples.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn ms(x: Option<f64>) -> String {
    match x {
        None => "—".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn mib(x: Option<u64>) -> String {
    x.map_or("—".into(), |b| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64))
}

fn times(x: Option<f64>) -> String {
    x.map_or("—".into(), |x| format!("{x:.2}×"))
}

impl BenchReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Header lines and a right-aligned table, stage times in ms.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("backend:  {}\n", self.backend));
        out.push_str(&format!("commit:   {}\n", self.commit));
        out.push_str(&format!("preset:   {} ({}, random weights)\n", self.preset, self.models));
        out.push_str(&format!("threads:  {}\n", self.threads));
        out.push_str(&format!("cpu:      {}\n", self.cpu_model.as_deref().unwrap_or("unknown")));
        out.push_str(&format!("weights:  {}\n", self.weight_dtype));
        out.push_str(&format!(
            "timing:   median of {} run(s) after {} warm-up over {} photo(s); {} text tokens; {} decode tokens; times in ms\n\n",
            self.timed_runs, self.warmup_runs, self.photos, self.text_tokens, self.decode_tokens
        ));
        let header = [
            "projector", "visual", "prompt", "vision_enc", "sam_enc", "superpixels", "projector", "prefill", "decode/tok",
            "mask_dec", "end_to_end", "peak_mem", "e2e vs mlp", "prefill vs mlp",
        ];
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                let s = &r.stages_ms;
                vec![
                    r.projector.clone(),
                    r.visual_tokens.to_string(),
                    r.prompt_tokens.to_string(),
                    ms(Some(s.vision_encoder)),
                    ms(Some(s.sam_encoder)),
                    ms(s.superpixels),
                    ms(Some(s.projector)),
                    ms(Some(s.prefill)),
                    ms(s.decode_per_token),
                    ms(Some(s.mask_decoder)),
                    ms(Some(r.end_to_end_ms)),
                    mib(r.peak_memory_bytes),
                    times(r.speedup_vs_mlp),
                    times(r.prefill_speedup_vs_mlp),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).chain([header[c].chars().count()]).max().unwrap_or(0))
            .collect();
        let line = |cells: &[String]| -> String {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(c, s)| {
                    let pad = " ".repeat(widths[c] - s.chars().count());
                    if c == 0 { format!("{s}{pad}") } else { format!("{pad}{s}") }
                })
                .collect();
            parts.join("  ").trim_end().to_string() + "\n"
        };
        out.push_str(&line(&header.map(String::from)));
        for r in &rows {
            out.push_str(&line(r));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, prefill: f64) -> RunReport {
        let stages_ms = StagesMs {
            vision_encoder: 1.0,
            sam_encoder: 2.0,
            superpixels: None,
            projector: 0.5,
            prefill,
            decode_per_token: Some(1.0),
            mask_decoder: 0.5,
        };
        RunReport {
            projector: name.into(),
            visual_tokens: 1,
            prompt_tokens: 2,
            end_to_end_ms: stages_ms.end_to_end(4),
            stages_ms,
            peak_memory_bytes: None,
            speedup_vs_mlp: None,
            prefill_speedup_vs_mlp: None,
        }
    }

    #[test]
    fn end_to_end_and_speedups() {
        let mut runs = vec![row("mlp", 8.0), row("pool2", 2.0)];
        assert_eq!(runs[0].end_to_end_ms, 1.0 + 2.0 + 0.5 + 8.0 + 4.0 + 0.5);
        fill_speedups(&mut runs);
        assert_eq!(runs[0].speedup_vs_mlp, Some(1.0));
        assert_eq!(runs[1].prefill_speedup_vs_mlp, Some(4.0));
        assert_eq!(runs[1].speedup_vs_mlp, Some(16.0 / 10.0));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
