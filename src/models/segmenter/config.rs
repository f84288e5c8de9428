//! The segmenter's `config.json` (docs/svp.md §4): one file naming every component and its
//! options. Each component's section is read by that component's own parser; this module adds
//! the defaults of the segmenter's own fields and the checks that span components (token ids
//! against the vocabulary, the templates' placeholders, the feature layer, the patch grid).
//! Width checks against the stored tensors happen at load (`Segmenter::from_config`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::models::clip::ClipVisionConfig;
use crate::models::dinov2::Dinov2Config;
use crate::models::llama::LlamaConfig;
use crate::models::projector::{ProjectorKind, SvpConfig};
use crate::models::sam::SamConfig;
use crate::models::vit;
use crate::preprocess::{ImageProcessor, ResizeTo};
use crate::superpixels::SuperpixelConfig;

/// `model_type` of a segmenter directory's config.json.
pub const MODEL_TYPE: &str = "visword_segmenter";
/// Where the visual tokens go in the prompt text.
pub const IMAGE_PLACEHOLDER: &str = "<image>";
/// Where the referring expression goes in `question_template`.
pub const EXPRESSION_PLACEHOLDER: &str = "{expression}";
/// LISA's segmentation question.
pub const DEFAULT_QUESTION_TEMPLATE: &str = "<image>\n{expression} Please output segmentation mask.";
pub const DEFAULT_MAX_NEW_TOKENS: usize = 32;
pub const DEFAULT_FEATURE_LAYER: i64 = -2;

/// LLaVA-v1's conversation format (LISA's `llava_v1`, separator style TWO) as a chat template:
/// the system sentence and a space, `USER: {message} ` per user turn, `ASSISTANT: {message}</s>`
/// per answer, and `ASSISTANT:` as the generation prompt.
pub const LLAVA_V1_CHAT_TEMPLATE: &str = concat!(
    "{{ \"A chat between a curious human and an artificial intelligence assistant. ",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.\" + ' ' }}",
    "{% for message in messages %}",
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}",
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + '</s>' }}",
    "{% endif %}",
    "{% endfor %}",
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
);

/// The vision tower's config, by `vision.model_type`.
#[derive(Clone, Debug, PartialEq)]
pub enum VisionConfig {
    Clip(ClipVisionConfig),
    Dinov2(Dinov2Config),
}

impl VisionConfig {
    pub fn width(&self) -> usize {
        match self {
            VisionConfig::Clip(c) => c.hidden_size,
            VisionConfig::Dinov2(c) => c.hidden_size,
        }
    }
    pub fn patch_size(&self) -> usize {
        match self {
            VisionConfig::Clip(c) => c.patch_size,
            VisionConfig::Dinov2(c) => c.patch_size,
        }
    }
    pub fn num_layers(&self) -> usize {
        match self {
            VisionConfig::Clip(c) => c.num_hidden_layers,
            VisionConfig::Dinov2(c) => c.num_hidden_layers,
        }
    }
    /// The processor the model type ships with: CLIP's at the tower's input size, DINOv2's
    /// published one (shortest edge 256, centre crop 224).
    pub fn default_processor(&self) -> ImageProcessor {
        match self {
            VisionConfig::Clip(c) => ImageProcessor::clip(c.image_size),
            VisionConfig::Dinov2(_) => ImageProcessor::dinov2(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SegmenterConfig {
    /// The config.json this came from (named in errors).
    pub path: PathBuf,
    pub vision: VisionConfig,
    /// Hidden state the patch features come from, indexed as HF's `hidden_states`.
    pub vision_feature_layer: i64,
    /// Preprocessing for the vision tower: the model type's defaults, overridden by the optional
    /// `vision_processor` object (preprocessor_config.json fields).
    pub vision_processor: ImageProcessor,
    /// Side G of the patch grid the processed image gives (P = G²).
    pub grid: usize,
    pub llm: LlamaConfig,
    pub sam: SamConfig,
    pub projector: ProjectorKind,
    pub svp: SvpConfig,
    pub superpixels: SuperpixelConfig,
    pub seg_token_id: u32,
    pub image_start_token_id: Option<u32>,
    pub image_end_token_id: Option<u32>,
    pub question_template: String,
    pub chat_template: String,
    pub max_new_tokens: usize,
}

/// Re-label an error of a section's own parser with the section's name (the parsers name the
/// key, not where the object sits in this file).
fn in_section(path: &Path, section: &str, e: Error) -> Error {
    match e {
        Error::Config { msg, .. } => Error::config(path, format!("`{section}`: {msg}")),
        Error::InvalidArgument { arg, msg } => Error::config(path, format!("`{section}.{}`: {msg}", arg.replace('-', "_"))),
        other => other,
    }
}

fn section<'a>(path: &Path, json: &'a Value, name: &str) -> Result<&'a Value> {
    match json.get(name) {
        Some(v) if v.is_object() => Ok(v),
        Some(_) => Err(Error::config(path, format!("field `{name}` must be an object"))),
        None => Err(Error::config(path, format!("missing field `{name}` (the {} config)", describe(name)))),
    }
}

fn describe(name: &str) -> &'static str {
    match name {
        "vision" => "vision tower's HF",
        "llm" => "language model's HF Llama",
        "sam" => "HF SamModel",
        _ => "component",
    }
}

/// An optional object section read with serde (`deny_unknown_fields` in the target type makes
/// a misspelt key an error naming it).
fn optional_section<T: serde::de::DeserializeOwned + Default>(path: &Path, json: &Value, name: &str) -> Result<T> {
    match json.get(name) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) if v.is_object() => serde_json::from_value(v.clone()).map_err(|e| Error::config(path, format!("`{name}`: {e}"))),
        Some(_) => Err(Error::config(path, format!("field `{name}` must be an object"))),
    }
}

