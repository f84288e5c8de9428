//! `visword segment`: referring segmentation with a segmenter directory (docs/svp.md §4).
//!
//! Prints the answer, the visual-token count and the time of each stage (`--json`: one object
//! `{"answer", "visual_tokens", "prompt_tokens", "stages_ms", "end_to_end_ms"}`). `-o` writes the
//! union of the `[SEG]` masks as a 0/255 PNG of the image's size, `--overlay` the photo with the
//! mask tinted, `--dump` the intermediate tensors for parity checks. Every output is written
//! atomically, after the whole pipeline has run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::RgbImage;

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};

use super::check_output_dir;
use crate::image_io::{load_rgb, DEFAULT_MAX_PIXELS};
use crate::models::projector::ProjectorKind;
use crate::models::sam::postprocess::write_mask_png;
use crate::models::segmenter::{SegmentOptions, Segmentation, Segmenter, SegmenterConfig};
use crate::tensor::Tensor;
use crate::weights::{save_safetensors, write_atomic};

use super::embed::read_pixel_values;
use super::superpixels::SuperpixelArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Segmenter directory: config.json, safetensors weights (LISA names), tokenizer.json.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Input image (PNG or JPEG).
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// What to segment, e.g. "the cat on the left".
    #[arg(value_name = "EXPRESSION", allow_hyphen_values = true)]
    pub expression: String,
    /// Write the mask (union of the [SEG] masks, 0/255 grayscale, the image's size).
    #[arg(short = 'o', long = "output", value_name = "MASK.png")]
    pub output: Option<PathBuf>,
    /// Write the photo with the mask tinted over it.
    #[arg(long, value_name = "OVERLAY.png")]
    pub overlay: Option<PathBuf>,
    /// Projector: svp, mlp, pool2, pool3 (default: the model's).
    #[arg(long)]
    pub projector: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Most tokens to generate (default: the model's max_new_tokens).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Write label_map, coverage, geometry (svp), visual_tokens, seg_embedding, mask_logits and
    /// the token ids.
    #[arg(long, value_name = "OUT.safetensors")]
    pub dump: Option<PathBuf>,
    /// The vision tower's preprocessed input (`pixel_values` [1, 3, H, W]) instead of
    /// preprocessing IMAGE.
    #[arg(long, value_name = "FILE.safetensors")]
    pub pixel_values: Option<PathBuf>,
    /// SAM's preprocessed input (`pixel_values` [1, 3, 1024, 1024]) instead of preprocessing IMAGE.
    #[arg(long, value_name = "FILE.safetensors")]
    pub sam_pixel_values: Option<PathBuf>,
    /// Superpixel options (svp only); unset flags keep the model's config.
    #[command(flatten)]
    pub superpixels: SuperpixelArgs,
    /// auto, cpu, cuda or wgpu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

pub fn run(args: &Args) -> Result<()> {
    let kind = BackendKind::from_str(&args.backend)?;
    let projector = args.projector.as_deref().map(ProjectorKind::parse).transpose()?;
    if args.max_new_tokens == Some(0) {
        return Err(Error::arg("--max-new-tokens", "must be at least 1"));
    }
    if args.expression.trim().is_empty() {
        return Err(Error::arg("expression", "is empty: give the referring expression to segment"));
    }
    check_output_dir("-o", &args.output)?;
    check_output_dir("--overlay", &args.overlay)?;
    check_output_dir("--dump", &args.dump)?;

    // Inputs before the model: they are cheap to read and often the thing that is wrong.
    let image = load_rgb(&args.image, args.max_pixels)?;
    let opts = SegmentOptions {
        max_new_tokens: args.max_new_tokens,
        pixel_values: args.pixel_values.as_deref().map(|p| read_pixel_values(p, args.max_pixels)).transpose()?,
        sam_pixel_values: args.sam_pixel_values.as_deref().map(|p| read_pixel_values(p, args.max_pixels)).transpose()?,
    };
    let mut config = SegmenterConfig::from_dir(&args.model)?;
    args.superpixels.apply(&mut config.superpixels);
    config.superpixels.validate("flags")?;
    let be = Backend::new(kind)?;
    let model = Segmenter::from_config(&args.model, config, &be, projector)?;
    let seg = model.segment(&be, &image, &args.expression, &opts)?;

    let (h, w) = seg.size;
    let mask = seg.union_mask();
    if let Some(out) = &args.output {
        write_mask_png(out, &mask, h, w)?;
    }
    if let Some(out) = &args.overlay {
        write_overlay(out, &image, &mask)?;
    }
    if let Some(out) = &args.dump {
        dump(out, &seg, model.projector_kind())?;
    }

    if args.json {
        // A struct, so the keys come out in the documented order.
        #[derive(serde::Serialize)]
        struct Report<'a, S: serde::Serialize> {
            answer: &'a str,
            visual_tokens: usize,
            prompt_tokens: usize,
            stages_ms: &'a S,
            end_to_end_ms: f64,
        }
        let report = Report {
            answer: &seg.answer,
            visual_tokens: seg.visual_tokens,
            prompt_tokens: seg.prompt_tokens,
            stages_ms: &seg.stages,
            end_to_end_ms: seg.end_to_end_ms,
        };
        println!("{}", serde_json::to_string(&report).map_err(|e| Error::arg("--json", e.to_string()))?);
    } else {
        print_report(&seg, model.projector_kind(), args);
    }
    Ok(())
}

