//! SAM's mask decoder (`mask_decoder.*`): a two-way transformer between the prompt tokens and
//! the image embedding, then per-mask-token hypernetwork MLPs that weight the upscaled image
//! features into mask logits, and an MLP head that predicts each mask's IoU.
//!
//! Every prompt (point set / box) is a batch entry: tokens `[P, T, C]`, image keys `[P, E·E, C]`.
//! The keys are one shared `[1, E·E, C]` until the first block's image-to-token attention makes
//! them diverge, so that block projects them once for all prompts. Attention runs on the
//! token-major projections (`Backend::attention_tokens`, no head permutes), and keys + pe is
//! never formed: pe goes through each projection once per image and joins as a shared residual.

use crate::backend::{Activation, AttnParams, Backend};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::weights::VarView;

use super::config::SamMaskDecoderConfig;

type Linear = (Tensor, Tensor);

fn lin(vv: &VarView, out: usize, inp: usize) -> Result<Linear> {
    Ok((vv.get("weight", &[out, inp])?, vv.get_f32("bias", &[out])?))
}

fn norm(vv: &VarView, d: usize) -> Result<Linear> {
    Ok((vv.get_f32("weight", &[d])?, vv.get_f32("bias", &[d])?))
}

/// `SamAttention`: projections to `hidden / downsample` channels split over the heads.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    inner: usize,
}

impl Attention {
    fn load(vv: &VarView, hidden: usize, downsample: usize, heads: usize) -> Result<Attention> {
        let inner = hidden / downsample;
        Ok(Attention {
            q: lin(&vv.pp("q_proj"), inner, hidden)?,
            k: lin(&vv.pp("k_proj"), inner, hidden)?,
            v: lin(&vv.pp("v_proj"), inner, hidden)?,
            out: lin(&vv.pp("out_proj"), hidden, inner)?,
            heads,
            inner,
        })
    }

    /// q [Bq, Nq, C], k/v [Bk, Nk, C] → [B, Nq, C], with Bq, Bk = B or 1 (one set of queries
    /// or keys for every batch entry, projected once). `residual` ([B, Nq, C], or [1, Nq, C]
    /// shared) is added to the output projection.
    fn forward(&self, be: &Backend, q: &Tensor, k: &Tensor, v: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.attend(be, &proj(be, q, &self.q)?, &proj(be, k, &self.k)?, &proj(be, v, &self.v)?, residual)
    }

    /// Attention over projected q, k, v ([B or 1, N, inner]), then the output projection plus
    /// `residual`.
    fn attend(&self, be: &Backend, qp: &Tensor, kp: &Tensor, vp: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let o = be.attention_tokens(qp, kp, vp, self.heads, &AttnParams::new(self.inner / self.heads))?;
        be.linear(&o, &self.out.0, Some(&self.out.1), Activation::None, residual)
    }
}

fn proj(be: &Backend, x: &Tensor, w: &Linear) -> Result<Tensor> {
    be.linear(x, &w.0, Some(&w.1), Activation::None, None)
}

/// `w` applied to image tokens plus their positional encoding, (x + pe)·Wᵀ + b, as
/// x·Wᵀ + pe_w with `pe_w` = pe·Wᵀ + b ([1, N, out], once per image): the sum x + pe over every
/// prompt's keys is never formed.
fn proj_pe(be: &Backend, x: &Tensor, w: &Linear, pe_w: &Tensor) -> Result<Tensor> {
    be.linear(x, &w.0, None, Activation::None, Some(pe_w))
}

/// The image positional encoding through the projections that read keys + pe: each block's
/// token-to-image keys and image-to-token queries, and the final attention's keys.
struct PeProjections {
    blocks: Vec<(Tensor, Tensor)>,
    final_k: Tensor,
}

/// What a mask-decoder pass computes from the image alone (embedding, positional encoding, dense
/// prompt): the channels-last keys, the positional encoding through its projections, and the
/// first block's projections of the keys, which every prompt shares. SAM's automatic mask
/// generation runs many batches of point prompts on one image: it prepares these once.
pub struct ImageKeys {
    e: usize,
    keys: Tensor,
    pe: PeProjections,
    first: Option<[Tensor; 3]>,
}

