//! The referring segmenter (LISA / GLaMM style, docs/svp.md §4): an image and a referring
//! expression in, an answer and one mask per `[SEG]` out.
//!
//! ```text
//! image ─ SAM preprocess ─ SAM image encoder ─ embedding ─┬─ superpixels (svp only) ─┐
//!       └ vision preprocess ─ vision tower ─ patch features [P, C] ─ projector ─ visual tokens [S, d]
//! prompt text ─ chat template ─ split at <image> ─ prefix ‖ <im_start> ‖ visual ‖ <im_end> ‖ suffix
//!   ─ LLM prefill ─ greedy decode ─ hidden state that predicted each [SEG]
//!   ─ text_hidden_fcs ─ SAM prompt token ─ mask decoder (single mask) ─ 256² logits ─ H×W mask
//! ```
//! One directory holds the whole model under LISA's tensor names (`names`); every component is
//! built by its own loader from a scoped view of the one mapped weight set.

pub mod config;
pub mod decode;
pub mod prompt;
pub mod random;
pub mod tensor_plan;
pub mod tokenizer_json;

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;

use crate::backend::{Activation, Backend};
use crate::bench::report::StagesMs;
use crate::error::{Error, Result};
use crate::models::chat_template::ChatTemplate;
use crate::models::clip::ClipVisionModel;
use crate::models::dinov2::Dinov2Model;
use crate::models::llama::Llama;
use crate::models::projector::{Projector, ProjectorDims, ProjectorKind};
use crate::models::sam::{self, Sam};
use crate::models::tokenizer::Tokenizer;
use crate::models::vit::{Linear, VisionTower};
use crate::superpixels::{self, Frame, Superpixels};
use crate::tensor::Tensor;
use crate::weights::{VarView, Weights};

pub use config::{SegmenterConfig, VisionConfig};
pub use decode::Stop;
pub use prompt::PromptIds;

/// Where each component sits in a LISA checkpoint (and in a segmenter directory).
pub mod names {
    /// The vision tower; a CLIP tower keeps HF `CLIPVisionModel`'s `vision_model.` level below it.
    pub const VISION_TOWER: &str = "model.vision_tower.vision_tower";
    pub const CLIP_VISION_MODEL: &str = "vision_model";
    /// SAM, with HF `SamModel` names below it (`tools/convert_lisa.py` renames the originals).
    pub const SAM: &str = "model.visual_model";
    /// The LLaVA-style wrapper: `mm_projector.*`, `svp.*`, `text_hidden_fcs.*` (and the LLM's
    /// `embed_tokens`, `layers`, `norm`; `lm_head` is at the root).
    pub const MODEL: &str = "model";
    /// `text_hidden_fcs.0.0` (Linear d→d) and `.0.2` (Linear d→SAM prompt width).
    pub const TEXT_HIDDEN_FCS: &str = "model.text_hidden_fcs.0";
}

/// Per-run options.
#[derive(Clone, Debug, Default)]
pub struct SegmentOptions {
    /// Overrides the config's `max_new_tokens`.
    pub max_new_tokens: Option<usize>,
    /// The vision tower's preprocessed input `[1, 3, H, W]` in place of preprocessing the image.
    pub pixel_values: Option<Tensor>,
    /// SAM's preprocessed input `[1, 3, S_in, S_in]` in place of preprocessing the image.
    pub sam_pixel_values: Option<Tensor>,
}

