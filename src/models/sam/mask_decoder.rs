//! SAM's mask decoder (`mask_decoder.*`): a two-way transformer between the prompt tokens and
//! the image embedding, then per-mask-token hypernetwork MLPs that weight the upscaled image
//! features into mask logits, and an MLP head that predicts each mask's IoU.
//!
//! Every prompt (point set / box) is a batch entry: tokens `[P, T, C]`, image keys `[P, E·E, C]`.
//! The keys are one shared `[1, E·E, C]` until the first block's image-to-token attention makes
//! them diverge, so that block's token-to-image attention projects them once for all prompts
//! (`Backend::attention_tokens` on the token-major projections). After that, every attention
//! between a prompt's tokens and its image tokens runs on weights folded per head at load
//! (`Folded`): the image tokens are scored against H·T vectors built from the tokens
//! (`Backend::two_way_update`, `two_way_pool`) and never projected. keys + pe is never formed
//! either: pe goes through each projection once per image.

use crate::backend::cuda::TwoWayMode;
use crate::backend::{Activation, AttnParams, Backend, TwoWayParams};
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
    /// The same weights folded per head for the image side (`Folded`), for the attentions
    /// that need them.
    folded: Option<Folded>,
}

/// Which folding an attention needs (`Folded::new`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fold {
    None,
    ImageToToken,
    TokenToImage,
}

/// An attention between the prompt tokens and the image tokens with each head's projections
/// multiplied together (f32, at load), so that the image tokens are never projected
/// (`Backend::two_way_update` / `two_way_pool`). For head h with head dim d, the tokens t
/// (queries + query_pe, [B, T, C]) give
///
/// * `ax`: the image-side projection's weight applied to the token-side projection of t,
///   Wᵢ,hᵀ·(Wₜ,h·t + bₜ,h)/√d — rows [h·C, (h+1)·C) of one linear ([H·C, C]);
/// * `ay`: (Wₜ·t + bₜ)/√d ([inner, C]), which meets the positional encoding through the
///   image-side projection (its bias included) head by head;
/// * `vo`: each head's value projection followed by its slice of the output projection,
///   Wo,h·Wv,h ([H·C, C] as a linear, its bias Wo,h·bv,h), for the side whose values are the
///   tokens; for the side whose values are the image tokens, the same blocks side by side
///   ([C, H·C], bias Wo·bv + bo) applied to the pooled image tokens.
///
/// Image-to-token (image tokens query the prompt tokens): Wᵢ = Wq, Wₜ = Wk. Token-to-image:
/// Wᵢ = Wk, Wₜ = Wq.
struct Folded {
    ax: Linear,
    ay: Linear,
    vo: Linear,
    /// The checkpoint's projections are half precision (`TwoWayParams::low_precision`).
    low_precision: bool,
}

/// Host weights of one `SamAttention`, f32, [out, in] row-major.
struct HostAttention {
    q: (Vec<f32>, Vec<f32>),
    k: (Vec<f32>, Vec<f32>),
    v: (Vec<f32>, Vec<f32>),
    out: (Vec<f32>, Vec<f32>),
}

/// Σ_e a[h·d + e, c]·b[h·d + e, c']·scale for every head h as a [H·C, C] weight (row h·C + c,
/// column c'), and Σ_e a[h·d + e, c]·bias[h·d + e]·scale as its bias. a, b [inner, C].
fn fold_heads(a: &[f32], b: &[f32], bias: &[f32], heads: usize, c: usize, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let d = bias.len() / heads;
    let mut w = vec![0f32; heads * c * c];
    let mut wb = vec![0f32; heads * c];
    for h in 0..heads {
        for e in 0..d {
            let row = h * d + e;
            let (ar, br) = (&a[row * c..(row + 1) * c], &b[row * c..(row + 1) * c]);
            for (ci, &av) in ar.iter().enumerate() {
                let av = av * scale;
                let out = &mut w[(h * c + ci) * c..(h * c + ci + 1) * c];
                for (o, &bv) in out.iter_mut().zip(br) {
                    *o += av * bv;
                }
                wb[h * c + ci] += av * bias[row];
            }
        }
    }
    (w, wb)
}

/// w [rows, cols] → wᵀ [cols, rows].
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

impl Folded {
    fn params(&self, heads: usize) -> TwoWayParams {
        TwoWayParams { low_precision: self.low_precision, ..TwoWayParams::new(heads) }
    }

