//! The tokenizer of a random-weight segmenter (docs/svp.md "Random-weight models"): byte-level
//! BPE with no merges, so every byte of the text is one token. Ids: `<unk>` 0, `<s>` 1, `</s>`
//! 2, byte b at 3 + b (spelt with GPT-2's byte-to-unicode symbols), then `[SEG]`, `<im_start>`,
//! `<im_end>`. The post-processor adds `<s>` in front, as Llama's does.

use serde_json::{json, Value};

pub const UNK_ID: u32 = 0;
pub const BOS_ID: u32 = 1;
pub const EOS_ID: u32 = 2;
/// Id of byte 0; byte b is `BYTE_BASE + b`.
pub const BYTE_BASE: u32 = 3;
pub const SEG_ID: u32 = BYTE_BASE + 256;
pub const IM_START_ID: u32 = SEG_ID + 1;
pub const IM_END_ID: u32 = SEG_ID + 2;
/// Tokens in the vocabulary.
pub const VOCAB: usize = IM_END_ID as usize + 1;

/// GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for themselves, the
/// rest map to U+0100 upwards in byte order.
pub fn byte_symbol(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('\u{FFFD}')
}

fn added(id: u32, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special})
}

/// `tokenizer.json`.
pub fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), json!(UNK_ID));
    vocab.insert("<s>".into(), json!(BOS_ID));
    vocab.insert("</s>".into(), json!(EOS_ID));
    for b in 0..=255u8 {
        vocab.insert(byte_symbol(b).to_string(), json!(BYTE_BASE + b as u32));
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            added(UNK_ID, "<unk>", true),
            added(BOS_ID, "<s>", true),
            added(EOS_ID, "</s>", true),
            // As LISA adds them: ordinary added tokens, so decoding keeps them.
            added(SEG_ID, "[SEG]", false),
            added(IM_START_ID, "<im_start>", false),
            added(IM_END_ID, "<im_end>", false),
        ],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [BOS_ID], "tokens": ["<s>"]}}
        },
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": "<unk>",
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": []
        }
    })
}

/// `tokenizer_config.json`: the named special tokens (the chat template lives in the
/// segmenter's config.json).
pub fn tokenizer_config_json(model_max_length: usize) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_symbols_are_distinct_and_match_gpt2() {
        let syms: std::collections::BTreeSet<char> = (0..=255u8).map(byte_symbol).collect();
        assert_eq!(syms.len(), 256);
        assert_eq!(byte_symbol(b' '), 'Ġ');
        assert_eq!(byte_symbol(b'\n'), 'Ċ');
        assert_eq!(byte_symbol(b'a'), 'a');
        assert_eq!(byte_symbol(0xAD), 'Ń');
    }

    #[test]
    fn every_byte_is_one_token_and_bos_leads() {
        let tok = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&tokenizer_json()).unwrap()).unwrap();
        assert_eq!(tok.get_vocab_size(true), VOCAB);
        let text = "USER: <im_start>é\n[SEG]!";
        let ids = tok.encode(text, true).unwrap().get_ids().to_vec();
        let mut want = vec![BOS_ID];
        want.extend(b"USER: ".iter().map(|&b| BYTE_BASE + b as u32));
        want.push(IM_START_ID);
        want.extend("é\n".bytes().map(|b| BYTE_BASE + b as u32));
        want.extend([SEG_ID, BYTE_BASE + b'!' as u32]);
        assert_eq!(ids, want);
        assert_eq!(tok.decode(&ids[1..], false).unwrap(), text);
        assert_eq!(tok.encode(" ASSISTANT:", false).unwrap().get_ids().last(), Some(&(BYTE_BASE + b':' as u32)));
    }
}