fn print_report(seg: &Segmentation, projector: ProjectorKind, args: &Args) {
    println!("answer: {}", seg.answer);
    println!("visual tokens: {} ({}), prompt tokens: {}", seg.visual_tokens, projector.name(), seg.prompt_tokens);
    let s = &seg.stages;
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!(
        "stages (ms): vision_encoder {:.1} · sam_encoder {:.1} · superpixels {} · projector {:.2} · prefill {:.1} · decode_per_token {} · mask_decoder {:.1}",
        s.vision_encoder, s.sam_encoder, opt(s.superpixels), s.projector, s.prefill, opt(s.decode_per_token), s.mask_decoder
    );
    println!("end to end: {:.1} ms", seg.end_to_end_ms);
    let (h, w) = seg.size;
    if let Some(out) = &args.output {
        let what = if seg.masks.is_empty() { "no [SEG] in the answer: empty mask".to_string() } else { format!("{} mask(s)", seg.masks.len()) };
        println!("wrote {} ({w}×{h}, {what})", out.display());
    }
    if let Some(out) = &args.overlay {
        println!("wrote {}", out.display());
    }
}

/// The photo with the mask tinted red (half opacity), as an RGB PNG.
fn write_overlay(path: &Path, image: &RgbImage, mask: &[u8]) -> Result<()> {
    const TINT: [f32; 3] = [255.0, 40.0, 40.0];
    let mut out = image.clone();
    for (px, &m) in out.pixels_mut().zip(mask) {
        if m > 0 {
            for (v, t) in px.0.iter_mut().zip(TINT) {
                *v = (0.5 * *v as f32 + 0.5 * t).round() as u8;
            }
        }
    }
    let (w, h) = out.dimensions();
    write_atomic(path, |f| {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(f).write_image(out.as_raw(), w, h, image::ExtendedColorType::Rgb8).map_err(std::io::Error::other)
    })
}

fn ids_tensor(ids: &[u32]) -> Result<Tensor> {
    Tensor::from_i64(ids.iter().map(|&i| i as i64).collect(), vec![ids.len()])
}

/// The run's tensors for parity checks (superpixel entries only with the svp projector).
fn dump(path: &Path, seg: &Segmentation, projector: ProjectorKind) -> Result<()> {
    let mut tensors = Vec::new();
    if let Some(sp) = &seg.superpixels {
        tensors.push(("label_map".to_string(), Tensor::from_i32(sp.label_map.clone(), vec![sp.height, sp.width])?));
        tensors.push(("coverage".to_string(), Tensor::from_f32(sp.coverage.clone(), vec![sp.count, sp.grid * sp.grid])?));
        tensors.push(("geometry".to_string(), Tensor::from_f32(sp.geometry.iter().flatten().copied().collect(), vec![sp.count, 7])?));
    }
    tensors.push(("visual_tokens".to_string(), seg.visual.clone()));
    tensors.push(("seg_embedding".to_string(), seg.seg_embeddings.clone()));
    tensors.push(("mask_logits".to_string(), seg.mask_logits.clone()));
    tensors.push(("prompt_prefix_ids".to_string(), ids_tensor(&seg.prompt.prefix)?));
    tensors.push(("prompt_suffix_ids".to_string(), ids_tensor(&seg.prompt.suffix)?));
    tensors.push(("output_ids".to_string(), ids_tensor(&seg.output_ids)?));
    let mut meta = BTreeMap::new();
    meta.insert("answer".to_string(), seg.answer.clone());
    meta.insert("projector".to_string(), projector.name());
    save_safetensors(path, &tensors, Some(&meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn parses_positionals_and_flags() {
        let cli = Cli::try_parse_from(["segment", "--model", "m", "cat.png", "the cat", "-o", "mask.png", "--projector", "pool2", "--json"]).unwrap();
        assert_eq!(cli.args.expression, "the cat");
        assert_eq!(cli.args.projector.as_deref(), Some("pool2"));
        assert!(cli.args.json && cli.args.overlay.is_none());
        assert!(Cli::try_parse_from(["segment", "--model", "m", "cat.png"]).is_err(), "the expression is required");
    }
}
