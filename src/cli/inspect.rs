//! `visword inspect FILE|DIR`: tensors, dtypes, shapes and parameter counts of a checkpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::Result;
use crate::tensor::numel;
use crate::weights::Weights;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .safetensors file, a model.safetensors.index.json, or a model directory.
    pub path: PathBuf,
    /// Print only the totals.
    #[arg(long)]
    pub summary: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let w = Weights::open(&args.path)?;
    let mut by_dtype: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut total = 0usize;
    if !args.summary {
        println!("{:<64} {:>5} {:>22} {:>12}", "tensor", "dtype", "shape", "params");
    }
    for info in w.infos() {
        let n = numel(&info.shape);
        total += n;
        let e = by_dtype.entry(info.dtype.to_string()).or_default();
        e.0 += n;
        e.1 += info.end - info.start;
        if !args.summary {
            println!("{:<64} {:>5} {:>22} {:>12}", info.name, info.dtype.to_string(), format!("{:?}", info.shape), n);
        }
    }
    println!("{} tensors, {} parameters ({:.2} M)", w.names().count(), total, total as f64 / 1e6);
    let has_bf16 = by_dtype.contains_key("bf16");
    for (dt, (n, bytes)) in by_dtype {
        println!("  {dt}: {n} parameters, {:.1} MB", bytes as f64 / 1e6);
    }
    if has_bf16 {
        // WGSL has no bf16: say what the wgpu backend will hold instead.
        println!("note: --backend wgpu converts bf16 weights at load: each tensor to f16 where every value fits f16's finite range (on adapters with shader-f16), else to f32");
    }
    Ok(())
}