/// Everything one run produced. Tensors are host copies.
pub struct Segmentation {
    /// Generated text before EOS, special tokens kept (`[SEG]` shows).
    pub answer: String,
    /// Generated ids before EOS.
    pub output_ids: Vec<u32>,
    pub prompt: PromptIds,
    pub stop: Stop,
    /// S, the visual tokens in the prompt.
    pub visual_tokens: usize,
    /// The whole prompt: text, image start/end and visual tokens.
    pub prompt_tokens: usize,
    /// Visual tokens `[S, d]`.
    pub visual: Tensor,
    /// The superpixels (svp only).
    pub superpixels: Option<Superpixels>,
    /// `[n_seg, C]` SAM prompt tokens from the `[SEG]` hidden states (C = SAM's prompt width).
    pub seg_embeddings: Tensor,
    /// `[n_seg, L, L]` low-resolution mask logits.
    pub mask_logits: Tensor,
    /// One binary mask (0 / 255) per `[SEG]`, `height × width` of the original image.
    pub masks: Vec<Vec<u8>>,
    /// (height, width) of the original image.
    pub size: (usize, usize),
    pub stages: StagesMs,
    pub end_to_end_ms: f64,
}

impl Segmentation {
    /// The union of the masks (all zero when the answer has no `[SEG]`).
    pub fn union_mask(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.size.0 * self.size.1];
        for m in &self.masks {
            for (o, &v) in out.iter_mut().zip(m) {
                *o = (*o).max(v);
            }
        }
        out
    }
}

pub struct Segmenter {
    pub config: SegmenterConfig,
    pub dir: PathBuf,
    vision: VisionTower,
    sam: Sam,
    llm: Llama,
    projector: Projector,
    text_fc1: Linear,
    text_fc2: Linear,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    eos: Vec<u32>,
}

/// Wall time of `f` in ms, with the backend drained after it (so queued GPU work counts here).
fn timed<T>(be: &Backend, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let start = Instant::now();
    let v = f()?;
    be.synchronize()?;
    Ok((v, start.elapsed().as_secs_f64() * 1e3))
}

/// A stored tensor's shape against the one the config implies, as a config error that names
/// both the tensor and the config fields (a plain shape error would not say which side is off).
fn check_stored(cfg: &SegmenterConfig, vv: &VarView, name: &str, expected: &[usize], fields: &str) -> Result<()> {
    let got = vv.stored_shape(name, expected)?;
    if got != expected {
        return Err(Error::config(
            &cfg.path,
            format!("{fields} give {expected:?} for `{}`, but the checkpoint stores {got:?}", vv.full_name(name)),
        ));
    }
    Ok(())
}

impl Segmenter {
    /// Load a segmenter directory; `projector` overrides the config's.
    pub fn load(dir: &Path, be: &Backend, projector: Option<ProjectorKind>) -> Result<Segmenter> {
        let config = SegmenterConfig::from_dir(dir)?;
        Segmenter::from_config(dir, config, be, projector)
    }

