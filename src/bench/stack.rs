//! The benchmarked LISA-style stack on random weights, and its timed stages.
//!
//! ```text
//! photo ─ CLIP preprocessing 336² ─ vision encoder ─ [576, C] ─ projector ─ [S, d] ─┐
//!                                     (svp: + superpixels from SAM's embedding) │
//!   text prefix ids ─ embed ─────────────────────────────────── concat ─ LLM prefill ─ N greedy decode steps
//!   text suffix ids ─ embed ───────────────────────────────────┘
//! photo ─ SAM preprocessing 1024² ─ SAM image encoder ─ [1, 256, 64, 64] ─ prompt encoder + mask decoder (one prompt) ─ 256² mask logits
//! ```
//! Each timed stage ends with `Backend::synchronize` (and so starts on a drained backend), so a
//! GPU backend's queued work is counted in the stage that queued it.

use std::path::Path;
use std::time::Instant;

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::models::clip::{ClipVisionConfig, ClipVisionModel};
use crate::models::dinov2::{Dinov2Config, Dinov2Model};
use crate::models::generate::argmax;
use crate::models::llama::{Input, KvCache, Llama, LlamaConfig, Logits};
use crate::models::sam::preprocess::preprocess as sam_preprocess;
use crate::models::sam::{PointPrompt, Prompts, Sam, SamConfig};
use crate::preprocess::ImageProcessor;
use crate::superpixels::{generate_with_stats, Frame, Stats as SuperpixelStats, SuperpixelConfig, Superpixels};
use crate::models::vit::{self, VisionTower};
use crate::tensor::Tensor;
use crate::weights::{VarView, Weights};

use super::photos;
use super::roofline::{self, Cost};
use super::presets::{Preset, VisionKind, SAM_IMAGE, VISION_IMAGE, VISION_PATCH};
use crate::models::projector::{Projector, ProjectorDims, ProjectorKind, SvpConfig};

/// Text around the image in LISA's llava_v1 prompt: BOS + system sentence + "USER: " before the
/// image, the segmentation question + " ASSISTANT:" after (about 28 + 14 Llama tokens).
pub const PREFIX_TOKENS: usize = 28;
pub const SUFFIX_TOKENS: usize = 14;

/// Wall time of `f`, with the backend drained after it.
fn timed<T>(be: &Backend, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let start = Instant::now();
    let v = f()?;
    be.synchronize()?;
    Ok((v, start.elapsed().as_secs_f64() * 1e3))
}

/// Deterministic pseudo-random values in [lo, hi) (xorshift; inputs only, never weights).
fn pseudo_random(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// Fixed token ids in `16..vocab`, away from the low special ids (`vocab` ≥ 1).
fn pseudo_ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let low = 16.min(vocab - 1);
    pseudo_random(seed, n, low as f32, vocab as f32).into_iter().map(|x| (x as usize).min(vocab - 1) as u32).collect()
}

/// The encoders' outputs of one image, with their times.
pub struct Encoded {
    pub photo: &'static str,
    /// Each encoder's time (when overlapped: the vision encoder's span on the device, and SAM's
    /// wall time, both while sharing the device).
    pub vision_ms: f64,
    pub sam_ms: f64,
    /// Both encoders' wall time when they ran overlapped.
    pub overlapped_ms: Option<f64>,
    /// Patch features `[N, C]`.
    features: Tensor,
    /// SAM image embeddings `[1, 256, 64, 64]`.
    image_embeddings: Tensor,
    frame: Frame,
}

/// One embedded photo, ready for both encoders.
struct Photo {
    name: &'static str,
    vision_pixels: Tensor,
    sam_pixels: Tensor,
    frame: Frame,
}

/// Times of one projector's path through the LLM and the mask decoder.
pub struct PathTimes {
    /// Superpixel generation (svp only).
    pub superpixels_ms: Option<f64>,
    /// Its decoder and post-processing parts (superpixels::Stats).
    pub superpixels_split_ms: Option<(f64, f64)>,
    pub visual_tokens: usize,
    pub prompt_tokens: usize,
    pub projector_ms: f64,
    pub prefill_ms: f64,
    /// None when no decode step was asked for.
    pub decode_ms_per_token: Option<f64>,
    pub mask_decoder_ms: f64,
}