struct TwoWayBlock {
    self_attn: Attention,
    ln1: Linear,
    cross_t2i: Attention,
    ln2: Linear,
    mlp1: Linear,
    mlp2: Linear,
    ln3: Linear,
    ln4: Linear,
    cross_i2t: Attention,
    /// The first block's self-attention sees the tokens without their positional part and
    /// replaces them (no residual).
    skip_first_layer_pe: bool,
}

/// `SamFeedForward`: proj_in → ReLU → (layers → ReLU)* → proj_out.
struct FeedForward {
    proj_in: Linear,
    layers: Vec<Linear>,
    proj_out: Linear,
}

impl FeedForward {
    fn load(vv: &VarView, inp: usize, hidden: usize, out: usize, depth: usize) -> Result<FeedForward> {
        Ok(FeedForward {
            proj_in: lin(&vv.pp("proj_in"), hidden, inp)?,
            layers: (0..depth.saturating_sub(2)).map(|i| lin(&vv.pp("layers").pp(i), hidden, hidden)).collect::<Result<_>>()?,
            proj_out: lin(&vv.pp("proj_out"), out, hidden)?,
        })
    }

    fn forward(&self, be: &Backend, x: &Tensor) -> Result<Tensor> {
        let mut h = be.linear(x, &self.proj_in.0, Some(&self.proj_in.1), Activation::Relu, None)?;
        for l in &self.layers {
            h = be.linear(&h, &l.0, Some(&l.1), Activation::Relu, None)?;
        }
        be.linear(&h, &self.proj_out.0, Some(&self.proj_out.1), Activation::None, None)
    }
}

pub struct MaskDecoder {
    /// iou_token ‖ mask_tokens: [1 + M, C].
    output_tokens: Tensor,
    blocks: Vec<TwoWayBlock>,
    final_attn: Attention,
    ln_final: Linear,
    /// upscale_conv1 as a linear: [4·C/4, C] (row (a·2 + b)·C/4 + o is weight[:, o, a, b]) and
    /// the bias repeated per sub-position.
    upscale_conv1: Linear,
    upscale_ln: Linear,
    /// upscale_conv2 as `Backend::upscale_masks` takes it: [4·C/8, C/4] f32, and the bias [C/8].
    upscale_conv2: Linear,
    hypernetworks: Vec<FeedForward>,
    iou_head: FeedForward,
    hidden: usize,
    num_mask_tokens: usize,
    eps: f32,
    act: Activation,
}

/// Output of the decoder for one image.
#[derive(Clone, Debug)]
pub struct DecoderOutput {
    /// `[1, P, M, 4E, 4E]` low-resolution mask logits.
    pub pred_masks: Tensor,
    /// `[1, P, M]` predicted IoU of each mask.
    pub iou_scores: Tensor,
}

