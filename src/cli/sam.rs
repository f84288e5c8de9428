//! `visword sam`: segment an image with SAM from point and box prompts.
//!
//! All `--point`s (foreground) and the `--box` form one prompt. Coordinates are in the original
//! image's pixels, or, with `--pixel-values`, in the model input frame (as transformers'
//! `input_points`). The mask PNG has the original image's size (the input frame's with
//! `--pixel-values` alone); with `--multimask` the mask with the highest predicted IoU is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};
use crate::image_io::{load_rgb, DEFAULT_MAX_PIXELS};
use crate::models::sam::postprocess::{binarize, upscale_masks, write_mask_png};
use crate::models::sam::preprocess::{preprocess, preprocess_shape, transform_point};
use crate::models::sam::{PointPrompt, Prompts, Sam};
use crate::tensor::Tensor;
use crate::weights::{save_safetensors, Weights};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// SAM checkpoint directory (transformers SamModel: config.json + model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Input image (PNG or JPEG). Optional with --pixel-values, where it only sets the output size.
    #[arg(value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// A foreground point X,Y (repeatable; all points belong to one prompt).
    #[arg(long = "point", value_name = "X,Y")]
    pub points: Vec<String>,
    /// A box X0,Y0,X1,Y1 added to the prompt.
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1")]
    pub bbox: Option<String>,
    /// Predict three candidate masks and keep the one with the highest predicted IoU.
    #[arg(long)]
    pub multimask: bool,
    /// Output mask PNG (0/255 grayscale).
    #[arg(short = 'o', long = "output", value_name = "MASK.png")]
    pub output: PathBuf,
    /// Use this preprocessed input (tensor `pixel_values` [1, 3, S, S] f32) instead of
    /// preprocessing IMAGE; coordinates are then in the model input frame.
    #[arg(long, value_name = "FILE.safetensors")]
    pub pixel_values: Option<PathBuf>,
    /// Write image_embeddings, pred_masks and iou_scores to this safetensors file.
    #[arg(long, value_name = "OUT.safetensors")]
    pub dump: Option<PathBuf>,
    /// Compute backend: auto, cpu, cuda or wgpu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

/// Parse `n` comma-separated finite numbers.
fn parse_numbers(arg: &str, text: &str, n: usize) -> Result<Vec<f32>> {
    let parts: Vec<&str> = text.split(',').map(|s| s.trim()).collect();
    if parts.len() != n {
        return Err(Error::arg(arg, format!("`{text}`: expected {n} comma-separated numbers")));
    }
    parts
        .iter()
        .map(|p| match f32::from_str(p) {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(Error::arg(arg, format!("`{text}`: `{p}` is not a finite number"))),
        })
        .collect()
}

/// Check that (x, y) lies in a `width × height` frame.
fn check_inside(arg: &str, x: f32, y: f32, height: usize, width: usize) -> Result<()> {
    if x < 0.0 || y < 0.0 || x > width as f32 || y > height as f32 {
        return Err(Error::arg(arg, format!("({x}, {y}) is outside the {width}×{height} image")));
    }
    Ok(())
}

/// The model input and the geometry that maps it back to the output mask.
struct Input {
    pixel_values: Tensor,
    /// Size of the frame the user's coordinates are in (h, w).
    coord_frame: (usize, usize),
    /// Whether coordinates need scaling from the original image into the resized frame.
    scale_coords: bool,
    original: (usize, usize),
    resized: (usize, usize),
}

fn load_pixel_values(path: &Path, size: usize) -> Result<Tensor> {
    let w = Weights::open(path)?;
    let t = w.get("pixel_values")?;
    if t.shape() != [1, 3, size, size] {
        return Err(Error::TensorShape { name: "pixel_values".into(), expected: vec![1, 3, size, size], got: t.shape().to_vec() });
    }
    t.to_f32()
}

fn load_input(args: &Args, size: usize) -> Result<Input> {
    let image = match &args.image {
        Some(p) => Some(load_rgb(p, args.max_pixels)?),
        None => None,
    };
    match (&args.pixel_values, image) {
        (Some(pv), image) => {
            let pixel_values = load_pixel_values(pv, size)?;
            let (original, resized) = match image {
                Some(img) => {
                    let orig = (img.height() as usize, img.width() as usize);
                    (orig, preprocess_shape(orig.0, orig.1, size))
                }
                None => ((size, size), (size, size)),
            };
            Ok(Input { pixel_values, coord_frame: resized, scale_coords: false, original, resized })
        }
        (None, Some(img)) => {
            let pre = preprocess(&img, size)?;
            Ok(Input {
                pixel_values: pre.pixel_values,
                coord_frame: pre.original_size,
                scale_coords: true,
                original: pre.original_size,
                resized: pre.resized_size,
            })
        }
        (None, None) => Err(Error::arg("IMAGE", "give an image, or --pixel-values")),
    }
}

