//! A Hugging Face `tokenizer.json` (and its config files) rebuilt from GGUF tokenizer metadata.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE). The vocabulary is the token list
//! in id order, the merges come from `tokenizer.ggml.merges`, control tokens (token type 3) become
//! special added tokens and user-defined ones (type 4) plain added tokens, as llama.cpp treats them.
//!
//! The pre-tokenizer follows `tokenizer.ggml.pre`, which names llama.cpp's list of split regexes
//! for the vocabulary. Each regex becomes an isolated `Split` (llama.cpp applies them in turn,
//! keeping unmatched text as its own piece, which is what `Split` with `Isolated` does), followed
//! by byte-level mapping without its own regex. Only the families below are known; any other
//! value is an error rather than a tokenizer that silently splits text differently.

use std::collections::HashSet;

use serde_json::{json, Map, Value as Json};

use super::reader::GgufFile;
use crate::error::{Error, Result};

const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// GPT-2's split regex, which llama.cpp uses for many byte-level vocabularies.
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// llama.cpp's split regexes for a `tokenizer.ggml.pre` value.
fn pre_tokenizer_splits(pre: &str) -> Option<Vec<&'static str>> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => vec![GPT2_SPLIT],
        // SmolLM's family: every digit on its own first, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => vec![r"\p{N}", GPT2_SPLIT],
        _ => return None,
    })
}

/// The files that describe the tokenizer of an HF model directory.
pub struct TokenizerFiles {
    pub tokenizer: Json,
    pub tokenizer_config: Json,
    pub special_tokens_map: Json,
    pub bos_token_id: Option<usize>,
    pub eos_token_id: Option<usize>,
    pub pad_token_id: Option<usize>,
    pub n_tokens: usize,
}

/// GPT-2's reversible byte → printable-char map: printable Latin-1 bytes stand for themselves,
/// the rest are shifted to U+0100 and up.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).unwrap_or('\u{fffd}');
            next += 1;
            c
        };
    }
    table
}

/// Build `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`.
pub fn build(g: &GgufFile, model_max_length: usize) -> Result<TokenizerFiles> {
    let model = g.req_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(g.err(format!(
            "tokenizer.ggml.model `{model}` is not supported for import (only byte-level BPE, `gpt2`)"
        )));
    }
    let pre = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let splits = pre_tokenizer_splits(pre).ok_or_else(|| {
        g.err(format!("tokenizer.ggml.pre `{pre}` is not a known pre-tokenizer (known: gpt2 family, smollm family)"))
    })?;

    let tokens = g.req_str_array("tokenizer.ggml.tokens")?;
    let types = g.opt_int_array("tokenizer.ggml.token_type")?.unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(g.err(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let merges = g.req_str_array("tokenizer.ggml.merges")?;
    let id_key = |key: &str| -> Result<Option<usize>> {
        let id = g.opt_usize(key)?;
        match id {
            Some(i) if i >= tokens.len() => Err(g.err(format!("metadata `{key}` = {i} is not a token id (vocab of {})", tokens.len()))),
            _ => Ok(id),
        }
    };
    let bos = id_key("tokenizer.ggml.bos_token_id")?;
    let eos = id_key("tokenizer.ggml.eos_token_id")?;
    let unk = id_key("tokenizer.ggml.unknown_token_id")?;
    let pad = id_key("tokenizer.ggml.padding_token_id")?;
    let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    // Tokens are normally stored already spelled in the byte alphabet; one that is not (raw
    // UTF-8) is respelled through it so the byte-level model can still reach it.
    let table = byte_to_char();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::new();
    let mut spelled: Vec<String> = Vec::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        let s = if in_alphabet(t) { t.to_string() } else { t.bytes().map(|b| table[b as usize]).collect() };
        // A repeated spelling keeps its first id; the later id stays unreachable, as in llama.cpp.
        if !vocab.contains_key(&s) {
            vocab.insert(s.clone(), json!(id));
        }
        spelled.push(s);
    }

    let merges: Vec<Json> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok(json!([a, b])),
            _ => Err(g.err(format!("tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by one space"))),
        })
        .collect::<Result<_>>()?;

    // Added tokens: control tokens that are spelled in the byte alphabet (one that is not is a
    // mislabel in some converted files), the bos/eos/unk/pad tokens, and user-defined tokens.
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(1);
        let named = [bos, eos, unk, pad].contains(&Some(id));
        let special = (ty == TOKEN_TYPE_CONTROL || named) && in_alphabet(t);
        let user = ty == TOKEN_TYPE_USER_DEFINED && vocab.contains_key(*t);
        if special || user {
            added.push(json!({
                "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": special,
            }));
        }
    }

    let mut pre_tokenizers: Vec<Json> = splits
        .iter()
        .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
        .collect();
    pre_tokenizers.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}));

    let name = |id: Option<usize>| id.map(|i| tokens[i].to_string());
    let post_processor = template_processing(bos.filter(|_| add_bos).map(|i| (tokens[i], i)), eos.filter(|_| add_eos).map(|i| (tokens[i], i)));

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre_tokenizers},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });

    // Load it once here so a file the tokenizers library would reject fails the conversion.
    let text = tokenizer.to_string();
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| Error::Tokenizer { msg: format!("the tokenizer.json built from {} does not load: {e}", g.path().display()) })?;

    let mut config = Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    config.insert("model_max_length".into(), json!(model_max_length));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    let mut special_map = Map::new();
    for (key, id) in [("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)] {
        config.insert(key.into(), json!(name(id)));
        if let Some(t) = name(id) {
            special_map.insert(key.into(), json!(t));
        }
    }
    if let Some(t) = g.opt_str("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(t));
    }
    Ok(TokenizerFiles {
        tokenizer,
        tokenizer_config: Json::Object(config),
        special_tokens_map: Json::Object(special_map),
        bos_token_id: bos,
        eos_token_id: eos,
        pad_token_id: pad,
        n_tokens: tokens.len(),
    })
}

/// A post-processor adding the bos / eos tokens the GGUF asks for (none when it asks for none).
fn template_processing(bos: Option<(&str, usize)>, eos: Option<(&str, usize)>) -> Json {
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let wrap = |s: &str, type_id: u32| {
        let mut v = Vec::new();
        if let Some((t, _)) = bos {
            v.push(special(t, type_id));
        }
        v.push(seq(s, type_id));
        if let Some((t, _)) = eos {
            v.push(special(t, type_id));
        }
        v
    };
    let mut pair = wrap("A", 0);
    pair.extend(wrap("B", 1));
    let mut specials = Map::new();
    for (t, id) in [bos, eos].into_iter().flatten() {
        specials.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": wrap("A", 0), "pair": pair, "special_tokens": specials})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let t = byte_to_char();
        let mut seen: Vec<char> = t.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(t[b' ' as usize], '\u{120}'); // 'Ġ'
        assert_eq!(t[b'\n' as usize], '\u{10a}'); // 'Ċ'
        assert_eq!(t[b'A' as usize], 'A');
    }

    #[test]
    fn unknown_pre_tokenizer_is_refused() {
        assert!(pre_tokenizer_splits("smollm").unwrap().len() == 2);
        assert!(pre_tokenizer_splits("some-new-model").is_none());
    }
}
