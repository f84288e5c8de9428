//! Autoregressive generation over a `Llama`: prefill, then one token at a time through the KV
//! cache, choosing each token greedily or by temperature + top-p sampling with a seeded RNG, until
//! a stop token, `max_new_tokens`, or a full context.
//!
//! Each step computes the last position's logits only and copies those `vocab` floats to the host
//! to choose the next token: one small host sync per token.

use std::time::Instant;

use super::llama::{Input, KvCache, Llama, Logits};
use crate::backend::Backend;
use crate::error::{Error, Result};

/// How the next token is chosen from the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The highest logit (the first one on ties, as `torch.argmax`).
    Greedy,
    /// Softmax(logits / temperature), restricted to the smallest set of most likely tokens whose
    /// probability reaches `top_p` (transformers' TemperatureLogitsWarper then TopPLogitsWarper).
    TopP { temperature: f32, top_p: f32 },
}

impl Sampling {
    /// Validated sampling settings; a temperature of 0 means greedy.
    pub fn top_p(temperature: f32, top_p: f32) -> Result<Sampling> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::arg("--temperature", format!("{temperature}: expected a finite number ≥ 0")));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::arg("--top-p", format!("{top_p}: expected a number in (0, 1]")));
        }
        Ok(if temperature == 0.0 { Sampling::Greedy } else { Sampling::TopP { temperature, top_p } })
    }
}

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Ids that end generation (they are included in the output, as transformers does).
    pub stop_tokens: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    StopToken(u32),
    MaxNewTokens,
    /// The KV cache (context) has no room for another token.
    ContextFull,
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// The new tokens, ending with the stop token when one stopped generation.
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Prefill (prompt forward + choice of the first token) wall time.
    pub prefill_secs: f64,
    /// Decode steps after the first token, and their total wall time.
    pub decode_steps: usize,
    pub decode_secs: f64,
}

impl Generation {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }
    pub fn decode_tokens_per_sec(&self) -> f64 {
        if self.decode_steps == 0 {
            return 0.0;
        }
        self.decode_steps as f64 / self.decode_secs.max(1e-9)
    }
}

/// Generate after `prompt`, appending to `cache` (which may already hold earlier context).
/// `on_token` sees each new id as soon as it is chosen.
pub fn generate(
    model: &Llama,
    be: &Backend,
    prompt: Input,
    cache: &mut KvCache,
    params: &GenerateParams,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    let prompt_tokens = match prompt {
        Input::Ids(ids) => ids.len(),
        Input::Embeds(e) => e.shape().first().copied().unwrap_or(0),
    };
    let mut sampler = Sampler::new(params.sampling, params.seed);
    let mut tokens = Vec::new();
    let t0 = Instant::now();
    let out = model.forward(be, prompt, cache, Logits::Last, false)?;
    if params.max_new_tokens == 0 {
        let prefill_secs = t0.elapsed().as_secs_f64();
        return Ok(Generation { tokens, stop: StopReason::MaxNewTokens, prompt_tokens, prefill_secs, decode_steps: 0, decode_secs: 0.0 });
    }
    let mut logits = logits_vec(be, out.logits)?;
    let mut next = sampler.sample(&logits)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut decode_steps = 0;
    let stop = loop {
        tokens.push(next);
        on_token(next)?;
        if params.stop_tokens.contains(&next) {
            break StopReason::StopToken(next);
        }
        if tokens.len() >= params.max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        if cache.remaining() == 0 {
            break StopReason::ContextFull;
        }
        let out = model.forward(be, Input::Ids(&[next]), cache, Logits::Last, false)?;
        logits = logits_vec(be, out.logits)?;
        next = sampler.sample(&logits)?;
        decode_steps += 1;
    };
    Ok(Generation { tokens, stop, prompt_tokens, prefill_secs, decode_steps, decode_secs: t1.elapsed().as_secs_f64() })
}

fn logits_vec(be: &Backend, logits: Option<crate::Tensor>) -> Result<Vec<f32>> {
    let t = logits.ok_or_else(|| Error::shape("generate", "forward returned no logits"))?;
    be.to_vec_f32(&t)
}

/// Chooses tokens from logits; deterministic for a given seed.
pub struct Sampler {
    sampling: Sampling,
    rng: Xoshiro256,
    /// Scratch for (probability, id) pairs, reused across steps.
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(sampling: Sampling, seed: u64) -> Sampler {
        Sampler { sampling, rng: Xoshiro256::new(seed), scratch: Vec::new() }
    }

    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::TopP { temperature, top_p } => self.sample_top_p(logits, temperature, top_p),
        }
    }

    fn sample_top_p(&mut self, logits: &[f32], temperature: f32, top_p: f32) -> Result<u32> {
        let max = logits.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return Err(Error::shape("sample", "every logit is NaN or -inf"));
        }
        let s = &mut self.scratch;
        s.clear();
        let mut total = 0f64;
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() {
                continue;
            }
            let p = ((l - max) / temperature).exp();
            total += p as f64;
            s.push((p, i as u32));
        }
        // Most likely first; ties keep the lower id first.
        s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        // Keep a token while the mass strictly before it is below top_p (at least one token).
        let mut kept = 0;
        let mut mass_before = 0f64;
        for &(p, _) in s.iter() {
            if kept > 0 && mass_before / total >= top_p as f64 {
                break;
            }
            mass_before += p as f64;
            kept += 1;
        }
        let target = self.rng.next_f64() * mass_before;
        let mut acc = 0f64;
        for &(p, id) in &s[..kept] {
            acc += p as f64;
            if target < acc {
                return Ok(id);
            }
        }
        Ok(s[kept - 1].1)
    }
}

/// Index of the largest logit, NaNs ignored, first on ties.
pub fn argmax(logits: &[f32]) -> Result<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i as u32).ok_or_else(|| Error::shape("argmax", "no logits, or every logit is NaN"))
}

/// xoshiro256** seeded through SplitMix64: small, fast, and the same sequence on every platform.
struct Xoshiro256([u64; 4]);

impl Xoshiro256 {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Xoshiro256([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_first_on_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]).unwrap(), 1);
        assert!(argmax(&[f32::NAN]).is_err());
        assert!(argmax(&[]).is_err());
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities ∝ e^l: [0.64, 0.24, 0.09, 0.03] for these logits at T = 1.
        let logits = [3.0f32, 2.0, 1.0, -0.2];
        let mut s = Sampler::new(Sampling::TopP { temperature: 1.0, top_p: 0.5 }, 7);
        for _ in 0..200 {
            assert_eq!(s.sample(&logits).unwrap(), 0, "top_p 0.5 keeps only the top token");
        }
        let mut s = Sampler::new(Sampling::TopP { temperature: 1.0, top_p: 0.8 }, 7);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[s.sample(&logits).unwrap() as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0 && seen[2] == 0 && seen[3] == 0, "{seen:?}");
        // Renormalised over {0, 1}: 0.73 / 0.27.
        let frac = seen[0] as f64 / 2000.0;
        assert!((frac - 0.731).abs() < 0.04, "{frac}");
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7919) % 13) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(Sampling::TopP { temperature: 0.9, top_p: 0.95 }, seed);
            (0..30).map(|_| s.sample(&logits).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn sampling_validation() {
        assert_eq!(Sampling::top_p(0.0, 0.9).unwrap(), Sampling::Greedy);
        assert!(Sampling::top_p(-1.0, 0.9).is_err());
        assert!(Sampling::top_p(1.0, 0.0).is_err());
        assert!(Sampling::top_p(1.0, 1.5).is_err());
        assert!(Sampling::top_p(f32::NAN, 0.5).is_err());
    }
}