    /// `image_queries`: the image tokens are the queries (image-to-token), else the keys and
    /// values (token-to-image).
    fn new(be: &Backend, w: &HostAttention, heads: usize, c: usize, image_queries: bool, low_precision: bool) -> Result<Folded> {
        let inner = w.q.1.len();
        let scale = 1.0 / ((inner / heads) as f32).sqrt();
        let (img, tok) = if image_queries { (&w.q, &w.k) } else { (&w.k, &w.q) };
        let (ax_w, ax_b) = fold_heads(&img.0, &tok.0, &tok.1, heads, c, scale);
        let ay_w: Vec<f32> = tok.0.iter().map(|v| v * scale).collect();
        let ay_b: Vec<f32> = tok.1.iter().map(|v| v * scale).collect();
        // Wo,h·Wv,h: row h·C + o, column c' (Woᵀ is [inner, C]).
        let (vo_w, vo_b) = fold_heads(&transpose(&w.out.0, c, inner), &w.v.0, &w.v.1, heads, c, 1.0);
        let (vo_w, vo_b, rows, cols) = if image_queries {
            (vo_w, vo_b, heads * c, c)
        } else {
            // Side by side: [C, H·C], row o, column h·C + c'; bias Wo·bv + bo.
            let mut side = vec![0f32; c * heads * c];
            for h in 0..heads {
                for o in 0..c {
                    side[(o * heads + h) * c..(o * heads + h + 1) * c].copy_from_slice(&vo_w[(h * c + o) * c..(h * c + o + 1) * c]);
                }
            }
            let bias: Vec<f32> = (0..c).map(|o| (0..heads).map(|h| vo_b[h * c + o]).sum::<f32>() + w.out.1[o]).collect();
            (side, bias, c, heads * c)
        };
        let up = |v: Vec<f32>, shape: Vec<usize>| -> Result<Tensor> { be.upload(&Tensor::from_f32(v, shape)?) };
        Ok(Folded {
            ax: (up(ax_w, vec![heads * c, c])?, up(ax_b, vec![heads * c])?),
            ay: (up(ay_w, vec![inner, c])?, up(ay_b, vec![inner])?),
            vo: (up(vo_w, vec![rows, cols])?, up(vo_b, vec![rows])?),
            low_precision,
        })
    }
}

impl Attention {
    fn load(vv: &VarView, hidden: usize, downsample: usize, heads: usize, fold: Fold) -> Result<Attention> {
        let inner = hidden / downsample;
        if heads == 0 || !inner.is_multiple_of(heads) {
            return Err(Error::arg("num_attention_heads", format!("{heads} heads do not split {inner} channels")));
        }
        let host = |name: &str, out: usize, inp: usize| -> Result<(Vec<f32>, Vec<f32>)> {
            let p = vv.pp(name);
            Ok((p.get_host("weight", &[out, inp])?.to_f32_vec()?, p.get_host("bias", &[out])?.to_f32_vec()?))
        };
        let q = lin(&vv.pp("q_proj"), inner, hidden)?;
        let folded = match fold {
            Fold::None => None,
            Fold::ImageToToken | Fold::TokenToImage => {
                let w = HostAttention { q: host("q_proj", inner, hidden)?, k: host("k_proj", inner, hidden)?, v: host("v_proj", inner, hidden)?, out: host("out_proj", hidden, inner)? };
                Some(Folded::new(vv.backend(), &w, heads, hidden, fold == Fold::ImageToToken, q.0.dtype().is_half())?)
            }
        };
        Ok(Attention {
            q,
            k: lin(&vv.pp("k_proj"), inner, hidden)?,
            v: lin(&vv.pp("v_proj"), inner, hidden)?,
            out: lin(&vv.pp("out_proj"), hidden, inner)?,
            heads,
            inner,
            folded,
        })
    }

    /// The folded token side for `tokens` [B, T, C]: ax [B, H·T, C] and ay [B, H·T, d], rows
    /// head-major.
    fn token_side(&self, be: &Backend, f: &Folded, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        let ax = heads_major(be, &proj(be, tokens, &f.ax)?, self.heads)?;
        let ay = heads_major(be, &proj(be, tokens, &f.ay)?, self.heads)?;
        Ok((ax, ay))
    }