pub struct Stack {
    vision: VisionTower,
    feature_layer: i64,
    sam: Sam,
    llm: Llama,
    weights: Weights,
    /// Vision feature width C.
    vision_width: usize,
    /// Side of the vision patch grid (24).
    pub grid: usize,
    /// The embedded photos, preprocessed for both encoders.
    photos: Vec<Photo>,
    superpixels: SuperpixelConfig,
    prefix_ids: Vec<u32>,
    suffix_ids: Vec<u32>,
    prompts: Prompts,
}

impl Stack {
    /// Build every component over one set of random weights (components live under distinct
    /// names, as in a LISA checkpoint). `step` is called as each component starts.
    pub fn build(preset: &Preset, be: &Backend, dtype: DType, seed: u64, step: &dyn Fn(&str)) -> Result<Stack> {
        let origin = format!("<preset {}>", preset.name);
        let path = Path::new(&origin);
        let weights = Weights::synthetic(seed, dtype);
        let root = VarView::new(&weights, be);

        step("vision encoder");
        let tower = root.pp("vision_tower");
        let (vision, width) = match preset.vision_kind {
            VisionKind::Clip => {
                let cfg = ClipVisionConfig::from_model_config(path, &preset.vision_config)?;
                check_geometry(path, cfg.image_size, cfg.patch_size)?;
                let w = cfg.hidden_size;
                (VisionTower::Clip(ClipVisionModel::new(cfg, &tower)?), w)
            }
            VisionKind::Dinov2 => {
                let cfg = Dinov2Config::from_json(path, &preset.vision_config)?;
                check_geometry(path, cfg.image_size, cfg.patch_size)?;
                let w = cfg.hidden_size;
                (VisionTower::Dinov2(Dinov2Model::new(cfg, &tower)?), w)
            }
        };

        step("SAM");
        let sam_cfg: SamConfig = serde_json::from_value(preset.sam_config.clone())
            .map_err(|e| Error::config(path, format!("invalid SAM config: {e}")))?;
        sam_cfg.validate(path)?;
        let sam = Sam::from_weights(sam_cfg, &weights, be)?;

        step("LLM");
        let llm_json = preset.llm_config.as_object().ok_or_else(|| Error::config(path, "the LLM config is not a JSON object"))?;
        let llm = Llama::from_weights(LlamaConfig::from_json(llm_json, path)?, &root)?;

        let vocab = llm.config.vocab_size;
        let clip_processor = ImageProcessor::clip(VISION_IMAGE);
        let mask_size = sam.mask_size();
        let photos = photos::photos()?
            .into_iter()
            .map(|(name, img)| {
                let sam_in = sam_preprocess(&img, SAM_IMAGE)?;
                let (h, w) = sam_in.original_size;
                Ok(Photo {
                    name,
                    vision_pixels: be.upload(&clip_processor.preprocess(&img)?)?,
                    sam_pixels: be.upload(&sam_in.pixel_values)?,
                    frame: Frame::new((h, w), SAM_IMAGE, mask_size, clip_processor.view_rect(h, w))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if photos.is_empty() {
            return Err(Error::arg("bench", "no photos are embedded"));
        }
        let centre = SAM_IMAGE as f32 / 2.0;
        Ok(Stack {
            vision,
            feature_layer: preset.feature_layer,
            sam,
            llm,
            weights,
            vision_width: width,
            grid: VISION_IMAGE / VISION_PATCH,
            photos,
            superpixels: preset.superpixels.clone(),
            prefix_ids: pseudo_ids(seed ^ 3, PREFIX_TOKENS, vocab),
            suffix_ids: pseudo_ids(seed ^ 4, SUFFIX_TOKENS, vocab),
            prompts: Prompts { points: vec![vec![PointPrompt { x: centre, y: centre, label: 1 }]], ..Default::default() },
        })
    }

    /// A projector over the stack's random weights (`model.mm_projector.*`, `model.svp.*`).
    pub fn projector(&self, be: &Backend, kind: ProjectorKind) -> Result<Projector> {
        let dims = ProjectorDims { vision_width: self.vision_width, llm_width: self.llm.config.hidden_size, grid: self.grid };
        Projector::load(be, &VarView::new(&self.weights, be).pp("model"), kind, dims, &SvpConfig::default())
    }

    pub fn llm(&self) -> &Llama {
        &self.llm
    }

    /// Vision feature width C (the scatter-pooling width).
    pub fn vision_width(&self) -> usize {
        self.vision_width
    }

    /// Work of the vision encoder up to the feature layer on one 336² image.
    pub fn vision_cost(&self, weight_dtype: DType) -> Result<Cost> {
        let patches = self.grid * self.grid;
        let (width, patch, mlp_params, layers) = match &self.vision {
            VisionTower::Clip(m) => {
                let c = &m.config;
                (c.hidden_size, c.patch_size, 2 * c.hidden_size * c.intermediate_size, c.num_hidden_layers)
            }
            VisionTower::Dinov2(m) => {
                let c = &m.config;
                let mlp = if c.use_swiglu_ffn { 3 * c.hidden_size * c.swiglu_hidden() } else { 2 * c.hidden_size * c.mlp_hidden() };
                (c.hidden_size, c.patch_size, mlp, c.num_hidden_layers)
            }
        };
        // Hidden state i is the output of i layers; the encoder stops there.
        let run = vit::resolve_layer(self.feature_layer, layers)?;
        Ok(roofline::vit(width, run, patches + 1, patches, patch, mlp_params, weight_dtype.size()))
    }

    /// Work of SAM's image encoder on one 1024² image.
    pub fn sam_cost(&self, weight_dtype: DType) -> Cost {
        roofline::sam_encoder(&self.sam.config, weight_dtype.size())
    }

    pub fn is_clip(&self) -> bool {
        matches!(self.vision, VisionTower::Clip(_))
    }

    pub fn text_tokens(&self) -> usize {
        self.prefix_ids.len() + self.suffix_ids.len()
    }

    pub fn photo_count(&self) -> usize {
        self.photos.len()
    }

    pub fn superpixel_config(&self) -> &SuperpixelConfig {
        &self.superpixels
    }

    /// The superpixel stage alone on `enc`'s image embeddings with `cfg`: its superpixels and
    /// stats, and its wall time in ms.
    pub fn superpixels_timed(&self, be: &Backend, enc: &Encoded, cfg: &SuperpixelConfig) -> Result<((Superpixels, SuperpixelStats), f64)> {
        timed(be, || generate_with_stats(be, &self.sam, &enc.image_embeddings, &enc.frame, self.grid, cfg))
    }

    /// Set the superpixel generator's options (the preset's by default).
    pub fn set_superpixel_config(&mut self, cfg: SuperpixelConfig) {
        self.superpixels = cfg;
    }

    /// The vision encoder's feature-layer patch tokens and SAM's image embeddings of photo
    /// `index` (modulo the number of photos), each encoder timed on its own.
    pub fn encode(&self, be: &Backend, index: usize) -> Result<Encoded> {
        let photo = &self.photos[index % self.photos.len()];
        let section = crate::backend::profile::Section::start("the vision encoder");
        let (features, vision_ms) = timed(be, || self.vision_features(be, photo))?;
        drop(section);
        let _section = crate::backend::profile::Section::start("SAM's image encoder");
        let (image_embeddings, sam_ms) = timed(be, || self.sam.image_embeddings(be, &photo.sam_pixels))?;
        Ok(Encoded { photo: photo.name, vision_ms, sam_ms, overlapped_ms: None, features, image_embeddings, frame: photo.frame })
    }

    /// `encode` with the two encoders run together (`Backend::overlap`: on CUDA the vision
    /// encoder on a second stream beside SAM's; elsewhere one after the other), timed as one
    /// stage.
    pub fn encode_overlapped(&self, be: &Backend, index: usize) -> Result<Encoded> {
        let photo = &self.photos[index % self.photos.len()];
        let (o, ms) = timed(be, || {
            be.overlap(|lane| self.vision_features(lane, photo), |be| timed(be, || self.sam.image_embeddings(be, &photo.sam_pixels)))
        })?;
        let (image_embeddings, sam_ms) = o.main;
        Ok(Encoded { photo: photo.name, vision_ms: o.side_ms, sam_ms, overlapped_ms: Some(ms), features: o.side, image_embeddings, frame: photo.frame })
    }

    /// The vision encoder's feature-layer patch tokens `[N, C]`.
    fn vision_features(&self, be: &Backend, photo: &Photo) -> Result<Tensor> {
        let features = self.vision.patch_features(be, &photo.vision_pixels, self.feature_layer)?;
        let n = features.dim(0);
        if n != self.grid * self.grid {
            return Err(Error::shape("bench", format!("vision encoder gave {n} patch tokens, expected {}", self.grid * self.grid)));
        }
        Ok(features)
    }

    /// (svp: superpixels →) projector → prefill → `decode_tokens` greedy steps (never stopping
    /// at eos) → mask decoder.
    /// `cache` is the path's KV cache from earlier runs (a serving loop keeps its cache).
    pub fn run_path(&self, be: &Backend, enc: &Encoded, projector: &Projector, decode_tokens: usize, cache: &mut Option<KvCache>) -> Result<PathTimes> {
        let (superpixels, superpixels_ms, superpixels_split_ms) = if projector.kind == ProjectorKind::Svp {
            let _section = crate::backend::profile::Section::start("superpixels");
            let ((sp, stats), ms) = self.superpixels_timed(be, enc, &self.superpixels)?;
            (Some(sp), Some(ms), Some((stats.decoder_ms, stats.postprocess_ms)))
        } else {
            (None, None, None)
        };
        let (visual, projector_ms) = timed(be, || projector.forward(be, &enc.features, superpixels.as_ref()))?;
        let visual_tokens = visual.dim(0);
        let prompt_len = self.text_tokens() + visual_tokens;
        // Outside the timed region: a serving loop keeps its cache.
        let cache = kept_cache(be, &self.llm, cache, prompt_len + decode_tokens + 1)?;

        let (mut token, prefill_ms) = timed(be, || {
            let prefix = self.llm.embed(be, &self.prefix_ids)?;
            let suffix = self.llm.embed(be, &self.suffix_ids)?;
            // S = 0 (an image without superpixels) leaves the text alone.
            let parts: Vec<&Tensor> = [&prefix, &visual, &suffix].into_iter().filter(|t| t.dim(0) > 0).collect();
            let embeds = be.concat(&parts, 0)?;
            let out = self.llm.forward(be, Input::Embeds(&embeds), cache, Logits::Last, false)?;
            next_token(be, out.logits)
        })?;

        let (_, decode_ms) = timed(be, || {
            for _ in 0..decode_tokens {
                let out = self.llm.forward(be, Input::Ids(&[token]), cache, Logits::Last, false)?;
                token = next_token(be, out.logits)?;
            }
            Ok(())
        })?;
        let decode_ms_per_token = (decode_tokens > 0).then(|| decode_ms / decode_tokens as f64);

        let (_, mask_decoder_ms) = timed(be, || self.sam.predict(be, &enc.image_embeddings, &self.prompts, false))?;
        Ok(PathTimes { superpixels_ms, superpixels_split_ms, visual_tokens, prompt_tokens: prompt_len, projector_ms, prefill_ms, decode_ms_per_token, mask_decoder_ms })
    }

}

/// A cleared cache with room for `tokens`, kept in `slot` across runs as a serving loop keeps
/// its cache (and, where the backend records decode steps, the step recorded with it): reused
/// while it is large enough, else allocated anew with room rounded up to 256 tokens.
pub(crate) fn kept_cache<'a>(be: &Backend, llm: &Llama, slot: &'a mut Option<KvCache>, tokens: usize) -> Result<&'a mut KvCache> {
    if slot.as_ref().is_some_and(|c| c.capacity() < tokens) {
        *slot = None;
    }
    let cache = match slot {
        Some(c) => c,
        None => slot.insert(llm.new_cache(be, tokens.next_multiple_of(256).min(llm.config.max_position_embeddings).max(tokens))?),
    };
    cache.clear();
    Ok(cache)
}

/// Greedy choice from last-position logits (the one host read per token, as in a real decoder).
pub(crate) fn next_token(be: &Backend, logits: Option<Tensor>) -> Result<u32> {
    let logits = logits.ok_or_else(|| Error::shape("bench", "the LLM returned no logits"))?;
    argmax(&be.to_vec_f32(&logits)?)
}

/// The benchmark's token counts assume the 336 px / 14 px geometry; a preset must keep it.
fn check_geometry(path: &Path, image: usize, patch: usize) -> Result<()> {
    if image != VISION_IMAGE || patch != VISION_PATCH {
        return Err(Error::config(path, format!("vision encoder is {image} px / {patch} px patches; the benchmark needs {VISION_IMAGE} / {VISION_PATCH}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::presets::preset;
    use serde_json::json;

    /// The DINOv2 tower goes through the same stages (the 7B preset that uses it is too large to
    /// build here): a tiny DINOv2 at 336 px in place of the tiny preset's CLIP.
    #[test]
    fn dinov2_stack_runs_every_stage() {
        let mut p = preset("tiny").unwrap();
        p.vision_kind = VisionKind::Dinov2;
        p.vision_config = json!({
            "model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": VISION_IMAGE, "patch_size": VISION_PATCH,
        });
        let be = Backend::cpu();
        let stack = Stack::build(&p, &be, DType::BF16, 7, &|_| {}).unwrap();
        let enc = stack.encode(&be, 0).unwrap();
        assert_eq!(enc.features.shape(), &[576, 32]);
        assert_eq!(enc.image_embeddings.shape(), &[1, 32, 64, 64]);
        let pool = stack.projector(&be, ProjectorKind::Pool(3)).unwrap();
        let mut cache = None;
        let t = stack.run_path(&be, &enc, &pool, 2, &mut cache).unwrap();
        assert!(t.prefill_ms > 0.0 && t.mask_decoder_ms > 0.0 && t.decode_ms_per_token.is_some());
        assert_eq!((t.visual_tokens, t.prompt_tokens), (64, 64 + PREFIX_TOKENS + SUFFIX_TOKENS));
        assert!(t.superpixels_ms.is_none());
        // The path's cache stays for the next run: room rounded up to 256, the prompt and the
        // decoded tokens in it.
        let c = cache.as_ref().unwrap();
        assert_eq!((c.capacity(), c.len()), (256, t.prompt_tokens + 2));
    }

    /// A kept cache is cleared and reused while it has room, replaced by a larger one when not.
    #[test]
    fn kept_caches_are_reused_while_they_have_room() {
        let be = Backend::cpu();
        let stack = Stack::build(&preset("tiny").unwrap(), &be, DType::F32, 7, &|_| {}).unwrap();
        let llm = stack.llm();
        let mut slot = None;
        let c = kept_cache(&be, llm, &mut slot, 300).unwrap();
        assert_eq!((c.capacity(), c.len()), (512, 0));
        llm.forward(&be, Input::Ids(&[1, 2, 3]), c, Logits::None, false).unwrap();
        assert_eq!(c.len(), 3);
        // Reused (a new cache for 100 tokens would hold 256), and cleared.
        let c = kept_cache(&be, llm, &mut slot, 100).unwrap();
        assert_eq!((c.capacity(), c.len()), (512, 0));
        let c = kept_cache(&be, llm, &mut slot, 600).unwrap();
        assert_eq!((c.capacity(), c.len()), (768, 0));
        // Never beyond the model's context (2048 here): the rounding stops there, and a request
        // past it is the cache's error.
        assert_eq!(kept_cache(&be, llm, &mut slot, 2000).unwrap().capacity(), 2048);
        assert!(kept_cache(&be, llm, &mut slot, 2049).is_err());
    }
}
