//! Every tensor of a segmenter checkpoint — name, shape and how a random model initialises it —
//! derived from its config. The names are the checkpoint layout of docs/svp.md §4 (LISA's, with
//! SAM under HF `SamModel` names); the loaders are the authority, and tests load what `init`
//! writes from this plan, so a name or shape that drifts from them fails there.
//!
//! Initialisation (docs/svp.md "Random-weight models"): N(0, 0.02²) for weights and
//! embeddings, 1 for norm weights and DINOv2's layer scales, 0 for biases; SAM as transformers
//! initialises `SamModel` (zero position tables, its Fourier matrix N(0, (hidden/2)²)).

use crate::models::clip::ClipVisionConfig;
use crate::models::dinov2::Dinov2Config;
use crate::models::llama::LlamaConfig;
use crate::models::sam::SamConfig;

use super::config::{SegmenterConfig, VisionConfig};
use super::names;

pub const INIT_STD: f32 = 0.02;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Normal(f32),
    Zeros,
    Ones,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// Collects tensors under a scope.
struct Plan<'a> {
    out: &'a mut Vec<Planned>,
    prefix: String,
}

impl Plan<'_> {
    fn pp(&mut self, segment: impl std::fmt::Display) -> Plan<'_> {
        let prefix = if self.prefix.is_empty() { segment.to_string() } else { format!("{}.{segment}", self.prefix) };
        Plan { out: self.out, prefix }
    }
    fn add(&mut self, name: &str, shape: &[usize], init: Init) {
        let name = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        self.out.push(Planned { name, shape: shape.to_vec(), init });
    }
    fn normal(&mut self, name: &str, shape: &[usize]) {
        self.add(name, shape, Init::Normal(INIT_STD));
    }
    /// A linear layer `[out, in]`, with a bias when asked.
    fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool) {
        let mut l = self.pp(name);
        l.normal("weight", &[out, inp]);
        if bias {
            l.add("bias", &[out], Init::Zeros);
        }
    }
    fn norm(&mut self, name: &str, d: usize, bias: bool) {
        let mut n = self.pp(name);
        n.add("weight", &[d], Init::Ones);
        if bias {
            n.add("bias", &[d], Init::Zeros);
        }
    }
    fn conv(&mut self, name: &str, shape: [usize; 4], bias: bool) {
        let mut c = self.pp(name);
        c.normal("weight", &shape);
        if bias {
            c.add("bias", &[shape[0]], Init::Zeros);
        }
    }
}

/// The whole checkpoint for `cfg`; `svp` adds the svp projector's weights.
pub fn plan(cfg: &SegmenterConfig, svp: bool) -> Vec<Planned> {
    let mut out = Vec::new();
    let mut root = Plan { out: &mut out, prefix: String::new() };
    let (c, d) = (cfg.vision.width(), cfg.llm.hidden_size);
    match &cfg.vision {
        VisionConfig::Clip(v) => clip(&mut root.pp(names::VISION_TOWER).pp(names::CLIP_VISION_MODEL), v),
        VisionConfig::Dinov2(v) => dinov2(&mut root.pp(names::VISION_TOWER), v),
    }
    sam(&mut root.pp(names::SAM), &cfg.sam);
    llama(&mut root, &cfg.llm);
    let mut m = root.pp(names::MODEL);
    m.linear("mm_projector.0", d, c, true);
    m.linear("mm_projector.2", d, d, true);
    if svp {
        svp_projector(&mut m.pp("svp"), c, cfg.svp.ssa_heads, cfg.svp.mlp_ratio);
    }
    let mut fcs = root.pp(names::TEXT_HIDDEN_FCS);
    fcs.linear("0", d, d, true);
    fcs.linear("2", cfg.sam_prompt_width(), d, true);
    out
}

/// HF `CLIPVisionModel` below its `vision_model` level.
fn clip(p: &mut Plan, v: &ClipVisionConfig) {
    let (c, g) = (v.hidden_size, v.grid());
    let mut e = p.pp("embeddings");
    e.normal("class_embedding", &[c]);
    e.normal("patch_embedding.weight", &[c, v.num_channels, v.patch_size, v.patch_size]);
    e.normal("position_embedding.weight", &[g * g + 1, c]);
    p.norm("pre_layrnorm", c, true);
    for i in 0..v.num_hidden_layers {
        let mut l = p.pp(format!("encoder.layers.{i}"));
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            l.pp("self_attn").linear(proj, c, c, true);
        }
        l.norm("layer_norm1", c, true);
        l.linear("mlp.fc1", v.intermediate_size, c, true);
        l.linear("mlp.fc2", c, v.intermediate_size, true);
        l.norm("layer_norm2", c, true);
    }
    p.norm("post_layernorm", c, true);
}