fn token_id(path: &Path, json: &Value, name: &str) -> Result<Option<u32>> {
    match json.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| Error::config(path, format!("field `{name}` must be a token id (a non-negative integer), found {v}"))),
    }
}

impl SegmenterConfig {
    /// Read `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<SegmenterConfig> {
        if !dir.is_dir() {
            return Err(Error::config(dir, "segmenter model directory does not exist"));
        }
        let (path, json) = vit::read_config(dir)?;
        SegmenterConfig::from_json(&path, &json)
    }

    /// Parse and validate a config object; `path` names it in errors.
    pub fn from_json(path: &Path, json: &Value) -> Result<SegmenterConfig> {
        if !json.is_object() {
            return Err(Error::config(path, "expected a JSON object"));
        }
        match vit::model_type(json) {
            Some(MODEL_TYPE) => {}
            other => {
                return Err(Error::config(
                    path,
                    format!("model_type is {other:?}, expected `{MODEL_TYPE}` (LISA checkpoints convert with tools/convert_lisa.py)"),
                ))
            }
        }

        let vision_json = section(path, json, "vision")?;
        let vision = match vit::model_type(vision_json) {
            Some("clip_vision_model") => VisionConfig::Clip(ClipVisionConfig::from_json(path, vision_json).map_err(|e| in_section(path, "vision", e))?),
            Some("dinov2") => VisionConfig::Dinov2(Dinov2Config::from_json(path, vision_json).map_err(|e| in_section(path, "vision", e))?),
            other => {
                return Err(Error::config(path, format!("`vision.model_type` is {other:?}, expected `clip_vision_model` or `dinov2`")));
            }
        };
        let vision_feature_layer: i64 = vit::field(path, json, "vision_feature_layer", DEFAULT_FEATURE_LAYER)?;
        vit::resolve_layer(vision_feature_layer, vision.num_layers())
            .map_err(|_| Error::config(path, format!("`vision_feature_layer` {vision_feature_layer} is outside the vision tower's {} layers", vision.num_layers())))?;
        let vision_processor = match json.get("vision_processor") {
            None | Some(Value::Null) => vision.default_processor(),
            Some(v) => ImageProcessor::from_json(path, v, &vision.default_processor()).map_err(|e| in_section(path, "vision_processor", e))?,
        };
        let grid = patch_grid(path, &vision_processor, vision.patch_size())?;

        let llm_json = section(path, json, "llm")?.as_object().ok_or_else(|| Error::config(path, "field `llm` must be an object"))?;
        let llm = LlamaConfig::from_json(llm_json, path).map_err(|e| in_section(path, "llm", e))?;

        let sam_json = section(path, json, "sam")?;
        for s in ["vision_config", "prompt_encoder_config", "mask_decoder_config"] {
            section(path, sam_json, s).map_err(|e| in_section(path, "sam", e))?;
        }
        let sam: SamConfig = serde_json::from_value(sam_json.clone()).map_err(|e| Error::config(path, format!("`sam`: {e}")))?;
        sam.validate(path).map_err(|e| in_section(path, "sam", e))?;

        let projector = match json.get("projector") {
            None | Some(Value::Null) => ProjectorKind::Mlp,
            Some(Value::String(s)) => ProjectorKind::parse(s).map_err(|_| Error::config(path, format!("`projector` `{s}` is not mlp, svp or pool{{k}}")))?,
            Some(v) => return Err(Error::config(path, format!("field `projector` must be a string, found {v}"))),
        };
        let svp: SvpConfig = optional_section(path, json, "svp")?;
        let superpixels: SuperpixelConfig = optional_section(path, json, "superpixels")?;
        superpixels.validate(&path.display().to_string()).map_err(|e| in_section(path, "superpixels", e))?;

        let seg_token_id = token_id(path, json, "seg_token_id")?.ok_or_else(|| Error::config(path, "missing field `seg_token_id` (the [SEG] token's id)"))?;
        let image_start_token_id = token_id(path, json, "image_start_token_id")?;
        let image_end_token_id = token_id(path, json, "image_end_token_id")?;
        let question_template: String = vit::field(path, json, "question_template", DEFAULT_QUESTION_TEMPLATE.to_string())?;
        let chat_template: String = vit::field(path, json, "chat_template", LLAVA_V1_CHAT_TEMPLATE.to_string())?;
        let max_new_tokens: usize = vit::field(path, json, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS)?;

        let cfg = SegmenterConfig {
            path: path.to_path_buf(),
            vision,
            vision_feature_layer,
            vision_processor,
            grid,
            llm,
            sam,
            projector,
            svp,
            superpixels,
            seg_token_id,
            image_start_token_id,
            image_end_token_id,
            question_template,
            chat_template,
            max_new_tokens,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The checks between fields.
    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::config(&self.path, msg));
        let vocab = self.llm.vocab_size;
        let ids = [("seg_token_id", Some(self.seg_token_id)), ("image_start_token_id", self.image_start_token_id), ("image_end_token_id", self.image_end_token_id)];
        for (name, id) in ids {
            if let Some(id) = id {
                if id as usize >= vocab {
                    return bad(format!("`{name}` {id} is outside the language model's vocabulary of {vocab} tokens (`llm.vocab_size`)"));
                }
            }
        }
        if self.image_start_token_id.is_some() != self.image_end_token_id.is_some() {
            return bad("`image_start_token_id` and `image_end_token_id` must be given together".into());
        }
        if self.llm.eos_token_ids.contains(&self.seg_token_id) {
            return bad(format!("`seg_token_id` {} is also the language model's end-of-sequence token", self.seg_token_id));
        }
        if self.question_template.matches(IMAGE_PLACEHOLDER).count() != 1 {
            return bad(format!("`question_template` must contain `{IMAGE_PLACEHOLDER}` exactly once: {:?}", self.question_template));
        }
        if self.question_template.matches(EXPRESSION_PLACEHOLDER).count() != 1 {
            return bad(format!("`question_template` must contain `{EXPRESSION_PLACEHOLDER}` exactly once: {:?}", self.question_template));
        }
        if self.max_new_tokens == 0 {
            return bad("`max_new_tokens` must be at least 1".into());
        }
        let sam_width = self.sam_prompt_width();
        if sam_width == 0 {
            return bad("`sam.prompt_encoder_config.hidden_size` must be positive".into());
        }
        Ok(())
    }

    /// Whether the projector `kind` can be built on this vision tower (svp splits the width
    /// into heads and a 2-D sin-cos table). Checked at load for the projector in use, so a
    /// model whose `svp` block does not fit still runs with `mlp` or `pool{k}`.
    pub fn check_projector(&self, kind: ProjectorKind) -> Result<()> {
        if kind != ProjectorKind::Svp {
            return Ok(());
        }
        self.svp.validate(self.vision.width()).map_err(|e| match e {
            Error::InvalidArgument { arg, msg } => Error::config(&self.path, format!("`{arg}` (with `vision.hidden_size` {}): {msg}", self.vision.width())),
            other => other,
        })
    }

    /// Width of SAM's prompt tokens (256 in every released SAM): the `[SEG]` embedding's size.
    pub fn sam_prompt_width(&self) -> usize {
        self.sam.prompt_encoder_config.hidden_size
    }

    /// End-of-sequence ids from the LLM config (the tokenizer's `</s>` is the fallback at load).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.llm.eos_token_ids
    }
}

/// The patch grid side of the processed image: it must be a fixed square of whole patches.
fn patch_grid(path: &Path, p: &ImageProcessor, patch: usize) -> Result<usize> {
    let (h, w) = if p.do_center_crop {
        p.crop_size
    } else {
        match (p.do_resize, p.size) {
            (true, ResizeTo::Exact { height, width }) => (height, width),
            _ => return Err(Error::config(path, "the vision processor must give a fixed input size (a centre crop or an exact resize)")),
        }
    };
    if h != w || h == 0 || !h.is_multiple_of(patch) {
        return Err(Error::config(path, format!("the vision processor gives {w}×{h} inputs; the segmenter needs a square of whole {patch} px patches")));
    }
    Ok(h / patch)
}
