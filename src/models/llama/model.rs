//! The Llama decoder (HF `LlamaForCausalLM`), written once against the `Backend` op set.
//!
//! Per layer: x += o_proj(attention(rope(q), rope(k), v)) over RMSNorm(x), then
//! x += down_proj(act(gate_proj(h)) · up_proj(h)) over RMSNorm(x). Keys and values go into a
//! preallocated cache (`[1, Hkv, capacity, D]` per layer), so prefill and each decode step are the
//! same code path: the new tokens attend causally to everything cached before them.
//!
//! Decode-step napkin math: every weight is read once per token (SmolLM2-135M in f32: 0.54 GB),
//! so a decode step is a chain of GEMVs; the step avoids copies where a layout change is free
//! (one token: `[1, H·D]` and `[1, H, 1, D]` are the same memory) and computes logits for the last
//! position only.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::config::{inv_freq, rope_tables, LlamaConfig};
use crate::backend::{Activation, AttnBias, AttnParams, Backend, StepGraph};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::weights::{VarView, Weights};

/// A linear layer as stored by HF: weight `[out, in]`, optional bias `[out]`.
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn load(vv: &VarView, name: &str, out_dim: usize, in_dim: usize, bias: bool) -> Result<Linear> {
        let vv = vv.pp(name);
        Ok(Linear {
            weight: vv.get("weight", &[out_dim, in_dim])?,
            bias: if bias { Some(vv.get_f32("bias", &[out_dim])?) } else { None },
        })
    }

    fn forward(&self, be: &Backend, x: &Tensor, act: Activation, residual: Option<&Tensor>) -> Result<Tensor> {
        be.linear(x, &self.weight, self.bias.as_ref(), act, residual)
    }
}

struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct DecoderLayer {
    input_layernorm: Tensor,
    self_attn: SelfAttention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
}

/// Keys and values of every layer for one sequence, allocated once at full capacity.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
    /// Single-token steps run so far without a recorded graph (the first loads every kernel).
    eager_steps: usize,
    /// The recorded decode step (on backends that record them), with the id of the model that
    /// recorded it and whether it returns hidden states.
    graph: Option<(u64, bool, StepGraph)>,
    /// Why recording a step failed (steps then stay eager).
    graph_off: Option<String>,
}

impl KvCache {
    /// Tokens cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Most tokens this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn remaining(&self) -> usize {
        self.capacity - self.len
    }
    /// Forget everything after the first `len` tokens (to re-run from a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Room for `n` more tokens.
    fn check_room(&self, n: usize) -> Result<()> {
        if n > self.remaining() {
            return Err(Error::arg("prompt", format!("{n} tokens after {} already in context exceed the context length of {} tokens", self.len, self.capacity)));
        }
        Ok(())
    }
    /// The dtype keys and values are kept in (`Backend::kv_cache_dtype`: bf16 on CUDA for
    /// half-precision models, else f32).
    pub fn dtype(&self) -> crate::dtype::DType {
        self.k.first().map_or(crate::dtype::DType::F32, |t| t.dtype())
    }
    /// Whether single-token steps on this cache replay a recorded graph (CUDA).
    pub fn replays_steps(&self) -> bool {
        self.graph.is_some()
    }
    /// Why this cache's steps could not be recorded, if they could not.
    pub fn graph_note(&self) -> Option<&str> {
        self.graph_off.as_deref()
    }
}

/// Tells models apart, so a cache replays only the steps its own model recorded.
static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(1);

/// What the layers are fed: token ids, or ready-made input embeddings `[n, hidden]` f32 (for
/// splicing other modalities into the sequence).
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Ids(&'a [u32]),
    Embeds(&'a Tensor),
}

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    All,
    Last,
    None,
}

#[derive(Debug)]
pub struct Output {
    /// `[n, vocab]` for `Logits::All`, `[1, vocab]` for `Logits::Last`.
    pub logits: Option<Tensor>,
    /// Last-layer hidden states after the final norm, `[n, hidden]` (HF `hidden_states[-1]`), when asked for.
    pub hidden: Option<Tensor>,
}

pub struct Llama {
    pub config: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    lm_head: Tensor,
    /// RoPE tables `[max_position_embeddings, head_dim / 2]`, computed once at load.
    cos: Tensor,
    sin: Tensor,
    /// Unique per loaded model (`NEXT_MODEL_ID`): a cache replays only this model's steps.
    id: u64,
}

impl Llama {
    /// Load an HF checkpoint directory: config.json (+ generation_config.json) and safetensors
    /// weights in f32, f16 or bf16.
    pub fn load(dir: &Path, be: &Backend) -> Result<Llama> {
        let config = LlamaConfig::from_dir(dir)?;
        let weights = Weights::open(dir)?;
        Self::from_weights(config, &VarView::new(&weights, be))
    }

