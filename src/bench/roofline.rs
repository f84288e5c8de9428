//! Napkin math for the benchmarked stages: the floating-point work and the bytes each one must
//! move at least, from the models' configs, so a measured time can be put next to what the card
//! could do at its measured copy bandwidth or GEMM rate.
//!
//! Counts are the matmul-shaped work only (2 flops per multiply-add); norms, softmax and
//! activations are a few flops per element and are left out. Attention counts QKᵀ and PV over the
//! keys each query really sees (half the square for causal prefill). Weight bytes are the stored
//! matmul weights (dtype size) plus f32 norm vectors.

use crate::models::llama::LlamaConfig;
use crate::models::sam::SamConfig;

/// Work of one stage: flops and the bytes it must at least read or write.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub flops: f64,
    pub bytes: f64,
}

impl Cost {
    /// The least time (ms) the stage can take: the larger of its compute and memory times.
    /// `None` without a peak for the bound that matters.
    pub fn roofline_ms(&self, copy_gb_per_s: Option<f64>, gemm_tflops: Option<f64>) -> Option<f64> {
        let mem = copy_gb_per_s.filter(|b| *b > 0.0).map(|b| self.bytes / (b * 1e9) * 1e3);
        let compute = gemm_tflops.filter(|t| *t > 0.0).map(|t| self.flops / (t * 1e12) * 1e3);
        match (mem, compute) {
            (Some(m), Some(c)) => Some(m.max(c)),
            (Some(m), None) if self.flops == 0.0 => Some(m),
            (None, Some(c)) if self.bytes == 0.0 => Some(c),
            _ => None,
        }
    }
}

/// Parameters of one Llama decoder layer's matmuls (q, k, v, o, gate, up, down).
fn llama_layer_matmul_params(c: &LlamaConfig) -> f64 {
    let (h, hd) = (c.hidden_size as f64, c.head_dim as f64);
    let q = h * c.num_attention_heads as f64 * hd;
    let kv = 2.0 * h * c.num_key_value_heads as f64 * hd;
    let o = c.num_attention_heads as f64 * hd * h;
    let mlp = 3.0 * h * c.intermediate_size as f64;
    q + kv + o + mlp
}

/// Bytes of weights one decode step reads: every layer's matmuls and norms, the final norm and
/// the output projection (the embedding table contributes one row).
pub fn llama_weight_bytes_per_token(c: &LlamaConfig, weight_dtype_size: usize) -> f64 {
    let layers = c.num_hidden_layers as f64;
    let matmul = layers * llama_layer_matmul_params(c) + (c.vocab_size * c.hidden_size) as f64;
    let norms = (2.0 * layers + 1.0) * c.hidden_size as f64 * 4.0;
    matmul * weight_dtype_size as f64 + norms + c.hidden_size as f64 * weight_dtype_size as f64
}

/// A prefill of `n` tokens into an empty cache, logits for the last position only.
pub fn llama_prefill(c: &LlamaConfig, n: usize, weight_dtype_size: usize) -> Cost {
    let (n, layers) = (n as f64, c.num_hidden_layers as f64);
    let qk_width = (c.num_attention_heads * c.head_dim) as f64;
    // Causal: query i sees i + 1 keys, n(n+1)/2 pairs; QKᵀ and PV are 2 flops each per pair and dim.
    let attention = 2.0 * 2.0 * qk_width * n * (n + 1.0) / 2.0;
    let flops = layers * (2.0 * n * llama_layer_matmul_params(c) + attention) + 2.0 * (c.vocab_size * c.hidden_size) as f64;
    Cost { flops, bytes: llama_weight_bytes_per_token(c, weight_dtype_size) }
}

/// One decode step at context `ctx` (the new token attends to `ctx + 1` keys).
pub fn llama_decode(c: &LlamaConfig, ctx: usize, weight_dtype_size: usize) -> Cost {
    let layers = c.num_hidden_layers as f64;
    let qk_width = (c.num_attention_heads * c.head_dim) as f64;
    let attention = 2.0 * 2.0 * qk_width * (ctx + 1) as f64;
    let flops = layers * (2.0 * llama_layer_matmul_params(c) + attention) + 2.0 * (c.vocab_size * c.hidden_size) as f64;
    Cost { flops, bytes: llama_weight_bytes_per_token(c, weight_dtype_size) }
}

/// A pre-norm ViT (CLIP, DINOv2) over `tokens` tokens for `layers` layers with an MLP of
/// `mlp_params_per_width` × width² parameters (8 for a 4× GELU MLP; 3·swiglu/width for SwiGLU),
/// after a `patch`² patch embedding of `patches` patches.
pub fn vit(width: usize, layers: usize, tokens: usize, patches: usize, patch: usize, mlp_params: usize, weight_dtype_size: usize) -> Cost {
    let (c, n) = (width as f64, tokens as f64);
    let per_layer = 2.0 * n * (4.0 * c * c + mlp_params as f64) + 2.0 * 2.0 * n * n * c;
    let embed = 2.0 * patches as f64 * (3 * patch * patch) as f64 * c;
    let params = layers as f64 * (4.0 * c * c + mlp_params as f64) + (3 * patch * patch) as f64 * c;
    Cost { flops: layers as f64 * per_layer + embed, bytes: params * weight_dtype_size as f64 }
}

