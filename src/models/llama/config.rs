//! `config.json` (and `generation_config.json`) of an HF Llama checkpoint.
//!
//! Both layouts transformers has written are accepted: transformers 4 keeps `rope_theta` at the top
//! level and the scaling in `rope_scaling` (`type` or `rope_type`); transformers 5 folds both into
//! `rope_parameters`. Defaults follow `LlamaConfig` where a key may be absent; the sizes that define
//! the tensors are required.

use std::path::Path;

use serde_json::Value;

use crate::backend::Activation;
use crate::error::{Error, Result};

/// How the rotary inverse frequencies are derived from `rope_theta`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// inv_freq[i] = θ^(−2i/D).
    Default,
    /// Position interpolation: inv_freq / factor.
    Linear { factor: f64 },
    /// Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

#[derive(Clone, Debug)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub hidden_act: Activation,
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids from config.json and generation_config.json (either may hold an int or
    /// a list), deduplicated, config.json's first.
    pub eos_token_ids: Vec<u32>,
    /// Sampling defaults from generation_config.json, when it has them.
    pub generation: GenerationDefaults,
}

/// The few generation_config.json fields the `generate` command uses as defaults.
#[derive(Clone, Debug, Default)]
pub struct GenerationDefaults {
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
}

fn cfg_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::config(path, msg)
}

/// Typed accessors over one JSON object, each naming the file and key on failure.
struct Obj<'a> {
    map: &'a serde_json::Map<String, Value>,
    path: &'a Path,
}

impl<'a> Obj<'a> {
    fn present(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| cfg_err(self.path, format!("`{key}` must be a non-negative integer, found {v}"))),
        }
    }
    fn usize_req(&self, key: &str) -> Result<usize> {
        let v = self.usize_opt(key)?.ok_or_else(|| cfg_err(self.path, format!("missing required key `{key}`")))?;
        if v == 0 {
            return Err(cfg_err(self.path, format!("`{key}` must be positive")));
        }
        Ok(v)
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| cfg_err(self.path, format!("`{key}` must be a number, found {v}"))),
        }
    }
    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| cfg_err(self.path, format!("`{key}` must be true or false, found {v}"))),
        }
    }
    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| cfg_err(self.path, format!("`{key}` must be a string, found {v}"))),
        }
    }
    /// An int or a list of ints (eos_token_id).
    fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = || cfg_err(self.path, format!("`{key}` must be a token id or a list of token ids"));
        match self.present(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(bad)).collect(),
            Some(v) => Ok(vec![v.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(bad)?]),
        }
    }
}

fn read_json_object(path: &Path) -> Result<serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| cfg_err(path, format!("cannot read: {e}")))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(cfg_err(path, "expected a JSON object")),
        Err(e) => Err(cfg_err(path, format!("not valid JSON: {e}"))),
    }
}

impl LlamaConfig {
    /// Read `dir/config.json`, plus `dir/generation_config.json` when present.
    pub fn from_dir(dir: &Path) -> Result<LlamaConfig> {
        if !dir.is_dir() {
            return Err(cfg_err(dir, "model directory does not exist"));
        }
        let mut cfg = Self::from_file(&dir.join("config.json"))?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let map = read_json_object(&gen_path)?;
            let o = Obj { map: &map, path: &gen_path };
            for id in o.ids("eos_token_id")? {
                if !cfg.eos_token_ids.contains(&id) {
                    cfg.eos_token_ids.push(id);
                }
            }
            cfg.generation = GenerationDefaults {
                do_sample: o.bool_opt("do_sample")?,
                temperature: o.f64_opt("temperature")?.map(|x| x as f32),
                top_p: o.f64_opt("top_p")?.map(|x| x as f32),
            };
        }
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<LlamaConfig> {
        let map = read_json_object(path)?;
        Self::from_json(&map, path)
    }

