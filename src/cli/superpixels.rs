//! `visword superpixels`: SAM superpixels of one image (docs/svp.md §1–2), without running a
//! vision encoder. From a SAM directory the view and patch grid are those of CLIP ViT-L/14-336's
//! processor; from a segmenter directory, its own encoder's (`--patch-grid` sets the grid side). Writes the label map as a colour PNG (one colour per superpixel, black
//! outside the view, at the low-res crop's size), the boundaries drawn on the photo, and a dump.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};

use super::check_output_dir;
use crate::image_io::{load_rgb, DEFAULT_MAX_PIXELS};
use crate::models::sam::preprocess::preprocess;
use crate::models::sam::Sam;
use crate::models::segmenter::{self, config::SegmenterConfig};
use crate::preprocess::ImageProcessor;
use crate::superpixels::render::write_rgb_png;
use crate::superpixels::{generate_with_stats, Frame, Stats, SuperpixelConfig, Superpixels, MAX_GRID};
use crate::tensor::Tensor;
use crate::weights::{save_safetensors, VarView, Weights};

/// The superpixel options shared by the commands that make superpixels; unset flags keep the
/// config's value.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SuperpixelArgs {
    /// Prompt grid: N×N foreground points over the view (N² mask-decoder prompts).
    #[arg(long, value_name = "N")]
    pub points_per_side: Option<usize>,
    /// Keep masks whose predicted IoU (+ the whole-object bonus) is at least this.
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub pred_iou_thresh: Option<f32>,
    /// Keep masks whose stability score is at least this.
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub stability_thresh: Option<f32>,
    /// Box IoU above which a mask is suppressed by a better one.
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub box_nms_thresh: Option<f32>,
    /// Drop masks smaller than this many pixels at SAM's input scale.
    #[arg(long, value_name = "PX", allow_hyphen_values = true)]
    pub min_area: Option<f32>,
    /// Merge regions until at most this many remain (0: no cap).
    #[arg(long, value_name = "N")]
    pub max_superpixels: Option<usize>,
}