/// HF `Dinov2Model` (released checkpoint names).
fn dinov2(p: &mut Plan, v: &Dinov2Config) {
    let (c, g, k) = (v.hidden_size, v.grid(), v.patch_size);
    let mut e = p.pp("embeddings");
    e.normal("cls_token", &[1, 1, c]);
    e.add("mask_token", &[1, c], Init::Zeros);
    e.conv("patch_embeddings.projection", [c, v.num_channels, k, k], true);
    e.normal("position_embeddings", &[1, g * g + 1, c]);
    for i in 0..v.num_hidden_layers {
        let mut l = p.pp(format!("encoder.layer.{i}"));
        l.norm("norm1", c, true);
        for proj in ["query", "key", "value"] {
            l.pp("attention.attention").linear(proj, c, c, v.qkv_bias);
        }
        l.linear("attention.output.dense", c, c, true);
        l.add("layer_scale1.lambda1", &[c], Init::Ones);
        l.norm("norm2", c, true);
        if v.use_swiglu_ffn {
            let h = v.swiglu_hidden();
            l.linear("mlp.weights_in", 2 * h, c, true);
            l.linear("mlp.weights_out", c, h, true);
        } else {
            l.linear("mlp.fc1", v.mlp_hidden(), c, true);
            l.linear("mlp.fc2", c, v.mlp_hidden(), true);
        }
        l.add("layer_scale2.lambda1", &[c], Init::Ones);
    }
    p.norm("layernorm", c, true);
}

/// HF `SamModel`.
fn sam(p: &mut Plan, cfg: &SamConfig) {
    let v = &cfg.vision_config;
    let (h, g, hd, k) = (v.hidden_size, v.grid(), v.head_dim(), v.patch_size);
    let mut ve = p.pp("vision_encoder");
    ve.conv("patch_embed.projection", [h, v.num_channels, k, k], true);
    if v.use_abs_pos {
        ve.add("pos_embed", &[1, g, g, h], Init::Zeros);
    }
    for i in 0..v.num_hidden_layers {
        let mut l = ve.pp(format!("layers.{i}"));
        l.norm("layer_norm1", h, true);
        l.linear("attn.qkv", 3 * h, h, v.qkv_bias);
        l.linear("attn.proj", h, h, true);
        if v.use_rel_pos {
            let w = v.layer_window(i);
            let side = if w == 0 { g } else { w };
            l.add("attn.rel_pos_h", &[2 * side - 1, hd], Init::Zeros);
            l.add("attn.rel_pos_w", &[2 * side - 1, hd], Init::Zeros);
        }
        l.norm("layer_norm2", h, true);
        l.linear("mlp.lin1", v.mlp_width(), h, true);
        l.linear("mlp.lin2", h, v.mlp_width(), true);
    }
    let o = v.output_channels;
    ve.conv("neck.conv1", [o, h, 1, 1], false);
    ve.norm("neck.layer_norm1", o, true);
    ve.conv("neck.conv2", [o, o, 3, 3], false);
    ve.norm("neck.layer_norm2", o, true);

    // transformers draws the Fourier matrix with std hidden/2 (SamPositionalEmbedding.scale).
    p.add("shared_image_embedding.positional_embedding", &[2, v.num_pos_feats], Init::Normal((h / 2) as f32));

    let pe = &cfg.prompt_encoder_config;
    let c = pe.hidden_size;
    let mut pp = p.pp("prompt_encoder");
    for i in 0..pe.num_point_embeddings {
        pp.normal(&format!("point_embed.{i}.weight"), &[1, c]);
    }
    pp.normal("not_a_point_embed.weight", &[1, c]);
    pp.normal("no_mask_embed.weight", &[1, c]);
    let (mc, q) = (pe.mask_input_channels, pe.mask_input_channels / 4);
    pp.conv("mask_embed.conv1", [q, 1, 2, 2], true);
    pp.norm("mask_embed.layer_norm1", q, true);
    pp.conv("mask_embed.conv2", [mc, q, 2, 2], true);
    pp.norm("mask_embed.layer_norm2", mc, true);
    pp.conv("mask_embed.conv3", [c, mc, 1, 1], true);

    let md = &cfg.mask_decoder_config;
    let (c, m, ds) = (md.hidden_size, md.num_multimask_outputs + 1, md.attention_downsample_rate);
    let mut dp = p.pp("mask_decoder");
    dp.normal("iou_token.weight", &[1, c]);
    dp.normal("mask_tokens.weight", &[m, c]);
    let mut t = dp.pp("transformer");
    for i in 0..md.num_hidden_layers {
        let mut l = t.pp(format!("layers.{i}"));
        attention(&mut l.pp("self_attn"), c, c);
        l.norm("layer_norm1", c, true);
        attention(&mut l.pp("cross_attn_token_to_image"), c, c / ds);
        l.norm("layer_norm2", c, true);
        l.linear("mlp.lin1", md.mlp_dim, c, true);
        l.linear("mlp.lin2", c, md.mlp_dim, true);
        l.norm("layer_norm3", c, true);
        l.norm("layer_norm4", c, true);
        attention(&mut l.pp("cross_attn_image_to_token"), c, c / ds);
    }
    attention(&mut t.pp("final_attn_token_to_image"), c, c / ds);
    t.norm("layer_norm_final_attn", c, true);
    dp.conv("upscale_conv1", [c, c / 4, 2, 2], false);
    dp.add("upscale_conv1.bias", &[c / 4], Init::Zeros);
    dp.norm("upscale_layer_norm", c / 4, true);
    dp.conv("upscale_conv2", [c / 4, c / 8, 2, 2], false);
    dp.add("upscale_conv2.bias", &[c / 8], Init::Zeros);
    for i in 0..m {
        let mut h = dp.pp(format!("output_hypernetworks_mlps.{i}"));
        h.linear("proj_in", c, c, true);
        h.linear("layers.0", c, c, true);
        h.linear("proj_out", c / 8, c, true);
    }
    let mut iou = dp.pp("iou_prediction_head");
    let hid = md.iou_head_hidden_dim;
    iou.linear("proj_in", hid, c, true);
    for i in 0..md.iou_head_depth.saturating_sub(2) {
        iou.linear(&format!("layers.{i}"), hid, hid, true);
    }
    iou.linear("proj_out", m, hid, true);
}

