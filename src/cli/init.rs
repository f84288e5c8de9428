//! `visword init --preset NAME --random OUT_DIR`: write a random-weight segmenter directory at
//! a preset's shapes (tiny for tests and CI, cpu, lisa-7b, glamm-7b), seeded and reproducible.

use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::Result;
use crate::models::segmenter::random::{init_random, DEFAULT_SEED, PRESETS};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Shapes to use: tiny, cpu, lisa-7b or glamm-7b.
    #[arg(long, value_name = "NAME")]
    pub preset: String,
    /// Write a random-weight model into this new directory.
    #[arg(long, value_name = "OUT_DIR")]
    pub random: PathBuf,
    /// Seed of the weights: the same preset and seed give byte-identical files.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
}

pub fn run(args: &Args) -> Result<()> {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("{} weights", args.preset));
    let summary = init_random(&args.preset, &args.random, args.seed, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    println!(
        "wrote {}: random {} segmenter (seed {}), {} tensors, {:.1} M parameters in {}, {:.2} GB; presets: {}",
        summary.dir.display(),
        args.preset,
        args.seed,
        summary.tensors,
        summary.parameters as f64 / 1e6,
        summary.dtype,
        summary.bytes as f64 / 1e9,
        PRESETS.join(", ")
    );
    Ok(())
}