impl SuperpixelArgs {
    /// Override `cfg`'s fields with the flags given.
    pub fn apply(&self, cfg: &mut SuperpixelConfig) {
        if let Some(v) = self.points_per_side {
            cfg.points_per_side = v;
        }
        if let Some(v) = self.pred_iou_thresh {
            cfg.pred_iou_thresh = v;
        }
        if let Some(v) = self.stability_thresh {
            cfg.stability_thresh = v;
        }
        if let Some(v) = self.box_nms_thresh {
            cfg.box_nms_thresh = v;
        }
        if let Some(v) = self.min_area {
            cfg.min_area = v;
        }
        if let Some(v) = self.max_superpixels {
            cfg.max_superpixels = v;
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// SAM checkpoint directory (transformers SamModel: config.json + model.safetensors), or a
    /// segmenter directory (its SAM, superpixel settings, patch grid and encoder view).
    #[arg(long, value_name = "DIR")]
    pub sam: PathBuf,
    /// Input image (PNG or JPEG).
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Label map PNG: one colour per superpixel, black where there is none; one pixel per
    /// low-res mask cell (the image's longest side is 256).
    #[arg(short = 'o', long = "output", value_name = "LABELS.png")]
    pub output: Option<PathBuf>,
    /// The photo with each superpixel's boundary drawn in yellow, at the photo's size.
    #[arg(long, value_name = "SP.png")]
    pub overlay: Option<PathBuf>,
    #[command(flatten)]
    pub superpixels: SuperpixelArgs,
    /// Side of the patch grid the coverage matrix is computed on (default: a segmenter's own,
    /// else CLIP ViT-L/14-336's 24).
    #[arg(long, value_name = "N")]
    pub patch_grid: Option<usize>,
    /// Write label_map (i32 [lh, lw]), coverage (f32 [S, N²]) and geometry (f32 [S, 7]).
    #[arg(long, value_name = "OUT.safetensors")]
    pub dump: Option<PathBuf>,
    /// Compute backend: auto, cpu, cuda or wgpu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

fn dump(path: &Path, sp: &Superpixels, frame: &Frame, cfg: &SuperpixelConfig) -> Result<()> {
    let p = sp.grid * sp.grid;
    let tensors = vec![
        ("label_map".to_string(), Tensor::from_i32(sp.label_map.clone(), vec![sp.height, sp.width])?),
        ("coverage".to_string(), Tensor::from_f32(sp.coverage.clone(), vec![sp.count, p])?),
        ("geometry".to_string(), Tensor::from_f32(sp.geometry.iter().flatten().copied().collect(), vec![sp.count, 7])?),
    ];
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("config".to_string(), serde_json::to_string(cfg).unwrap_or_default());
    meta.insert("view".to_string(), serde_json::to_string(&frame.view).unwrap_or_default());
    meta.insert("patch_grid".to_string(), sp.grid.to_string());
    save_safetensors(path, &tensors, Some(&meta))
}

fn report(sp: &Superpixels, stats: &Stats, embedding_ms: f64, superpixels_ms: f64, json: bool) {
    if json {
        let obj = serde_json::json!({
            "superpixels": sp.count,
            "label_map": [sp.height, sp.width],
            "patch_grid": sp.grid,
            "masks": stats.masks,
            "filtered": stats.filtered,
            "after_nms": stats.after_nms,
            "accepted": stats.accepted,
            "painted_over": stats.painted_over,
            "rest_regions": stats.rest_regions,
            "merges": stats.merges,
            "embedding_ms": embedding_ms,
            "superpixels_ms": superpixels_ms,
            "decoder_ms": stats.decoder_ms,
            "postprocess_ms": stats.postprocess_ms,
        });
        println!("{obj}");
        return;
    }
    println!("superpixels: {}", sp.count);
    println!("label map: {}×{} cells, patch grid {}×{}", sp.width, sp.height, sp.grid, sp.grid);
    println!(
        "masks: {} predicted, {} passed the filters, {} after NMS, {} accepted ({} painted over); {} rest regions; {} merges",
        stats.masks, stats.filtered, stats.after_nms, stats.accepted, stats.painted_over, stats.rest_regions, stats.merges
    );
    println!(
        "time: embedding {embedding_ms:.1} ms, superpixels {superpixels_ms:.1} ms (decoder {:.1} ms, post-processing {:.1} ms)",
        stats.decoder_ms, stats.postprocess_ms
    );
}

/// Where SAM and the superpixel settings come from.
struct Source {
    sam: Sam,
    cfg: SuperpixelConfig,
    grid: usize,
    view: ImageProcessor,
}

/// A SAM directory (defaults: docs/svp.md's thresholds, CLIP-336's grid and view), or a
/// segmenter directory (its SAM under `model.visual_model` and its own settings).
fn load_source(dir: &Path, be: &Backend) -> Result<Source> {
    let (_, json) = crate::models::vit::read_config(dir)?;
    if crate::models::vit::model_type(&json) == Some(segmenter::config::MODEL_TYPE) {
        let config = SegmenterConfig::from_dir(dir)?;
        let weights = Weights::open(dir)?;
        let sam = Sam::from_view(config.sam.clone(), &VarView::new(&weights, be).pp(segmenter::names::SAM))?;
        return Ok(Source { sam, cfg: config.superpixels.clone(), grid: config.grid, view: config.vision_processor.clone() });
    }
    Ok(Source { sam: Sam::load(dir, be)?, cfg: SuperpixelConfig::default(), grid: 24, view: ImageProcessor::clip(336) })
}

pub fn run(args: &Args) -> Result<()> {
    // Cheap checks first: nothing is loaded or written on a bad flag.
    let kind = BackendKind::from_str(&args.backend)?;
    let mut flags_only = SuperpixelConfig::default();
    args.superpixels.apply(&mut flags_only);
    flags_only.validate("flags")?;
    if let Some(g) = args.patch_grid {
        if g == 0 || g > MAX_GRID {
            return Err(Error::arg("--patch-grid", format!("is {g}, expected 1..={MAX_GRID}")));
        }
    }
    check_output_dir("-o", &args.output)?;
    check_output_dir("--overlay", &args.overlay)?;
    check_output_dir("--dump", &args.dump)?;

    let be = Backend::new(kind)?;
    let Source { sam, mut cfg, grid, view } = load_source(&args.sam, &be)?;
    args.superpixels.apply(&mut cfg);
    cfg.validate("flags")?;
    let grid = args.patch_grid.unwrap_or(grid);
    let img = load_rgb(&args.image, args.max_pixels)?;
    let pre = preprocess(&img, sam.input_size())?;
    let (h, w) = pre.original_size;
    let frame = Frame::new((h, w), sam.input_size(), sam.mask_size(), view.view_rect(h, w))?;

    let start = Instant::now();
    let embeddings = sam.image_embeddings(&be, &be.upload(&pre.pixel_values)?)?;
    let embedding_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let (sp, stats) = generate_with_stats(&be, &sam, &embeddings, &frame, grid, &cfg)?;
    let superpixels_ms = start.elapsed().as_secs_f64() * 1e3;

    if let Some(path) = &args.output {
        write_rgb_png(path, &sp.label_rgb(), sp.height, sp.width)?;
        eprintln!("superpixels: wrote {} ({}×{})", path.display(), sp.width, sp.height);
    }
    if let Some(path) = &args.overlay {
        write_rgb_png(path, &sp.overlay_rgb(&frame, &img)?, h, w)?;
        eprintln!("superpixels: wrote {} ({w}×{h})", path.display());
    }
    if let Some(path) = &args.dump {
        dump(path, &sp, &frame, &cfg)?;
        eprintln!("superpixels: wrote {}", path.display());
    }
    report(&sp, &stats, embedding_ms, superpixels_ms, args.json);
    Ok(())
}
