//! `visword embed`: vision features of one image from a CLIP vision tower or DINOv2.
//!
//! `-o` writes the patch tokens of one hidden state as `features` `[B, N, D]` (metadata: the
//! layer, the patch grid and the model type); `--dump` writes every output under HF's field names
//! (`last_hidden_state`, `hidden_states.{i}` for i = 0..=layers, `pooler_output`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};
use crate::image_io::DEFAULT_MAX_PIXELS;
use crate::models::vit::{self, VisionTower};
use crate::preprocess::ImageProcessor;
use crate::tensor::Tensor;
use crate::weights::{save_safetensors, Weights};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory: config.json and safetensors of a CLIP vision tower (clip_vision_model or
    /// clip) or DINOv2; its preprocessor_config.json is used when present.
    #[arg(long)]
    pub model: PathBuf,
    /// Input image (PNG or JPEG). Not used with --pixel-values.
    pub image: Option<PathBuf>,
    /// Write the chosen layer's patch features here (tensor `features`, [1, N, D]).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Preprocessed input in place of IMAGE: a safetensors file with `pixel_values` [1, 3, H, W].
    #[arg(long)]
    pub pixel_values: Option<PathBuf>,
    /// Hidden state to take features from, indexed as HF's `hidden_states` (0 = embeddings,
    /// negative counts from the end). Default: −2 for CLIP (LLaVA's penultimate layer); for DINOv2
    /// the final layernormed `last_hidden_state`.
    #[arg(long, allow_hyphen_values = true)]
    pub layer: Option<i64>,
    /// Keep the class token as the first feature row.
    #[arg(long)]
    pub keep_cls: bool,
    /// Let CLIP take inputs of another size by interpolating its position table (DINOv2 always
    /// does).
    #[arg(long)]
    pub interpolate_pos_encoding: bool,
    /// Write every output with HF's field names to this safetensors file.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// auto, cpu, cuda or wgpu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

/// Read `pixel_values` from a safetensors file as an f32 `[B, C, H, W]` host tensor, refusing
/// more than `max_pixels` per image (as for image files).
pub fn read_pixel_values(path: &std::path::Path, max_pixels: u64) -> Result<Tensor> {
    let w = Weights::open(path)?;
    let t = w.get("pixel_values")?;
    if !t.dtype().is_float() {
        return Err(Error::TensorDtype { name: "pixel_values".into(), dtype: t.dtype().to_string(), msg: "expected f32".into() });
    }
    if t.dims() != 4 {
        return Err(Error::arg("--pixel-values", format!("{}: `pixel_values` has shape {:?}, expected [1, 3, H, W]", path.display(), t.shape())));
    }
    let (h, w_) = (t.dim(2) as u64, t.dim(3) as u64);
    if h * w_ > max_pixels {
        return Err(Error::arg("--pixel-values", format!("{}: {h}×{w_} = {} pixels, over the limit of {max_pixels}", path.display(), h * w_)));
    }
    // An owned copy: the mapping is dropped with `w`.
    Tensor::from_f32(t.to_f32_vec()?, t.shape().to_vec())
}

pub fn run(args: &Args) -> Result<()> {
    if args.output.is_none() && args.dump.is_none() {
        return Err(Error::arg("-o", "give -o FEATS.safetensors and/or --dump OUT.safetensors"));
    }
    let be = Backend::new(BackendKind::from_str(&args.backend)?)?;
    let mut tower = VisionTower::load(&args.model, &be)?;
    if let VisionTower::Clip(m) = &mut tower {
        m.interpolate_pos_encoding = args.interpolate_pos_encoding;
    }
    let pixel_values = match (&args.pixel_values, &args.image) {
        (Some(_), Some(_)) => return Err(Error::arg("IMAGE", "give an image or --pixel-values, not both")),
        (None, None) => return Err(Error::arg("IMAGE", "no input: give an image or --pixel-values FILE")),
        (Some(p), None) => read_pixel_values(p, args.max_pixels)?,
        (None, Some(img)) => ImageProcessor::for_model_dir(&args.model)?.preprocess_file(img, args.max_pixels)?,
    };
    let px = be.upload(&pixel_values)?;

    let (features, layer_name, grid) = if let Some(dump) = &args.dump {
        let out = tower.forward(&be, &px, true)?;
        let mut tensors = vec![("last_hidden_state".to_string(), be.to_host(&out.last_hidden_state)?)];
        for (i, h) in out.hidden_states.iter().enumerate() {
            tensors.push((format!("hidden_states.{i}"), be.to_host(h)?));
        }
        tensors.push(("pooler_output".to_string(), be.to_host(&out.pooler_output)?));
        save_safetensors(dump, &tensors, None)?;
        let (feats, name) = match (args.layer, &tower) {
            (Some(k), _) => (out.hidden_states[vit::resolve_layer(k, tower.num_layers())?].clone(), k.to_string()),
            (None, VisionTower::Clip(_)) => (out.hidden_states[vit::resolve_layer(-2, tower.num_layers())?].clone(), "-2".into()),
            (None, VisionTower::Dinov2(_)) => (out.last_hidden_state, "last_hidden_state".into()),
        };
        (feats, name, out.grid)
    } else {
        let s = px.shape();
        let p = tower.patch_size();
        let grid = (s[2] / p, s[3] / p);
        match (args.layer, &tower) {
            (Some(k), _) => (tower.feature_layer(&be, &px, k)?, k.to_string(), grid),
            (None, VisionTower::Clip(_)) => (tower.feature_layer(&be, &px, -2)?, "-2".into(), grid),
            (None, VisionTower::Dinov2(_)) => (tower.forward(&be, &px, false)?.last_hidden_state, "last_hidden_state".into(), grid),
        }
    };

    if let Some(out) = &args.output {
        let feats = if args.keep_cls { features } else { vit::patch_tokens(&be, &features)? };
        let mut meta = BTreeMap::new();
        meta.insert("layer".to_string(), layer_name);
        meta.insert("grid".to_string(), format!("{},{}", grid.0, grid.1));
        meta.insert("class_token".to_string(), args.keep_cls.to_string());
        meta.insert(
            "model_type".to_string(),
            match tower {
                VisionTower::Clip(_) => "clip".to_string(),
                VisionTower::Dinov2(_) => "dinov2".to_string(),
            },
        );
        save_safetensors(out, &[("features".to_string(), be.to_host(&feats)?)], Some(&meta))?;
    }
    Ok(())
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
    fn parses_negative_layers_and_a_positional_image() {
        let cli = Cli::try_parse_from(["embed", "--model", "m", "cat.png", "-o", "f.safetensors", "--layer", "-2"]).unwrap();
        assert_eq!(cli.args.layer, Some(-2));
        assert_eq!(cli.args.image.as_deref(), Some(std::path::Path::new("cat.png")));
        assert_eq!(cli.args.backend, "auto");
        let cli = Cli::try_parse_from(["embed", "--model", "m", "--pixel-values", "px.safetensors", "--dump", "d.safetensors"]).unwrap();
        assert!(cli.args.image.is_none() && cli.args.output.is_none());
        assert!(Cli::try_parse_from(["embed", "cat.png"]).is_err(), "--model is required");
    }
}