    /// Build from an already read (and possibly adjusted) config.
    pub fn from_config(dir: &Path, mut config: SegmenterConfig, be: &Backend, projector: Option<ProjectorKind>) -> Result<Segmenter> {
        if let Some(kind) = projector {
            config.projector = kind;
        }
        config.check_projector(config.projector)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        let template = prompt::compile_template(&config.chat_template, &tokenizer)
            .map_err(|e| Error::config(&config.path, format!("`chat_template`: {e}")))?;
        let eos = eos_ids(&config, &tokenizer)?;
        check_tokenizer(&config, &tokenizer)?;

        let weights = Weights::open(dir)?;
        let root = VarView::new(&weights, be);
        let (c, d, s) = (config.vision.width(), config.llm.hidden_size, config.sam_prompt_width());
        let m = root.pp(names::MODEL);
        check_stored(&config, &m, "embed_tokens.weight", &[config.llm.vocab_size, d], "`llm.vocab_size` × `llm.hidden_size`")?;
        check_stored(&config, &m, "mm_projector.0.weight", &[d, c], "`llm.hidden_size` × `vision.hidden_size`")?;
        check_stored(&config, &m, "mm_projector.2.weight", &[d, d], "`llm.hidden_size` × `llm.hidden_size`")?;
        let fcs = root.pp(names::TEXT_HIDDEN_FCS);
        check_stored(&config, &fcs, "0.weight", &[d, d], "`llm.hidden_size` × `llm.hidden_size`")?;
        check_stored(&config, &fcs, "2.weight", &[s, d], "`sam.prompt_encoder_config.hidden_size` × `llm.hidden_size`")?;

        let tower = root.pp(names::VISION_TOWER);
        let vision = match &config.vision {
            VisionConfig::Clip(cfg) => {
                let probe = format!("{}.embeddings.class_embedding", names::CLIP_VISION_MODEL);
                let vv = if tower.contains(&probe) { tower.pp(names::CLIP_VISION_MODEL) } else { tower.clone() };
                check_stored(&config, &vv, "embeddings.class_embedding", &[c], "`vision.hidden_size`")?;
                VisionTower::Clip(ClipVisionModel::new(cfg.clone(), &vv)?)
            }
            VisionConfig::Dinov2(cfg) => {
                check_stored(&config, &tower, "embeddings.cls_token", &[1, 1, c], "`vision.hidden_size`")?;
                VisionTower::Dinov2(Dinov2Model::new(cfg.clone(), &tower)?)
            }
        };
        let sam = Sam::from_view(config.sam.clone(), &root.pp(names::SAM))?;
        let llm = Llama::from_weights(config.llm.clone(), &root)?;
        let dims = ProjectorDims { vision_width: c, llm_width: d, grid: config.grid };
        let projector = Projector::load(be, &m, config.projector, dims, &config.svp)?;
        let text_fc1 = Linear::load(&fcs, "0", d, d, true)?;
        let text_fc2 = Linear::load(&fcs, "2", s, d, true)?;
        Ok(Segmenter { config, dir: dir.to_path_buf(), vision, sam, llm, projector, text_fc1, text_fc2, tokenizer, template, eos })
    }

