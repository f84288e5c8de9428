//! The `visword` command line. User errors print one line and exit non-zero (no backtrace).

use clap::{Parser, Subcommand};

/// mimalloc keeps freed pages for reuse: the SAM mask decoder and the encoders free and
/// reallocate tens-of-MB activations every op, which the system allocator returns to the kernel
/// and faults back in page by page (over a third of the time of superpixel generation).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use visword::cli;

#[derive(Parser, Debug)]
#[command(name = "visword", version, about = "Referring image segmentation with multimodal LLMs and SAM-superpixel visual words")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the tensors of a safetensors checkpoint.
    Inspect(cli::inspect::Args),
    /// Segment with SAM from point and box prompts.
    Sam(cli::sam::Args),
    /// Convert a Llama-architecture GGUF file into an HF-style directory.
    Convert(cli::convert::Args),
    /// Generate text with a Llama-architecture model (chat template applied).
    Generate(cli::generate::Args),
    /// Vision features (CLIP / DINOv2) of an image.
    Embed(cli::embed::Args),
    /// Time a LISA-style stack on random weights and compare the projectors.
    Bench(cli::bench::Args),
    /// Segment what a referring expression names in an image.
    Segment(cli::segment::Args),
    /// Write a random-weight segmenter directory at a preset's shapes.
    Init(cli::init::Args),
    /// SAM superpixels of an image: label map, boundary overlay, coverage dump.
    Superpixels(cli::superpixels::Args),
}

fn main() {
    // Mesa's Vulkan device-selection layer opens a Wayland connection to find the "default" GPU,
    // and libwayland prints an `error:` line when no session is running (servers, CI). visword
    // picks its adapter itself, so the layer is switched off unless the user has set it. This
    // runs before any other thread exists.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    let cli = Cli::parse();
    // Run the command on a worker of the thread pool, so the many small parallel regions of a
    // decode step are split between this thread and the others instead of waking the pool from
    // outside and sleeping until it finishes.
    let res = match rayon::ThreadPoolBuilder::new().build() {
        Ok(pool) => pool.install(|| run(&cli)),
        Err(_) => run(&cli),
    };
    if let Err(e) = res {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> visword::Result<()> {
    match &cli.command {
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Sam(a) => cli::sam::run(a),
        Command::Convert(a) => cli::convert::run(a),
        Command::Generate(a) => cli::generate::run(a),
        Command::Embed(a) => cli::embed::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Segment(a) => cli::segment::run(a),
        Command::Init(a) => cli::init::run(a),
        Command::Superpixels(a) => cli::superpixels::run(a),
    }
}