    /// Image-to-token attention plus its residual and `ln`: the image tokens `keys`
    /// ([B or 1, N, C]) attend to the prompt tokens (keys `tokens_pe` = tokens + pe, values
    /// `tokens`); `pe_q` [1, N, inner] is the image positional encoding through q_proj, and
    /// `qp` the keys' projection already made (shared keys), for the unfolded attention.
    #[allow(clippy::too_many_arguments)]
    fn image_update(&self, be: &Backend, keys: &Tensor, pe_q: &Tensor, qp: Option<&Tensor>, tokens_pe: &Tensor, tokens: &Tensor, ln: &Linear, eps: f32) -> Result<Tensor> {
        let Some(f) = &self.folded else {
            // Unfolded: the image tokens projected (keys + pe through q_proj), attention over
            // the projected tokens, out_proj with the keys as residual, then `ln`.
            let qp = match qp {
                Some(qp) => qp.clone(),
                None => proj_pe(be, keys, &self.q, pe_q)?,
            };
            let keys = self.attend(be, &qp, &proj(be, tokens_pe, &self.k)?, &proj(be, tokens, &self.v)?, Some(keys))?;
            return be.layer_norm(&keys, &ln.0, &ln.1, eps);
        };
        let (ax, ay) = self.token_side(be, f, tokens_pe)?;
        let u = heads_major(be, &proj(be, tokens, &f.vo)?, self.heads)?;
        be.two_way_update(keys, pe_q, &ax, &ay, &u, &self.out.1, (&ln.0, &ln.1, eps), f.params(self.heads))
    }

