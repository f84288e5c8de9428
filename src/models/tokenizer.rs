//! The tokenizer of an HF model directory: `tokenizer.json` through the `tokenizers` crate, the
//! named special tokens and chat template from `tokenizer_config.json` (or `chat_template.jinja`,
//! which transformers prefers when both exist), and incremental detokenization for streaming.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::chat_template::{ChatMessage, ChatTemplate};
use crate::error::{Error, Result};

/// The special-token attributes transformers passes to chat templates.
const SPECIAL_TOKEN_NAMES: [&str; 7] = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// (name, text) of the named special tokens, e.g. ("eos_token", "<|im_end|>").
    special_tokens: Vec<(String, String)>,
    chat_template: Option<ChatTemplate>,
    path: PathBuf,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer { msg: format!("{}: {e}", path.display()) }
}

/// A special token in tokenizer_config.json: a string or an AddedToken dict with `content`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Map<String, Value>>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(Error::config(path, "expected a JSON object")),
        Err(e) => Err(Error::config(path, format!("not valid JSON: {e}"))),
    }
}

impl Tokenizer {
    /// Load `dir/tokenizer.json` plus the optional tokenizer_config.json, special_tokens_map.json
    /// and chat_template.jinja beside it.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::config(&path, "no tokenizer.json in the model directory"));
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| tok_err(&path, e))?;

        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?.unwrap_or_default();
        let legacy_map = read_json(&dir.join("special_tokens_map.json"))?.unwrap_or_default();
        let mut special_tokens = Vec::new();
        for name in SPECIAL_TOKEN_NAMES {
            if let Some(text) = config.get(name).and_then(token_text).or_else(|| legacy_map.get(name).and_then(token_text)) {
                special_tokens.push((name.to_string(), text));
            }
        }

        let jinja_path = dir.join("chat_template.jinja");
        let source = if jinja_path.exists() {
            Some(std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?)
        } else {
            match config.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: the one named "default" is used for plain chat.
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
                    .map(Some)
                    .ok_or_else(|| Error::config(&config_path, "chat_template is a list with no template named `default`"))?,
                Some(_) => return Err(Error::config(&config_path, "chat_template must be a string or a list of {name, template}")),
            }
        };
        let chat_template = match source {
            Some(s) => Some(ChatTemplate::new(&s, special_tokens.clone())?),
            None => None,
        };
        Ok(Tokenizer { inner, special_tokens, chat_template, path })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; `add_special_tokens` runs the post-processor (e.g. a leading BOS), as
    /// transformers' `tokenizer(text)` does. Chat-template output is encoded without it.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| tok_err(&self.path, e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| tok_err(&self.path, e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of a named special token (`"eos_token"` → `"<|im_end|>"`).
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens.iter().find(|(n, _)| n == name).map(|(_, t)| t.as_str())
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.special_token("eos_token").and_then(|t| self.token_to_id(t))
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The prompt text for `messages` (transformers' `apply_chat_template(tokenize=False)`).
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let t = self.chat_template.as_ref().ok_or_else(|| Error::Template {
            msg: format!("{}: the model has no chat template (no chat_template.jinja or tokenizer_config.json chat_template)", self.path.display()),
        })?;
        t.render(messages, add_generation_prompt)
    }

    /// An incremental decoder for streaming generated ids as text.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream { tok: self, ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }
}

/// Turns ids into text pieces as they arrive. A token may end inside a multi-byte character (byte
/// fallback or byte-level BPE), and some decoders change how a token renders depending on what
/// precedes it, so each step decodes a small window — the last emitted token(s) plus the new
/// ones — and emits only the text past what that window already produced, holding back while the
/// text ends in an incomplete character (U+FFFD).
pub struct TextStream<'t> {
    tok: &'t Tokenizer,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl TextStream<'_> {
    /// Add one id; returns the newly completed text, if any. Special tokens are skipped.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = self.tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = self.tok.decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let piece = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok(Some(piece));
        }
        Ok(None)
    }

    /// Whatever is still held back (e.g. a trailing incomplete character) once generation ends.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let prefix = self.tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = self.tok.decode(&self.ids[self.prefix_offset..], true)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        if full.len() > prefix.len() && full.starts_with(&prefix) {
            return Ok(Some(full[prefix.len()..].to_string()));
        }
        Ok(None)
    }
}
