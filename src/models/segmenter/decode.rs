//! Greedy decoding that keeps, for each generated `[SEG]`, the last-layer hidden state (after
//! the final norm) at the position whose logits chose it. LISA's `seg_token_mask` is the output
//! ids shifted by one, so that is the state it feeds to `text_hidden_fcs`; keeping it while
//! decoding costs nothing extra (the step that predicted `[SEG]` already computed it).

use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::generate::argmax;
use crate::models::llama::{Input, KvCache, Llama, Logits, Output};
use crate::tensor::Tensor;

/// Why decoding stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Eos,
    MaxNewTokens,
    /// The context filled before EOS or the token limit.
    ContextFull,
}

pub struct Decoded {
    /// Generated ids, EOS excluded.
    pub ids: Vec<u32>,
    /// `[1, d]` hidden state that predicted each `[SEG]` in `ids`, in order.
    pub seg_states: Vec<Tensor>,
    pub stop: Stop,
    /// Prompt forward + first token choice, in ms.
    pub prefill_ms: f64,
    /// Decode steps run (one forward of one token each) and their total time.
    pub decode_steps: usize,
    pub decode_ms: f64,
}

/// Last position's logits and hidden state of a forward's output.
fn last(be: &Backend, out: Output) -> Result<(u32, Tensor)> {
    let logits = out.logits.ok_or_else(|| Error::shape("segmenter decode", "the LLM returned no logits"))?;
    let hidden = out.hidden.ok_or_else(|| Error::shape("segmenter decode", "the LLM returned no hidden states"))?;
    let n = hidden.dim(0);
    let h = if n == 1 { hidden } else { be.narrow(&hidden, 0, n - 1, 1)? };
    Ok((argmax(&be.to_vec_f32(&logits)?)?, h))
}

/// Prefill `embeds` `[n, d]` into the empty `cache`, then decode greedily until an id in `eos`,
/// `max_new_tokens` generated ids, or a full cache.
pub fn greedy(be: &Backend, llm: &Llama, embeds: &Tensor, cache: &mut KvCache, seg_id: u32, eos: &[u32], max_new_tokens: usize) -> Result<Decoded> {
    let start = Instant::now();
    let out = llm.forward(be, Input::Embeds(embeds), cache, Logits::Last, true)?;
    let (mut token, mut hidden) = last(be, out)?;
    be.synchronize()?;
    let prefill_ms = start.elapsed().as_secs_f64() * 1e3;

    let start = Instant::now();
    let mut ids = Vec::new();
    let mut seg_states = Vec::new();
    let mut steps = 0;
    let stop = loop {
        if eos.contains(&token) {
            break Stop::Eos;
        }
        ids.push(token);
        if token == seg_id {
            seg_states.push(hidden.clone());
        }
        if ids.len() >= max_new_tokens {
            break Stop::MaxNewTokens;
        }
        if cache.remaining() == 0 {
            break Stop::ContextFull;
        }
        let out = llm.forward(be, Input::Ids(&[token]), cache, Logits::Last, true)?;
        (token, hidden) = last(be, out)?;
        steps += 1;
    };
    be.synchronize()?;
    Ok(Decoded { ids, seg_states, stop, prefill_ms, decode_steps: steps, decode_ms: start.elapsed().as_secs_f64() * 1e3 })
}