    /// Parse a config.json object; `path` only names the source in errors.
    pub fn from_json(map: &serde_json::Map<String, Value>, path: &Path) -> Result<LlamaConfig> {
        let o = Obj { map, path };
        if let Some(mt) = o.str_opt("model_type")? {
            // Architectures that share Llama's tensors and math; anything else would load and be wrong.
            if mt != "llama" {
                return Err(cfg_err(path, format!("model_type `{mt}` is not a Llama-architecture model")));
            }
        }
        let hidden_size = o.usize_req("hidden_size")?;
        let num_attention_heads = o.usize_req("num_attention_heads")?;
        let num_key_value_heads = o.usize_opt("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(cfg_err(
                path,
                format!("num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"),
            ));
        }
        let head_dim = match o.usize_opt("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(cfg_err(path, format!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads} and there is no head_dim")));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(cfg_err(path, format!("head_dim {head_dim} must be even and positive (rotary embedding)")));
        }
        let act_name = o.str_opt("hidden_act")?.unwrap_or("silu");
        let hidden_act = Activation::from_hf(act_name).ok_or_else(|| cfg_err(path, format!("unsupported hidden_act `{act_name}`")))?;
        let (rope_theta, rope_scaling) = parse_rope(&o)?;
        let max_position_embeddings = o.usize_opt("max_position_embeddings")?.unwrap_or(2048);
        if max_position_embeddings == 0 {
            return Err(cfg_err(path, "`max_position_embeddings` must be positive"));
        }
        let bos = o.ids("bos_token_id")?;
        Ok(LlamaConfig {
            vocab_size: o.usize_req("vocab_size")?,
            hidden_size,
            intermediate_size: o.usize_req("intermediate_size")?,
            num_hidden_layers: o.usize_req("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: o.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: o.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: o.bool_opt("attention_bias")?.unwrap_or(false),
            mlp_bias: o.bool_opt("mlp_bias")?.unwrap_or(false),
            hidden_act,
            bos_token_id: bos.first().copied(),
            eos_token_ids: o.ids("eos_token_id")?,
            generation: GenerationDefaults::default(),
        })
    }
}

/// (rope_theta, scaling) from either layout. `rope_parameters` wins over `rope_scaling`; a theta
/// inside the dict wins over the top-level one (as transformers' standardisation does).
fn parse_rope(o: &Obj) -> Result<(f64, RopeScaling)> {
    let path = o.path;
    let params = match (o.present("rope_parameters"), o.present("rope_scaling")) {
        (Some(v), _) | (None, Some(v)) => Some(
            v.as_object().ok_or_else(|| cfg_err(path, format!("rope parameters must be an object, found {v}")))?,
        ),
        (None, None) => None,
    };
    let top_theta = o.f64_opt("rope_theta")?;
    let Some(params) = params else {
        return Ok((top_theta.unwrap_or(10000.0), RopeScaling::Default));
    };
    let p = Obj { map: params, path };
    let theta = p.f64_opt("rope_theta")?.or(top_theta).unwrap_or(10000.0);
    if theta.is_nan() || theta <= 0.0 {
        return Err(cfg_err(path, format!("rope_theta must be positive, found {theta}")));
    }
    if let Some(f) = p.f64_opt("partial_rotary_factor")?.or(o.f64_opt("partial_rotary_factor")?) {
        if f != 1.0 {
            return Err(cfg_err(path, format!("partial_rotary_factor {f} is not supported for Llama")));
        }
    }
    let rope_type = p.str_opt("rope_type")?.or(p.str_opt("type")?).unwrap_or("default");
    let factor = |key: &str| -> Result<f64> {
        let v = p.f64_opt(key)?.ok_or_else(|| cfg_err(path, format!("rope type `{rope_type}` needs `{key}`")))?;
        if v.is_nan() || v <= 0.0 {
            return Err(cfg_err(path, format!("rope `{key}` must be positive, found {v}")));
        }
        Ok(v)
    };
    let scaling = match rope_type {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: factor("factor")? },
        "llama3" => {
            let (low, high) = (factor("low_freq_factor")?, factor("high_freq_factor")?);
            if high <= low {
                return Err(cfg_err(path, format!("llama3 rope: high_freq_factor {high} must exceed low_freq_factor {low}")));
            }
            let omax = match p.f64_opt("original_max_position_embeddings")? {
                Some(v) => v,
                None => o.usize_opt("max_position_embeddings")?.unwrap_or(2048) as f64,
            };
            RopeScaling::Llama3 { factor: factor("factor")?, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: omax }
        }
        other => return Err(cfg_err(path, format!("rope type `{other}` is not supported (default, linear, llama3)"))),
    };
    Ok((theta, scaling))
}