/// `SamAttention`: projections to `inner` channels and back to `c`.
fn attention(a: &mut Plan, c: usize, inner: usize) {
    for proj in ["q_proj", "k_proj", "v_proj"] {
        a.linear(proj, inner, c, true);
    }
    a.linear("out_proj", c, inner, true);
}

/// HF `LlamaForCausalLM` (LISA keeps it at the root: `model.*`, `lm_head`).
fn llama(p: &mut Plan, c: &LlamaConfig) {
    let (d, hd) = (c.hidden_size, c.head_dim);
    let mut m = p.pp("model");
    m.normal("embed_tokens.weight", &[c.vocab_size, d]);
    for i in 0..c.num_hidden_layers {
        let mut l = m.pp(format!("layers.{i}"));
        l.norm("input_layernorm", d, false);
        let mut a = l.pp("self_attn");
        a.linear("q_proj", c.num_attention_heads * hd, d, c.attention_bias);
        a.linear("k_proj", c.num_key_value_heads * hd, d, c.attention_bias);
        a.linear("v_proj", c.num_key_value_heads * hd, d, c.attention_bias);
        a.linear("o_proj", d, c.num_attention_heads * hd, c.attention_bias);
        l.norm("post_attention_layernorm", d, false);
        let mut f = l.pp("mlp");
        f.linear("gate_proj", c.intermediate_size, d, c.mlp_bias);
        f.linear("up_proj", c.intermediate_size, d, c.mlp_bias);
        f.linear("down_proj", d, c.intermediate_size, c.mlp_bias);
    }
    m.norm("norm", d, false);
    if !c.tie_word_embeddings {
        p.normal("lm_head.weight", &[c.vocab_size, d]);
    }
}

/// The svp projector's own weights (docs/svp.md §3), below `model.svp`.
fn svp_projector(p: &mut Plan, c: usize, heads: usize, mlp_ratio: usize) {
    p.linear("sspe.geo_mlp.0", c, 7, true);
    p.linear("sspe.geo_mlp.2", c, c, true);
    let mut a = p.pp("ssa");
    a.norm("norm_q", c, true);
    a.norm("norm_kv", c, true);
    for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        a.linear(proj, c, c, true);
    }
    // The coverage bias γ starts at 0, as a bias does: attention begins unbiased.
    a.add("coverage_bias", &[heads], Init::Zeros);
    a.norm("norm_mlp", c, true);
    a.linear("mlp.fc1", c * mlp_ratio, c, true);
    a.linear("mlp.fc2", c, c * mlp_ratio, true);
}
