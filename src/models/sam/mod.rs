//! Segment Anything (transformers `SamModel`): image encoder, prompt encoder, mask decoder,
//! loaded from an HF checkpoint directory (config.json + safetensors, HF tensor names).
//!
//! ```text
//! pixel_values [1,3,S,S] ─ image_encoder ─ image_embeddings [1,C,E,E] ─┐
//! points / boxes / mask ── prompt_encoder ─ sparse [P,N,C], dense ─────┴ mask_decoder
//!                                                  ─ pred_masks [1,P,M,4E,4E], iou_scores [1,P,M]
//! ```
//! For the released checkpoints S = 1024, E = 64, C = 256 and the masks are 256×256 logits;
//! `preprocess` and `postprocess` convert from and to the original image.

pub mod config;
pub mod image_encoder;
pub mod mask_decoder;
pub mod postprocess;
pub mod preprocess;
pub mod prompt_encoder;

use std::path::Path;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::weights::{VarView, Weights};

pub use config::SamConfig;
pub use image_encoder::ImageEncoder;
pub use mask_decoder::{DecoderOutput, ImageKeys, MaskDecoder};
pub use prompt_encoder::{PointPrompt, PromptEncoder, Prompts, PAD_LABEL};

pub struct Sam {
    pub config: SamConfig,
    pub image_encoder: ImageEncoder,
    pub prompt_encoder: PromptEncoder,
    pub mask_decoder: MaskDecoder,
    /// Dense positional encoding of the embedding grid, `[E·E, C]` (a function of the weights
    /// only, computed once).
    image_pe: Tensor,
}

impl Sam {
    /// Load `dir/config.json` and the safetensors weights in `dir`.
    pub fn load(dir: &Path, backend: &Backend) -> Result<Sam> {
        if !dir.is_dir() {
            return Err(Error::config(dir, "not a model directory (expected config.json and model.safetensors)"));
        }
        let config = SamConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::open(dir)?;
        Sam::from_weights(config, &weights, backend)
    }

    pub fn from_weights(config: SamConfig, weights: &Weights, backend: &Backend) -> Result<Sam> {
        Sam::from_view(config, &VarView::new(weights, backend))
    }

    /// Build from a view scoped at the SamModel root (the level holding `vision_encoder`,
    /// `prompt_encoder`, `mask_decoder`), e.g. `model.visual_model` in a LISA checkpoint.
    pub fn from_view(config: SamConfig, root: &VarView) -> Result<Sam> {
        let backend = root.backend();
        let image_encoder = ImageEncoder::load(&root.pp("vision_encoder"), &config.vision_config, config.vision_act())?;
        let prompt_encoder = PromptEncoder::load(root, &config)?;
        let mask_decoder = MaskDecoder::load(&root.pp("mask_decoder"), &config.mask_decoder_config, config.decoder_act())?;
        let image_pe = backend.upload(&prompt_encoder.image_positional_embeddings()?)?;
        Ok(Sam { config, image_encoder, prompt_encoder, mask_decoder, image_pe })
    }

    /// The model's square input side (1024 for the released checkpoints).
    pub fn input_size(&self) -> usize {
        self.config.vision_config.image_size
    }

    /// Side of the low-resolution output masks (4× the embedding grid).
    pub fn mask_size(&self) -> usize {
        4 * self.prompt_encoder.embed_size()
    }

    /// `pixel_values` [1, 3, S, S] → `image_embeddings` [1, C, E, E].
    pub fn image_embeddings(&self, be: &Backend, pixel_values: &Tensor) -> Result<Tensor> {
        self.image_encoder.forward(be, pixel_values)
    }

    /// Masks and IoU scores for `prompts` (coordinates in the model input frame) on an image's
    /// embeddings. `multimask` returns the three ambiguity-aware masks per prompt, otherwise the
    /// single-mask output.
    pub fn predict(&self, be: &Backend, image_embeddings: &Tensor, prompts: &Prompts, multimask: bool) -> Result<DecoderOutput> {
        prompts.validate()?;
        let sparse = self.prompt_encoder.sparse(be, prompts)?;
        let dense = self.prompt_encoder.dense(be, prompts.mask.as_ref())?;
        self.mask_decoder.forward(be, image_embeddings, &self.image_pe, sparse.as_ref(), &dense, multimask)
    }

    /// The image side of the mask decoder for prompts without a mask (`ImageKeys`): computed
    /// once per image, it serves every batch of `predict_prepared`.
    pub fn prepare(&self, be: &Backend, image_embeddings: &Tensor) -> Result<ImageKeys> {
        let dense = self.prompt_encoder.dense(be, None)?;
        self.mask_decoder.image_keys(be, image_embeddings, &self.image_pe, &dense)
    }

    /// `predict` on an image prepared by `prepare`; the prompts may hold points and boxes but
    /// no mask (the dense prompt is part of the prepared keys).
    pub fn predict_prepared(&self, be: &Backend, image: &ImageKeys, prompts: &Prompts, multimask: bool) -> Result<DecoderOutput> {
        prompts.validate()?;
        if prompts.mask.is_some() {
            return Err(Error::arg("prompts", "a mask prompt needs `predict`: prepared image keys hold the no-mask dense prompt"));
        }
        let sparse = self.prompt_encoder.sparse(be, prompts)?;
        self.mask_decoder.forward_keys(be, image, sparse.as_ref(), multimask)
    }

    /// Masks for ready-made sparse prompt tokens `[P, N, C]` (LISA feeds each `[SEG]` embedding
    /// as the only token of its prompt: `[n_seg, 1, C]`); the dense prompt is the no-mask
    /// embedding and no "not a point" pad token is added.
    pub fn predict_sparse(&self, be: &Backend, image_embeddings: &Tensor, sparse: &Tensor, multimask: bool) -> Result<DecoderOutput> {
        let c = self.config.prompt_encoder_config.hidden_size;
        if sparse.dims() != 3 || sparse.dim(0) == 0 || sparse.dim(2) != c {
            return Err(Error::arg("sparse prompt embeddings", format!("shape {:?}, expected [P ≥ 1, N, {c}]", sparse.shape())));
        }
        let dense = self.prompt_encoder.dense(be, None)?;
        self.mask_decoder.forward(be, image_embeddings, &self.image_pe, Some(sparse), &dense, multimask)
    }
}