/// Rotary inverse frequencies, computed as transformers computes them: in f32, from
/// `θ ** (arange(0, D, 2) / D)`, then the scaling rule. Returns D/2 values.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let half = head_dim / 2;
    let base = (0..half).map(|i| {
        let expo = (2 * i) as f32 / head_dim as f32;
        // torch: python-float base ** f32 tensor → f32 pow; 1.0 / that in f32.
        1.0f32 / (theta as f32).powf(expo)
    });
    match *scaling {
        RopeScaling::Default => base.collect(),
        RopeScaling::Linear { factor } => base.map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            // Python-float arithmetic happens in f64 and meets the f32 tensor as an f32 scalar.
            let low_freq_wavelen = (original_max_position_embeddings / low_freq_factor) as f32;
            let high_freq_wavelen = (original_max_position_embeddings / high_freq_factor) as f32;
            let band = (high_freq_factor - low_freq_factor) as f32;
            let (factor, low, old) = (factor as f32, low_freq_factor as f32, original_max_position_embeddings as f32);
            base.map(|f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < high_freq_wavelen {
                    f
                } else if wavelen > low_freq_wavelen {
                    f / factor
                } else {
                    let smooth = (old / wavelen - low) / band;
                    (1.0 - smooth) * f / factor + smooth * f
                }
            })
            .collect()
        }
    }
}

/// cos/sin tables `[positions, D/2]` for `Backend::rope`: angle = pos · inv_freq (an f32
/// product, as in transformers), cos/sin taken in f64 and rounded once.
pub fn rope_tables(inv_freq: &[f32], positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for &f in inv_freq {
            let angle = (p as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<LlamaConfig> {
        let v: Value = serde_json::from_str(json).unwrap();
        LlamaConfig::from_json(v.as_object().unwrap(), Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2"#;

    #[test]
    fn defaults_and_legacy_type_key() {
        let c = parse(&format!("{{{BASE}}}")).unwrap();
        assert_eq!((c.head_dim, c.num_key_value_heads, c.rope_theta), (4, 2, 10000.0));
        assert_eq!(c.rope_scaling, RopeScaling::Default);
        let c = parse(&format!(r#"{{{BASE}, "rope_theta": 5.0, "rope_scaling": {{"type": "linear", "factor": 4.0}}}}"#)).unwrap();
        assert_eq!((c.rope_theta, c.rope_scaling), (5.0, RopeScaling::Linear { factor: 4.0 }));
        let c = parse(&format!(r#"{{{BASE}, "rope_theta": 5.0, "rope_parameters": {{"rope_type": "default", "rope_theta": 7.0}}}}"#)).unwrap();
        assert_eq!(c.rope_theta, 7.0);
    }

    #[test]
    fn eos_int_or_list() {
        assert_eq!(parse(&format!(r#"{{{BASE}, "eos_token_id": 3}}"#)).unwrap().eos_token_ids, vec![3]);
        assert_eq!(parse(&format!(r#"{{{BASE}, "eos_token_id": [3, 4]}}"#)).unwrap().eos_token_ids, vec![3, 4]);
    }

    #[test]
    fn bad_configs_are_config_errors() {
        for bad in [
            r#"{"hidden_size": 8}"#.to_string(),
            format!(r#"{{{BASE}, "num_key_value_heads": 3}}"#),
            format!(r#"{{{BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 2.0}}}}"#),
            format!(r#"{{{BASE}, "rope_scaling": {{"rope_type": "llama3", "factor": 8.0}}}}"#),
            format!(r#"{{{BASE}, "hidden_act": "swiglu2"}}"#),
            format!(r#"{{{BASE}, "vocab_size": -1}}"#),
        ] {
            match parse(&bad) {
                Err(Error::Config { .. }) => {}
                other => panic!("{bad}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn llama3_bands() {
        // head_dim 12, θ 10000: wavelengths 6.3, 29, 135, 628, 2920, 13540 against bands 64 / 256.
        let s = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 256.0 };
        let plain = inv_freq(12, 10000.0, &RopeScaling::Default);
        let scaled = inv_freq(12, 10000.0, &s);
        assert_eq!(scaled[0], plain[0]);
        assert_eq!(scaled[1], plain[1]);
        assert!(scaled[2] < plain[2] && scaled[2] > plain[2] / 8.0);
        for i in 3..6 {
            assert_eq!(scaled[i], plain[i] / 8.0);
        }
    }
}