/// SAM's ViT image encoder and neck on its full input: windowed layers attend within padded
/// windows (their QKV and output projections run on the padding too), the MLPs and global
/// layers on the grid itself.
pub fn sam_encoder(cfg: &SamConfig, weight_dtype_size: usize) -> Cost {
    let v = &cfg.vision_config;
    let (c, grid) = (v.hidden_size as f64, v.grid());
    let mlp = 2.0 * c * v.mlp_width() as f64;
    let mut flops = 2.0 * (grid * grid) as f64 * (3 * v.patch_size * v.patch_size) as f64 * c;
    for i in 0..v.num_hidden_layers {
        let w = v.layer_window(i);
        let (windows, per_window) = if w == 0 {
            (1.0, (grid * grid) as f64)
        } else {
            let padded = grid.div_ceil(w) * w;
            (((padded / w) * (padded / w)) as f64, (w * w) as f64)
        };
        let padded_tokens = windows * per_window;
        flops += 2.0 * padded_tokens * 4.0 * c * c + 2.0 * (grid * grid) as f64 * mlp + windows * 2.0 * 2.0 * per_window * per_window * c;
    }
    let neck_out = v.output_channels as f64;
    let cells = (grid * grid) as f64;
    flops += 2.0 * cells * c * neck_out + 2.0 * cells * neck_out * neck_out * 9.0;
    let params = v.num_hidden_layers as f64 * (4.0 * c * c + mlp) + c * neck_out + neck_out * neck_out * 9.0;
    Cost { flops, bytes: params * weight_dtype_size as f64 }
}

/// `Backend::scatter_mean_pool` of `p` patches of width `c` into `s` superpixels: reads the
/// weights, the features and the position table, writes the pooled tokens (all f32).
pub fn scatter_pool(s: usize, p: usize, c: usize) -> Cost {
    let (s, p, c) = (s as f64, p as f64, c as f64);
    Cost { flops: 2.0 * s * p * c, bytes: 4.0 * (s * p + 2.0 * p * c + s * c) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::presets::preset;

    fn llama_7b() -> LlamaConfig {
        let p = preset("lisa-7b").unwrap();
        LlamaConfig::from_json(p.llm_config.as_object().unwrap(), std::path::Path::new("<test>")).unwrap()
    }

    /// Llama-2-7B has 6.74·10⁹ parameters, 0.13·10⁹ of them in the embedding table: a bf16
    /// decode step reads ≈ 13.2 GB (the table contributes one row).
    #[test]
    fn llama_7b_bytes_and_flops() {
        let c = llama_7b();
        let bytes = llama_weight_bytes_per_token(&c, 2);
        assert!((bytes / 1e9 - 13.21).abs() < 0.05, "{bytes}");
        // Prefill ≈ 2 · params · tokens, plus attention.
        let p = llama_prefill(&c, 616, 2);
        // The output projection runs for the last position only.
        let dense = 2.0 * 616.0 * (6.738e9 - 2.0 * 0.131e9);
        assert!(p.flops > dense && p.flops < dense * 1.1, "{} vs {dense}", p.flops);
        assert!(llama_decode(&c, 616, 2).flops < p.flops / 500.0);
    }

    #[test]
    fn roofline_takes_the_binding_limit() {
        let c = Cost { flops: 1e12, bytes: 1e9 };
        // 1 TFLOP at 100 TFLOP/s = 10 ms; 1 GB at 1000 GB/s = 1 ms.
        assert_eq!(c.roofline_ms(Some(1000.0), Some(100.0)), Some(10.0));
        assert_eq!(c.roofline_ms(Some(1000.0), None), None, "compute-bound work needs a GEMM peak");
        let mem = Cost { flops: 0.0, bytes: 2e9 };
        assert_eq!(mem.roofline_ms(Some(1000.0), None), Some(2.0));
    }

    /// SAM ViT-H: ≈ 3·10¹² multiply-adds per 1024² image (the published ~2.98 TMACs), 0.63·10⁹
    /// encoder parameters.
    #[test]
    fn sam_vit_h_flops() {
        let p = preset("lisa-7b").unwrap();
        let sam: SamConfig = serde_json::from_value(p.sam_config).unwrap();
        let c = sam_encoder(&sam, 2);
        assert!((5.8e12..6.1e12).contains(&c.flops), "{}", c.flops);
        assert!((1.2e9..1.4e9).contains(&c.bytes), "{}", c.bytes);
    }
}
