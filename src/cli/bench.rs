//! `visword bench`: time a LISA-style stack on random weights (no files needed) and compare the
//! projectors. Prints a table, or with `--json` exactly one JSON object, on stdout; a progress
//! bar goes to stderr when it is a terminal.

use std::io::{IsTerminal, Write};
use std::str::FromStr;

use crate::backend::BackendKind;
use crate::bench::{self, Options};
use crate::dtype::DType;
use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// tiny, cpu, lisa-7b, glamm-7b or dinov2-lisa-7b (default: cpu on the CPU backend, lisa-7b
    /// on a GPU).
    #[arg(long)]
    pub preset: Option<String>,
    /// auto, cpu, cuda or wgpu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Timed runs per stage (the median is reported), after one warm-up run.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Greedy decode steps after the prefill (they do not stop at end-of-sequence).
    #[arg(long, default_value_t = 16)]
    pub decode_tokens: usize,
    /// Weight dtype: f32, f16 or bf16 (default: the preset's).
    #[arg(long)]
    pub weight_dtype: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Superpixel point grid side for the svp row (default: the preset's, 32).
    #[arg(long)]
    pub points_per_side: Option<usize>,
}

pub fn run(args: &Args) -> Result<()> {
    let weight_dtype = args
        .weight_dtype
        .as_deref()
        .map(|s| DType::parse(s).ok_or_else(|| Error::arg("--weight-dtype", format!("`{s}`: expected f32, f16 or bf16"))))
        .transpose()?;
    let opts = Options {
        preset: args.preset.clone(),
        backend: BackendKind::from_str(&args.backend)?,
        runs: args.runs,
        decode_tokens: args.decode_tokens,
        weight_dtype,
        threads: args.threads,
        progress: !args.json && std::io::stderr().is_terminal(),
        points_per_side: args.points_per_side,
    };
    let report = bench::run(&opts)?;
    if crate::backend::profile::enabled() {
        eprintln!("{}", crate::backend::profile::report());
    }
    let text = if args.json { report.to_json() + "\n" } else { report.render_table() };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(|e| Error::io("<stdout>", e))
}