impl MaskDecoder {
    pub fn load(vv: &VarView, cfg: &SamMaskDecoderConfig, act: Activation) -> Result<MaskDecoder> {
        let c = cfg.hidden_size;
        let m = cfg.num_multimask_outputs + 1;
        let iou = vv.pp("iou_token").get_f32("weight", &[1, c])?;
        let masks = vv.pp("mask_tokens").get_f32("weight", &[m, c])?;
        let output_tokens = vv.backend().concat(&[&iou, &masks], 0)?;
        let t = vv.pp("transformer");
        let (heads, ds) = (cfg.num_attention_heads, cfg.attention_downsample_rate);
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let b = t.pp("layers").pp(i);
            blocks.push(TwoWayBlock {
                self_attn: Attention::load(&b.pp("self_attn"), c, 1, heads)?,
                ln1: norm(&b.pp("layer_norm1"), c)?,
                cross_t2i: Attention::load(&b.pp("cross_attn_token_to_image"), c, ds, heads)?,
                ln2: norm(&b.pp("layer_norm2"), c)?,
                mlp1: lin(&b.pp("mlp").pp("lin1"), cfg.mlp_dim, c)?,
                mlp2: lin(&b.pp("mlp").pp("lin2"), c, cfg.mlp_dim)?,
                ln3: norm(&b.pp("layer_norm3"), c)?,
                ln4: norm(&b.pp("layer_norm4"), c)?,
                cross_i2t: Attention::load(&b.pp("cross_attn_image_to_token"), c, ds, heads)?,
                skip_first_layer_pe: i == 0,
            });
        }
        // The upscaler's transposed convs (kernel = stride = 2) as linears over channels-last
        // pixels: conv1 keeps the checkpoint's dtype (a GEMM), conv2 is f32 for `upscale_masks`.
        let conv_t = |name: &str, cin: usize, cout: usize, f32_weight: bool| -> Result<Linear> {
            let p = vv.pp(name);
            let w = conv_t_as_linear(&p.get_host("weight", &[cin, cout, 2, 2])?)?;
            let w = if f32_weight { vv.backend().upload(&w.to_f32()?)? } else { vv.backend().upload_weight(&w)? };
            Ok((w, p.get_f32("bias", &[cout])?))
        };
        let (conv1_w, conv1_b) = conv_t("upscale_conv1", c, c / 4, false)?;
        let conv1_b = vv.backend().concat(&[&conv1_b, &conv1_b, &conv1_b, &conv1_b], 0)?;
        Ok(MaskDecoder {
            output_tokens,
            blocks,
            final_attn: Attention::load(&t.pp("final_attn_token_to_image"), c, ds, heads)?,
            ln_final: norm(&t.pp("layer_norm_final_attn"), c)?,
            upscale_conv1: (conv1_w, conv1_b),
            upscale_ln: norm(&vv.pp("upscale_layer_norm"), c / 4)?,
            upscale_conv2: conv_t("upscale_conv2", c / 4, c / 8, true)?,
            hypernetworks: (0..m)
                .map(|i| FeedForward::load(&vv.pp("output_hypernetworks_mlps").pp(i), c, c, c / 8, 3))
                .collect::<Result<_>>()?,
            iou_head: FeedForward::load(&vv.pp("iou_prediction_head"), c, cfg.iou_head_hidden_dim, m, cfg.iou_head_depth)?,
            hidden: c,
            num_mask_tokens: m,
            eps: cfg.layer_norm_eps as f32,
            act,
        })
    }

    /// `image_embeddings` [1, C, E, E]; `image_pe` [E·E, C]; `sparse` [P, N, C] or None (then
    /// P = 1); `dense` [1, C, E, E] or the broadcastable [1, C, 1, 1].
    pub fn forward(
        &self,
        be: &Backend,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: Option<&Tensor>,
        dense: &Tensor,
        multimask: bool,
    ) -> Result<DecoderOutput> {
        self.forward_keys(be, &self.image_keys(be, image_embeddings, image_pe, dense)?, sparse, multimask)
    }

    /// The prompt-independent image side of a forward pass (`ImageKeys`), to be shared by
    /// every batch of prompts on one image with one dense prompt.
    pub fn image_keys(&self, be: &Backend, image_embeddings: &Tensor, image_pe: &Tensor, dense: &Tensor) -> Result<ImageKeys> {
        let c = self.hidden;
        let sh = image_embeddings.shape();
        if sh.len() != 4 || sh[0] != 1 || sh[1] != c || sh[2] != sh[3] || sh[2] * sh[3] != image_pe.dim(0) {
            return Err(Error::arg(
                "image_embeddings",
                format!("shape {sh:?}, expected [1, {c}, E, E] with E·E = {}", image_pe.dim(0)),
            ));
        }
        let e = sh[2];
        let hw = e * e;
        // Image keys: embedding + dense prompt, channels-last. They are the same for every
        // prompt until the first block's image-to-token attention, which makes them [P, E·E, C].
        let src = be.add(image_embeddings, dense)?;
        let keys = be.permute(&src, &[0, 2, 3, 1])?.reshape(&[1, hw, c])?;
        let key_pe = image_pe.reshape(&[1, hw, c])?;
        let pe = PeProjections {
            blocks: self.blocks.iter().map(|b| Ok((proj(be, &key_pe, &b.cross_t2i.k)?, proj(be, &key_pe, &b.cross_i2t.q)?))).collect::<Result<_>>()?,
            final_k: proj(be, &key_pe, &self.final_attn.k)?,
        };
        // The first block's projections of the shared keys: token-to-image keys and values,
        // image-to-token queries.
        let first = match (self.blocks.first(), pe.blocks.first()) {
            (Some(b), Some(pe_w)) => Some([proj_pe(be, &keys, &b.cross_t2i.k, &pe_w.0)?, proj(be, &keys, &b.cross_t2i.v)?, proj_pe(be, &keys, &b.cross_i2t.q, &pe_w.1)?]),
            _ => None,
        };
        Ok(ImageKeys { e, keys, pe, first })
    }

    /// `forward` on prepared image keys; `sparse` [P, N, C] or None (then P = 1).
    pub fn forward_keys(&self, be: &Backend, image: &ImageKeys, sparse: Option<&Tensor>, multimask: bool) -> Result<DecoderOutput> {
        let c = self.hidden;
        let e = image.e;
        let p = sparse.map_or(1, |s| s.dim(0));

        // Tokens: [iou, mask tokens.., sparse prompt tokens..] per prompt.
        let out_tokens = self.output_tokens.reshape(&[1, self.num_mask_tokens + 1, c])?;
        let out_tokens = be.concat(&vec![&out_tokens; p], 0)?;
        let tokens = match sparse {
            Some(s) => be.concat(&[&out_tokens, s], 1)?,
            None => out_tokens,
        };
        let pe = &image.pe;
        let mut keys = image.keys.clone();
        let mut queries = tokens.clone();
        for (i, (blk, pe_w)) in self.blocks.iter().zip(&pe.blocks).enumerate() {
            let first = if i == 0 { image.first.as_ref() } else { None };
            (queries, keys) = self.block_forward(be, blk, &queries, &keys, &tokens, pe_w, first)?;
        }
        if keys.dim(0) != p {
            keys = be.concat(&vec![&keys; p], 0)?;
        }
        let q = be.add(&queries, &tokens)?;
        let f = &self.final_attn;
        let (kp, vp) = (proj_pe(be, &keys, &f.k, &pe.final_k)?, proj(be, &keys, &f.v)?);
        let queries = f.attend(be, &proj(be, &q, &f.q)?, &kp, &vp, Some(&queries))?;
        // transformers builds this LayerNorm with the default eps (1e-5), not the config's.
        let queries = be.layer_norm(&queries, &self.ln_final.0, &self.ln_final.1, 1e-5)?;

        // Masks: upscale_conv1 as a linear over the channels-last keys, then the rest of the
        // upscaler fused with each needed mask token's hypernetwork: [P, M', 4E, 4E].
        let (c4, side) = (c / 4, 4 * e);
        let y = be.linear(&keys, &self.upscale_conv1.0, Some(&self.upscale_conv1.1), Activation::None, None)?.reshape(&[p, e, e, 4 * c4])?;
        // Multimask: the M − 1 ambiguity-aware masks; otherwise the single-mask token 0.
        let m = self.num_mask_tokens;
        let (start, len) = if multimask { (1, m - 1) } else { (0, 1) };
        let mut hyper = Vec::with_capacity(len);
        for (i, mlp) in self.hypernetworks.iter().enumerate().skip(start).take(len) {
            let tok = be.narrow(&queries, 1, 1 + i, 1)?;
            hyper.push(mlp.forward(be, &tok)?);
        }
        let hyper = be.concat(&hyper.iter().collect::<Vec<_>>(), 1)?;
        let masks = be.upscale_masks(&y, (&self.upscale_ln.0, &self.upscale_ln.1, 1e-6), &self.upscale_conv2.0, &self.upscale_conv2.1, &hyper)?;
        let pred_masks = masks.reshape(&[1, p, len, side, side])?;
        let iou = self.iou_head.forward(be, &be.narrow(&queries, 1, 0, 1)?)?.reshape(&[1, p, m])?;
        Ok(DecoderOutput { pred_masks, iou_scores: be.narrow(&iou, 2, start, len)? })
    }

    /// One two-way block; `pe_w` holds the positional encoding through the block's token-to-
    /// image key projection and image-to-token query projection (`PeProjections`); `first`, the
    /// first block's projections of the shared keys (`ImageKeys::first`), when computed already.
    #[allow(clippy::too_many_arguments)]
    fn block_forward(
        &self,
        be: &Backend,
        blk: &TwoWayBlock,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        pe_w: &(Tensor, Tensor),
        first: Option<&[Tensor; 3]>,
    ) -> Result<(Tensor, Tensor)> {
        let eps = self.eps;
        let queries = if blk.skip_first_layer_pe {
            blk.self_attn.forward(be, queries, queries, queries, None)?
        } else {
            let q = be.add(queries, query_pe)?;
            blk.self_attn.forward(be, &q, &q, queries, Some(queries))?
        };
        let queries = be.layer_norm(&queries, &blk.ln1.0, &blk.ln1.1, eps)?;

        // Token-to-image: keys + pe through k_proj, the keys through v_proj.
        let t2i = &blk.cross_t2i;
        let q = be.add(&queries, query_pe)?;
        let (kp, vp) = match first {
            Some([kp, vp, _]) => (kp.clone(), vp.clone()),
            None => (proj_pe(be, keys, &t2i.k, &pe_w.0)?, proj(be, keys, &t2i.v)?),
        };
        let queries = t2i.attend(be, &proj(be, &q, &t2i.q)?, &kp, &vp, Some(&queries))?;
        let queries = be.layer_norm(&queries, &blk.ln2.0, &blk.ln2.1, eps)?;

        let h = be.linear(&queries, &blk.mlp1.0, Some(&blk.mlp1.1), self.act, None)?;
        let queries = be.linear(&h, &blk.mlp2.0, Some(&blk.mlp2.1), Activation::None, Some(&queries))?;
        let queries = be.layer_norm(&queries, &blk.ln3.0, &blk.ln3.1, eps)?;

        // Image-to-token: keys + pe through q_proj (shared keys give one set of image queries
        // for every prompt, projected once), the keys updated with a residual.
        let i2t = &blk.cross_i2t;
        let q = be.add(&queries, query_pe)?;
        let qp = match first {
            Some([_, _, qp]) => qp.clone(),
            None => proj_pe(be, keys, &i2t.q, &pe_w.1)?,
        };
        let keys = i2t.attend(be, &qp, &proj(be, &q, &i2t.k)?, &proj(be, &queries, &i2t.v)?, Some(keys))?;
        let keys = be.layer_norm(&keys, &blk.ln4.0, &blk.ln4.1, eps)?;
        Ok((queries, keys))
    }
}

/// A transposed-conv weight with kernel = stride = 2, [Cin, Cout, 2, 2], as the weight of a
/// linear over channels-last pixels: [4·Cout, Cin], row (a·2 + b)·Cout + o holding
/// weight[:, o, a, b] (output sub-pixel (a, b), channel o). Same dtype (values are only moved).
fn conv_t_as_linear(w: &Tensor) -> Result<Tensor> {
    let (cin, cout) = (w.dim(0), w.dim(1));
    let v = w.to_f32_vec()?;
    let mut out = vec![0f32; v.len()];
    for ch in 0..cin {
        for o in 0..cout {
            for ab in 0..4 {
                out[(ab * cout + o) * cin + ch] = v[(ch * cout + o) * 4 + ab];
            }
        }
    }
    Tensor::from_f32(out, vec![4 * cout, cin])?.to_dtype(w.dtype())
}