    /// Build from a view whose scope holds `model.*` and (unless tied) `lm_head.weight`.
    pub fn from_weights(config: LlamaConfig, vv: &VarView) -> Result<Llama> {
        let c = &config;
        let (hidden, hd) = (c.hidden_size, c.head_dim);
        let m = vv.pp("model");
        let embed_tokens = m.get("embed_tokens.weight", &[c.vocab_size, hidden])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = m.pp("layers").pp(i);
            let a = l.pp("self_attn");
            let f = l.pp("mlp");
            let ab = c.attention_bias;
            let mb = c.mlp_bias;
            layers.push(DecoderLayer {
                input_layernorm: l.get_f32("input_layernorm.weight", &[hidden])?,
                self_attn: SelfAttention {
                    q_proj: Linear::load(&a, "q_proj", c.num_attention_heads * hd, hidden, ab)?,
                    k_proj: Linear::load(&a, "k_proj", c.num_key_value_heads * hd, hidden, ab)?,
                    v_proj: Linear::load(&a, "v_proj", c.num_key_value_heads * hd, hidden, ab)?,
                    o_proj: Linear::load(&a, "o_proj", hidden, c.num_attention_heads * hd, ab)?,
                },
                post_attention_layernorm: l.get_f32("post_attention_layernorm.weight", &[hidden])?,
                mlp: Mlp {
                    gate_proj: Linear::load(&f, "gate_proj", c.intermediate_size, hidden, mb)?,
                    up_proj: Linear::load(&f, "up_proj", c.intermediate_size, hidden, mb)?,
                    down_proj: Linear::load(&f, "down_proj", hidden, c.intermediate_size, mb)?,
                },
            });
        }
        let norm = m.get_f32("norm.weight", &[hidden])?;
        // Tied checkpoints (and converted ones that never stored it) have no lm_head: the output
        // projection is the embedding table itself.
        let lm_head = if !c.tie_word_embeddings && vv.contains("lm_head.weight") {
            vv.get("lm_head.weight", &[c.vocab_size, hidden])?
        } else {
            embed_tokens.clone()
        };
        let freqs = inv_freq(hd, c.rope_theta, &c.rope_scaling);
        let (cos, sin) = rope_tables(&freqs, c.max_position_embeddings);
        let be = vv.backend();
        let shape = vec![c.max_position_embeddings, hd / 2];
        let cos = be.upload(&Tensor::from_f32(cos, shape.clone())?)?;
        let sin = be.upload(&Tensor::from_f32(sin, shape)?)?;
        Ok(Llama { config, embed_tokens, layers, norm, lm_head, cos, sin, id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed) })
    }

    /// A cache for up to `max_ctx` tokens (at most `max_position_embeddings`), allocated now.
    pub fn new_cache(&self, be: &Backend, max_ctx: usize) -> Result<KvCache> {
        let c = &self.config;
        if max_ctx == 0 || max_ctx > c.max_position_embeddings {
            return Err(Error::arg(
                "context length",
                format!("{max_ctx} tokens: expected 1..={} (the model's max_position_embeddings)", c.max_position_embeddings),
            ));
        }
        let shape = [1, c.num_key_value_heads, max_ctx, c.head_dim];
        // bf16 on CUDA for half-precision weights (`Backend::kv_cache_dtype`), else f32.
        let dtype = be.kv_cache_dtype(self.half_weights());
        // A device copies one host tensor of zeros for every buffer (converted once, not per
        // layer); on the CPU an upload shares the host buffer, so each tensor gets its own.
        let host = if matches!(be, Backend::Cpu(_)) { None } else { Some(Tensor::zeros(shape).to_dtype(dtype)?) };
        let zeros = || -> Result<Tensor> {
            match &host {
                Some(h) => be.upload(h),
                None => Tensor::zeros(shape).to_dtype(dtype),
            }
        };
        let mut k = Vec::with_capacity(c.num_hidden_layers);
        let mut v = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            k.push(zeros()?);
            v.push(zeros()?);
        }
        Ok(KvCache { k, v, len: 0, capacity: max_ctx, eager_steps: 0, graph: None, graph_off: None })
    }

    /// Whether the attention projections are half precision (f16 or bf16), which lets the
    /// attention round its operands (`AttnParams::low_precision`) and CUDA keep a bf16 cache.
    fn half_weights(&self) -> bool {
        self.layers.first().is_some_and(|l| l.self_attn.q_proj.weight.dtype().is_half())
    }

    /// Token embeddings `[n, hidden]` f32; every id must be below the vocabulary size.
    pub fn embed(&self, be: &Backend, ids: &[u32]) -> Result<Tensor> {
        self.check_ids(ids)?;
        be.embedding(&self.embed_tokens, ids)
    }

    /// Every id below the vocabulary size.
    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        match ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            Some((i, &id)) => Err(Error::arg("token id", format!("{id} at index {i} is outside the vocabulary of {vocab} tokens"))),
            None => Ok(()),
        }
    }

    /// Run `input` after the tokens already in `cache`, appending its keys and values.
    ///
    /// On a backend that records decode steps (`Backend::step_graphs`: CUDA), a single token id
    /// with the last position's logits is a decode step: the cache's first one runs eagerly, the
    /// second is recorded as a graph, and later ones replay it (one launch for the whole step).
    pub fn forward(&self, be: &Backend, input: Input, cache: &mut KvCache, logits: Logits, want_hidden: bool) -> Result<Output> {
        if let (Input::Ids(&[id]), Logits::Last) = (input, logits) {
            if be.step_graphs() && cache.graph_off.is_none() && cache.k.len() == self.layers.len() {
                return self.decode_step(be, id, cache, want_hidden);
            }
        }
        self.forward_eager(be, input, cache, logits, want_hidden)
    }

    /// One decode step through the cache's recorded graph, recording it first where needed.
    fn decode_step(&self, be: &Backend, id: u32, cache: &mut KvCache, want_hidden: bool) -> Result<Output> {
        let c = &self.config;
        let pos = cache.len;
        cache.check_room(1)?;
        self.check_ids(&[id])?;
        let output = |mut outs: Vec<Tensor>| {
            let hidden = if want_hidden { outs.pop() } else { None };
            Output { logits: outs.pop(), hidden }
        };
        if let Some((model, hidden, g)) = &cache.graph {
            if *model == self.id && *hidden == want_hidden {
                let outs = be.replay_decode(g, id, pos)?;
                cache.len = pos + 1;
                return Ok(output(outs));
            }
        }
        if cache.eager_steps == 0 {
            cache.eager_steps += 1;
            return self.forward_eager(be, Input::Ids(&[id]), cache, Logits::Last, want_hidden);
        }
        let mut shapes = vec![vec![1, c.vocab_size]];
        if want_hidden {
            shapes.push(vec![1, c.hidden_size]);
        }
        let recorded = be.capture_decode(id, pos, &shapes, || {
            let out = self.forward_eager(be, Input::Ids(&[id]), cache, Logits::Last, want_hidden)?;
            let missing = || Error::shape("decode graph", "the step returned no logits");
            Ok([Some(out.logits.ok_or_else(missing)?), out.hidden].into_iter().flatten().collect())
        });
        match recorded {
            Ok((g, outs)) => {
                cache.graph = Some((self.id, want_hidden, g));
                cache.len = pos + 1;
                Ok(output(outs))
            }
            Err(e) => {
                // Nothing ran: run the step eagerly, and every later one.
                cache.len = pos;
                cache.graph = None;
                cache.graph_off = Some(e.to_string());
                self.forward_eager(be, Input::Ids(&[id]), cache, Logits::Last, want_hidden)
            }
        }
    }

    fn forward_eager(&self, be: &Backend, input: Input, cache: &mut KvCache, logits: Logits, want_hidden: bool) -> Result<Output> {
        let c = &self.config;
        let n = match input {
            Input::Ids(ids) => ids.len(),
            Input::Embeds(e) => {
                if e.dims() != 2 || e.dim(1) != c.hidden_size {
                    return Err(Error::arg("input embeddings", format!("expected [n, {}], found {:?}", c.hidden_size, e.shape())));
                }
                if e.dtype() != crate::DType::F32 {
                    return Err(Error::arg("input embeddings", format!("expected f32, found {}", e.dtype())));
                }
                e.dim(0)
            }
        };
        if n == 0 {
            return Err(Error::arg("prompt", "is empty: at least one token is needed"));
        }
        if cache.k.len() != self.layers.len() {
            return Err(Error::arg("kv cache", format!("has {} layers, the model {}", cache.k.len(), self.layers.len())));
        }
        let pos = cache.len;
        cache.check_room(n)?;
        let mut x = match input {
            Input::Ids(ids) => self.embed(be, ids)?,
            Input::Embeds(e) => e.clone(),
        };
        let eps = c.rms_norm_eps as f32;
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward(be, layer, &x, &mut cache.k[i], &mut cache.v[i], pos, n, eps)?;
        }
        cache.len = pos + n;

        let hidden = if want_hidden { Some(be.rms_norm(&x, &self.norm, eps)?) } else { None };
        let logits = match logits {
            Logits::None => None,
            Logits::All => {
                let h = match &hidden {
                    Some(h) => h.clone(),
                    None => be.rms_norm(&x, &self.norm, eps)?,
                };
                Some(be.linear(&h, &self.lm_head, None, Activation::None, None)?)
            }
            Logits::Last => {
                let last = |t: &Tensor| if n == 1 { Ok(t.clone()) } else { be.narrow(t, 0, n - 1, 1) };
                let h = match &hidden {
                    Some(h) => last(h)?,
                    None => be.rms_norm(&last(&x)?, &self.norm, eps)?,
                };
                Some(be.linear(&h, &self.lm_head, None, Activation::None, None)?)
            }
        };
        Ok(Output { logits, hidden })
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        be: &Backend,
        layer: &DecoderLayer,
        x: &Tensor,
        k_cache: &mut Tensor,
        v_cache: &mut Tensor,
        pos: usize,
        n: usize,
        eps: f32,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (h, hkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let a = &layer.self_attn;
        let (q, k, v) = if a.q_proj.bias.is_none() && a.k_proj.bias.is_none() && a.v_proj.bias.is_none() {
            // One pass over the three weights (one parallel region per token, not three), the
            // norm fused in where the backend can.
            let mut qkv = be.rms_norm_linear_many(x, &layer.input_layernorm, eps, &[&a.q_proj.weight, &a.k_proj.weight, &a.v_proj.weight])?.into_iter();
            let mut next = || qkv.next().ok_or_else(|| Error::shape("linear_many", "missing output"));
            (next()?, next()?, next()?)
        } else {
            let normed = be.rms_norm(x, &layer.input_layernorm, eps)?;
            (
                a.q_proj.forward(be, &normed, Activation::None, None)?,
                a.k_proj.forward(be, &normed, Activation::None, None)?,
                a.v_proj.forward(be, &normed, Activation::None, None)?,
            )
        };
        let q = to_heads(be, &q, n, h, d)?;
        let k = to_heads(be, &k, n, hkv, d)?;
        let v = to_heads(be, &v, n, hkv, d)?;
        let q = be.rope_qk_write_kv(&q, &k, &v, k_cache, v_cache, &self.cos, &self.sin, pos)?;
        // transformers multiplies by head_dim ** -0.5 computed in double precision.
        let params = AttnParams {
            scale: (d as f64).powf(-0.5) as f32,
            causal: true,
            kv_len: Some(pos + n),
            bias: AttnBias::None,
            low_precision: a.q_proj.weight.dtype().is_half(),
        };
        let attn = from_heads(be, &be.attention(&q, k_cache, v_cache, &params)?, n, h * d)?;
        let x = a.o_proj.forward(be, &attn, Activation::None, Some(x))?;

        let m = &layer.mlp;
        let post_ln = &layer.post_attention_layernorm;
        let act = if c.hidden_act == Activation::Silu && m.gate_proj.bias.is_none() && m.up_proj.bias.is_none() {
            be.rms_norm_swiglu(&x, post_ln, eps, &m.gate_proj.weight, &m.up_proj.weight)?
        } else if c.hidden_act == Activation::Silu {
            let normed = be.rms_norm(&x, post_ln, eps)?;
            let gate = m.gate_proj.forward(be, &normed, Activation::None, None)?;
            let up = m.up_proj.forward(be, &normed, Activation::None, None)?;
            be.silu_mul(&gate, &up)?
        } else {
            let normed = be.rms_norm(&x, post_ln, eps)?;
            let gate = m.gate_proj.forward(be, &normed, c.hidden_act, None)?;
            let up = m.up_proj.forward(be, &normed, Activation::None, None)?;
            be.mul(&gate, &up)?
        };
        m.down_proj.forward(be, &act, Activation::None, Some(&x))
    }
}

/// `[n, heads·d]` → `[1, heads, n, d]`; a free reshape for a single token.
fn to_heads(be: &Backend, t: &Tensor, n: usize, heads: usize, d: usize) -> Result<Tensor> {
    if n == 1 {
        return t.reshape(&[1, heads, 1, d]);
    }
    be.permute(&t.reshape(&[1, n, heads, d])?, &[0, 2, 1, 3])
}

/// `[1, heads, n, d]` → `[n, heads·d]`; a free reshape for a single token.
fn from_heads(be: &Backend, t: &Tensor, n: usize, width: usize) -> Result<Tensor> {
    if n == 1 {
        return t.reshape(&[1, width]);
    }
    be.permute(t, &[0, 2, 1, 3])?.reshape(&[n, width])
}