/// Build the single prompt from the CLI's points and box, in the model input frame.
fn build_prompts(args: &Args, input: &Input) -> Result<Prompts> {
    if args.points.is_empty() && args.bbox.is_none() {
        return Err(Error::arg("--point/--box", "give at least one --point X,Y or a --box X0,Y0,X1,Y1"));
    }
    let (fh, fw) = input.coord_frame;
    let to_model = |x: f32, y: f32| {
        if input.scale_coords {
            transform_point(x, y, input.original, input.resized)
        } else {
            (x, y)
        }
    };
    let mut points = Vec::new();
    for text in &args.points {
        let v = parse_numbers("--point", text, 2)?;
        check_inside("--point", v[0], v[1], fh, fw)?;
        let (x, y) = to_model(v[0], v[1]);
        points.push(PointPrompt { x, y, label: 1 });
    }
    let mut boxes = Vec::new();
    if let Some(text) = &args.bbox {
        let v = parse_numbers("--box", text, 4)?;
        check_inside("--box", v[0], v[1], fh, fw)?;
        check_inside("--box", v[2], v[3], fh, fw)?;
        if v[0] > v[2] || v[1] > v[3] {
            return Err(Error::arg("--box", format!("`{text}`: expected X0 ≤ X1 and Y0 ≤ Y1")));
        }
        let (x0, y0) = to_model(v[0], v[1]);
        let (x1, y1) = to_model(v[2], v[3]);
        boxes.push([x0, y0, x1, y1]);
    }
    Ok(Prompts { points: if points.is_empty() { vec![] } else { vec![points] }, boxes, mask: None })
}

pub fn run(args: &Args) -> Result<()> {
    let kind = BackendKind::from_str(&args.backend)?;
    // Cheap argument checks before any loading.
    for p in &args.points {
        parse_numbers("--point", p, 2)?;
    }
    if let Some(b) = &args.bbox {
        parse_numbers("--box", b, 4)?;
    }
    if args.points.is_empty() && args.bbox.is_none() {
        return Err(Error::arg("--point/--box", "give at least one --point X,Y or a --box X0,Y0,X1,Y1"));
    }
    let backend = Backend::new(kind)?;
    let model = Sam::load(&args.model, &backend)?;
    let size = model.input_size();
    let input = load_input(args, size)?;
    let prompts = build_prompts(args, &input)?;

    let pixel_values = backend.upload(&input.pixel_values)?;
    let embeddings = model.image_embeddings(&backend, &pixel_values)?;
    let out = model.predict(&backend, &embeddings, &prompts, args.multimask)?;

    let iou = backend.to_vec_f32(&out.iou_scores)?;
    let best = iou.iter().enumerate().fold(0, |b, (i, &v)| if v > iou[b] { i } else { b });
    let ms = model.mask_size();
    let masks = backend.to_vec_f32(&out.pred_masks)?;
    let plane = &masks[best * ms * ms..(best + 1) * ms * ms];
    let logits = upscale_masks(plane, 1, (ms, ms), size, input.resized, input.original)?;
    let (h, w) = input.original;
    write_mask_png(&args.output, &binarize(&logits, 0.0), h, w)?;

    if let Some(dump) = &args.dump {
        let tensors = vec![
            ("image_embeddings".to_string(), backend.to_host(&embeddings)?),
            ("pred_masks".to_string(), backend.to_host(&out.pred_masks)?),
            ("iou_scores".to_string(), backend.to_host(&out.iou_scores)?),
        ];
        let mut meta = BTreeMap::new();
        meta.insert("selected_mask".to_string(), best.to_string());
        save_safetensors(dump, &tensors, Some(&meta))?;
    }
    eprintln!(
        "sam: wrote {} ({w}×{h}), mask {} of {} (predicted IoU {:.3})",
        args.output.display(),
        best,
        iou.len(),
        iou[best]
    );
    Ok(())
}