    /// Token-to-image attention plus the residual `tokens`: the prompt tokens (queries
    /// `tokens_pe`) attend to the image tokens `keys` ([B or 1, N, C]; keys + pe through k_proj,
    /// `pe_k` [1, N, inner] being the pe part with the bias, values the keys through v_proj).
    fn token_update(&self, be: &Backend, keys: &Tensor, pe_k: &Tensor, tokens_pe: &Tensor, tokens: &Tensor) -> Result<Tensor> {
        let Some(f) = &self.folded else {
            // Unfolded: keys + pe through k_proj, the keys through v_proj.
            let (kp, vp) = (proj_pe(be, keys, &self.k, pe_k)?, proj(be, keys, &self.v)?);
            return self.attend(be, &proj(be, tokens_pe, &self.q)?, &kp, &vp, Some(tokens));
        };
        let (b, t, c) = (tokens.dim(0), tokens.dim(1), tokens.dim(2));
        let (ax, ay) = self.token_side(be, f, tokens_pe)?;
        let pooled = be.two_way_pool(keys, pe_k, &ax, &ay, f.params(self.heads))?.reshape(&[b, self.heads, t, c])?;
        let pooled = be.permute(&pooled, &[0, 2, 1, 3])?.reshape(&[b, t, self.heads * c])?;
        be.linear(&pooled, &f.vo.0, Some(&f.vo.1), Activation::None, Some(tokens))
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

/// Whether the attentions between the prompt tokens and the image tokens run folded
/// (`Folded`: `two_way_update` / `two_way_pool`) or on projected image tokens, for a
/// checkpoint whose projections are half precision (`half`) or not. Folding cuts the
/// arithmetic to ~60% and the image-side bytes to under half, but the projections it replaces
/// are GEMMs that each backend runs near its best rate, so it pays only where the two-way
/// kernels do: 2-core CPU VM, cpu preset, 8×8 grid, median of 3: superpixels 1825 / 2122 ms
/// folded against 1935 / 2181 ms projected (on); lavapipe, tiny preset: 15.5 s folded against
/// 6.9 s (off for wgpu); H200, 64 prompts: CUDA's f32 kernels take 1.25 ms (update) and 1.75 ms
/// (pool) a call, about what the tensor-core projections they replace take (off for f32
/// checkpoints). Half-precision checkpoints on CUDA fold by default, with both products on the
/// TF32 tensor cores (kernels/two_way_mma.cu) unless `VISWORD_CUDA_TWO_WAY` says otherwise.
/// `VISWORD_SAM_FOLD=1` / `0` decides for every backend.
fn fold_two_way(be: &Backend, half: bool) -> bool {
    match std::env::var("VISWORD_SAM_FOLD").as_deref().map(str::trim) {
        Ok("1") => true,
        Ok("0") => false,
        _ => match be {
            Backend::Cpu(_) => true,
            Backend::Cuda(b) => half && b.two_way_mode() == TwoWayMode::Mma,
            Backend::Wgpu(_) => false,
        },
    }
}

fn proj(be: &Backend, x: &Tensor, w: &Linear) -> Result<Tensor> {
    be.linear(x, &w.0, Some(&w.1), Activation::None, None)
}

/// [B, T, H·K] (token-major, head h's K channels at h·K) → [B, H·T, K] (head-major rows).
fn heads_major(be: &Backend, x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, k) = (x.dim(0), x.dim(1), x.dim(2) / heads);
    be.permute(&x.reshape(&[b, t, heads, k])?, &[0, 2, 1, 3])?.reshape(&[b, heads * t, k])
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
    first: Option<FirstKeys>,
}

/// The first block's projections of the keys every prompt shares: token-to-image keys and
/// values, and the image-to-token queries when that attention runs unfolded.
struct FirstKeys {
    kp: Tensor,
    vp: Tensor,
    qp: Option<Tensor>,
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
        let inner = c / ds.max(1);
        let half = t.pp("final_attn_token_to_image").pp("q_proj").get_host("weight", &[inner, c])?.dtype().is_half();
        let fold = fold_two_way(vv.backend(), half);
        let (i2t_fold, t2i_fold) = if fold { (Fold::ImageToToken, Fold::TokenToImage) } else { (Fold::None, Fold::None) };
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let b = t.pp("layers").pp(i);
            blocks.push(TwoWayBlock {
                self_attn: Attention::load(&b.pp("self_attn"), c, 1, heads, Fold::None)?,
                ln1: norm(&b.pp("layer_norm1"), c)?,
                // The first block's keys are shared by every prompt: projected once instead.
                cross_t2i: Attention::load(&b.pp("cross_attn_token_to_image"), c, ds, heads, if i == 0 { Fold::None } else { t2i_fold })?,
                ln2: norm(&b.pp("layer_norm2"), c)?,
                mlp1: lin(&b.pp("mlp").pp("lin1"), cfg.mlp_dim, c)?,
                mlp2: lin(&b.pp("mlp").pp("lin2"), c, cfg.mlp_dim)?,
                ln3: norm(&b.pp("layer_norm3"), c)?,
                ln4: norm(&b.pp("layer_norm4"), c)?,
                cross_i2t: Attention::load(&b.pp("cross_attn_image_to_token"), c, ds, heads, i2t_fold)?,
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
            final_attn: Attention::load(&t.pp("final_attn_token_to_image"), c, ds, heads, t2i_fold)?,
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
        // The first block's projections of the shared keys (`FirstKeys`).
        let first = match (self.blocks.first(), pe.blocks.first()) {
            (Some(b), Some(pe_w)) => Some(FirstKeys {
                kp: proj_pe(be, &keys, &b.cross_t2i.k, &pe_w.0)?,
                vp: proj(be, &keys, &b.cross_t2i.v)?,
                qp: if b.cross_i2t.folded.is_none() { Some(proj_pe(be, &keys, &b.cross_i2t.q, &pe_w.1)?) } else { None },
            }),
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
        let queries = self.final_attn.token_update(be, &keys, &pe.final_k, &q, &queries)?;
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
        first: Option<&FirstKeys>,
    ) -> Result<(Tensor, Tensor)> {
        let eps = self.eps;
        let queries = if blk.skip_first_layer_pe {
            blk.self_attn.forward(be, queries, queries, queries, None)?
        } else {
            let q = be.add(queries, query_pe)?;
            blk.self_attn.forward(be, &q, &q, queries, Some(queries))?
        };
        let queries = be.layer_norm(&queries, &blk.ln1.0, &blk.ln1.1, eps)?;

        // Token-to-image: keys + pe through k_proj, the keys through v_proj (projected once
        // for the first block's shared keys, folded into the tokens' side after it).
        let t2i = &blk.cross_t2i;
        let q = be.add(&queries, query_pe)?;
        let queries = match first {
            Some(f) => t2i.attend(be, &proj(be, &q, &t2i.q)?, &f.kp, &f.vp, Some(&queries))?,
            None => t2i.token_update(be, keys, &pe_w.0, &q, &queries)?,
        };
        let queries = be.layer_norm(&queries, &blk.ln2.0, &blk.ln2.1, eps)?;

        let h = be.linear(&queries, &blk.mlp1.0, Some(&blk.mlp1.1), self.act, None)?;
        let queries = be.linear(&h, &blk.mlp2.0, Some(&blk.mlp2.1), Activation::None, Some(&queries))?;
        let queries = be.layer_norm(&queries, &blk.ln3.0, &blk.ln3.1, eps)?;

        // Image-to-token: keys + pe query the tokens + pe, whose values are the tokens; the keys
        // (shared by every prompt in the first block) updated with a residual and ln4.
        let q = be.add(&queries, query_pe)?;
        let keys = blk.cross_i2t.image_update(be, keys, &pe_w.1, first.and_then(|f| f.qp.as_ref()), &q, &queries, &blk.ln4, eps)?;
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