    pub fn projector_kind(&self) -> ProjectorKind {
        self.projector.kind
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The prompt ids for `expression` (also checks it: empty, or leaving no room to answer).
    pub fn prompt(&self, expression: &str) -> Result<PromptIds> {
        let ids = prompt::build(&self.tokenizer, &self.template, &self.config.question_template, expression)?;
        // With no visual token at all the prompt must still leave a position for the answer.
        self.check_context(&ids, 0)?;
        Ok(ids)
    }

    fn frame_tokens(&self) -> usize {
        self.config.image_start_token_id.map_or(0, |_| 1) + self.config.image_end_token_id.map_or(0, |_| 1)
    }

    fn prompt_len(&self, ids: &PromptIds, visual: usize) -> usize {
        ids.prefix.len() + self.frame_tokens() + visual + ids.suffix.len()
    }

    fn check_context(&self, ids: &PromptIds, visual: usize) -> Result<()> {
        let n = self.prompt_len(ids, visual);
        let max = self.config.llm.max_position_embeddings;
        if n >= max {
            return Err(Error::arg(
                "expression",
                format!("the prompt is {n} tokens ({visual} visual); the language model's context of {max} tokens leaves no position for the answer"),
            ));
        }
        Ok(())
    }

    /// Segment what `expression` refers to in `image`.
    pub fn segment(&self, be: &Backend, image: &RgbImage, expression: &str, opts: &SegmentOptions) -> Result<Segmentation> {
        let started = Instant::now();
        let max_new_tokens = opts.max_new_tokens.unwrap_or(self.config.max_new_tokens);
        if max_new_tokens == 0 {
            return Err(Error::arg("--max-new-tokens", "must be at least 1"));
        }
        let size = (image.height() as usize, image.width() as usize);
        if size.0 == 0 || size.1 == 0 {
            return Err(Error::arg("image", format!("image is {}×{}", size.1, size.0)));
        }
        // Cheap checks first: a bad expression fails before any encoder runs.
        let ids = self.prompt(expression)?;

        // Preprocessing (not a timed stage: host work, the same for every projector).
        let s_in = self.sam.input_size();
        let resized = sam::preprocess::preprocess_shape(size.0, size.1, s_in);
        let sam_px = match &opts.sam_pixel_values {
            Some(t) => {
                if t.shape() != [1, 3, s_in, s_in] {
                    return Err(Error::arg("--sam-pixel-values", format!("`pixel_values` has shape {:?}, expected [1, 3, {s_in}, {s_in}]", t.shape())));
                }
                t.clone()
            }
            None => sam::preprocess::preprocess(image, s_in)?.pixel_values,
        };
        let side = self.config.grid * self.config.vision.patch_size();
        let vision_px = match &opts.pixel_values {
            Some(t) => t.clone(),
            None => self.config.vision_processor.preprocess(image)?,
        };
        if vision_px.shape() != [1, 3, side, side] {
            return Err(Error::arg("--pixel-values", format!("vision input has shape {:?}, expected [1, 3, {side}, {side}]", vision_px.shape())));
        }
        let sam_px = be.upload(&sam_px)?;
        let vision_px = be.upload(&vision_px)?;

        // The vision tower does not depend on SAM: on a backend that can, it runs beside SAM's
        // encoder and the superpixels (`Backend::overlap`), and its time is its span on the device.
        let overlapped = be.overlap(
            |lane| self.vision.patch_features(lane, &vision_px, self.config.vision_feature_layer),
            |be| {
                let (embedding, sam_ms) = timed(be, || self.sam.image_embeddings(be, &sam_px))?;
                let (superpixels, superpixels_ms, sp_split) = if self.projector.kind == ProjectorKind::Svp {
                    let view = self.config.vision_processor.view_rect(size.0, size.1);
                    let frame = Frame::new(size, s_in, self.sam.mask_size(), view)?;
                    let ((sp, stats), ms) = timed(be, || superpixels::generate_with_stats(be, &self.sam, &embedding, &frame, self.config.grid, &self.config.superpixels))?;
                    (Some(sp), Some(ms), Some((stats.decoder_ms, stats.postprocess_ms)))
                } else {
                    (None, None, None)
                };
                Ok((embedding, sam_ms, superpixels, superpixels_ms, sp_split))
            },
        )?;
        let (features, vision_ms) = (overlapped.side, overlapped.side_ms);
        let (embedding, sam_ms, superpixels, superpixels_ms, sp_split) = overlapped.main;
        let (visual, projector_ms) = timed(be, || self.projector.forward(be, &features, superpixels.as_ref()))?;
        let s = visual.dim(0);
        self.check_context(&ids, s)?;
        let prompt_tokens = self.prompt_len(&ids, s);

        let (embeds, assemble_ms) = timed(be, || self.input_embeddings(be, &ids, &visual))?;
        let max_ctx = (prompt_tokens + max_new_tokens).min(self.config.llm.max_position_embeddings);
        let mut cache = self.llm.new_cache(be, max_ctx)?;
        let dec = decode::greedy(be, &self.llm, &embeds, &mut cache, self.config.seg_token_id, &self.eos, max_new_tokens)?;
        drop(cache);
        let answer = self.tokenizer.decode(&dec.ids, false)?;

        let n_seg = dec.seg_states.len();
        let l = self.sam.mask_size();
        let width = self.config.sam_prompt_width();
        let ((seg_embeddings, mask_logits), mask_ms) = if n_seg == 0 {
            ((Tensor::zeros(vec![0, width]), Tensor::zeros(vec![0, l, l])), 0.0)
        } else {
            timed(be, || {
                let states = be.concat(&dec.seg_states.iter().collect::<Vec<_>>(), 0)?;
                let h = self.text_fc1.forward(be, &states, Activation::Relu, None)?;
                let seg = self.text_fc2.forward(be, &h, Activation::None, None)?;
                let out = self.sam.predict_sparse(be, &embedding, &seg.reshape(&[n_seg, 1, width])?, false)?;
                Ok((seg, out.pred_masks.reshape(&[n_seg, l, l])?))
            })?
        };
        let seg_embeddings = be.to_host(&seg_embeddings)?;
        let mask_logits = be.to_host(&mask_logits)?;
        let logits = mask_logits.to_f32_vec()?;
        let masks = (0..n_seg)
            .map(|i| {
                let up = sam::postprocess::upscale_masks(&logits[i * l * l..(i + 1) * l * l], 1, (l, l), s_in, resized, size)?;
                Ok(sam::postprocess::binarize(&up, 0.0))
            })
            .collect::<Result<Vec<_>>>()?;

        let stages = StagesMs {
            vision_encoder: vision_ms,
            sam_encoder: sam_ms,
            encoders_overlapped: None,
            superpixels: superpixels_ms,
            superpixels_decoder: sp_split.map(|x| x.0),
            superpixels_postprocess: sp_split.map(|x| x.1),
            projector: projector_ms,
            prefill: assemble_ms + dec.prefill_ms,
            decode_per_token: (dec.decode_steps > 0).then(|| dec.decode_ms / dec.decode_steps as f64),
            mask_decoder: mask_ms,
        };
        Ok(Segmentation {
            answer,
            output_ids: dec.ids,
            prompt: ids,
            stop: dec.stop,
            visual_tokens: s,
            prompt_tokens,
            visual: be.to_host(&visual)?,
            superpixels,
            seg_embeddings,
            mask_logits,
            masks,
            size,
            stages,
            end_to_end_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// `embed(prefix) ‖ embed(im_start)? ‖ visual ‖ embed(im_end)? ‖ embed(suffix)` (empty parts
    /// left out: S may be 0).
    fn input_embeddings(&self, be: &Backend, ids: &PromptIds, visual: &Tensor) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(5);
        if !ids.prefix.is_empty() {
            parts.push(self.llm.embed(be, &ids.prefix)?);
        }
        if let Some(id) = self.config.image_start_token_id {
            parts.push(self.llm.embed(be, &[id])?);
        }
        if visual.dim(0) > 0 {
            parts.push(visual.clone());
        }
        if let Some(id) = self.config.image_end_token_id {
            parts.push(self.llm.embed(be, &[id])?);
        }
        if !ids.suffix.is_empty() {
            parts.push(self.llm.embed(be, &ids.suffix)?);
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        be.concat(&parts.iter().collect::<Vec<_>>(), 0)
    }
}

/// End-of-sequence ids: the LLM config's, else the tokenizer's `eos_token`, else `</s>`.
fn eos_ids(cfg: &SegmenterConfig, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    if !cfg.eos_token_ids().is_empty() {
        return Ok(cfg.eos_token_ids().to_vec());
    }
    tokenizer
        .eos_token_id()
        .or_else(|| tokenizer.token_to_id("</s>"))
        .map(|id| vec![id])
        .ok_or_else(|| Error::config(&cfg.path, "no end-of-sequence token: set `llm.eos_token_id` or give the tokenizer a `</s>`"))
}

/// The tokenizer must fit the LLM's vocabulary and agree on the `[SEG]` id when it has one.
fn check_tokenizer(cfg: &SegmenterConfig, tokenizer: &Tokenizer) -> Result<()> {
    let (n, vocab) = (tokenizer.vocab_size(), cfg.llm.vocab_size);
    if n > vocab {
        return Err(Error::config(&cfg.path, format!("the tokenizer has {n} tokens, more than `llm.vocab_size` {vocab}")));
    }
    if let Some(id) = tokenizer.token_to_id("[SEG]") {
        if id != cfg.seg_token_id {
            return Err(Error::config(&cfg.path, format!("`seg_token_id` is {}, but the tokenizer's `[SEG]` is {id}", cfg.seg_token_id)));
        }
    }
    Ok(())
}
