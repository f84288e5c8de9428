//! Prompt assembly (docs/svp.md §4, "Prompt assembly, exactly"): the question template filled
//! with the expression, rendered as one user turn by the chat template, split at `<image>`, the
//! two sides tokenized (BOS only at the very start). The visual tokens go between them, framed
//! by the image start/end tokens when the model has them.

use crate::error::{Error, Result};
use crate::models::chat_template::{ChatMessage, ChatTemplate};
use crate::models::tokenizer::Tokenizer;

use super::config::{EXPRESSION_PLACEHOLDER, IMAGE_PLACEHOLDER};

/// The special tokens transformers exposes to chat templates as variables.
const TEMPLATE_TOKEN_NAMES: [&str; 7] = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// The text around the image, as token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptIds {
    /// The rendered prompt text (with the `<image>` placeholder).
    pub text: String,
    /// Text before `<image>`, tokenized with the tokenizer's special tokens (the leading BOS).
    pub prefix: Vec<u32>,
    /// Text after `<image>`, tokenized without them.
    pub suffix: Vec<u32>,
}

/// Compile a segmenter's chat template with the tokenizer's named special tokens as variables.
pub fn compile_template(source: &str, tokenizer: &Tokenizer) -> Result<ChatTemplate> {
    let specials = TEMPLATE_TOKEN_NAMES
        .iter()
        .filter_map(|name| tokenizer.special_token(name).map(|t| (name.to_string(), t.to_string())));
    ChatTemplate::new(source, specials)
}

/// The user message: `question_template` with the expression in place.
pub fn user_message(question_template: &str, expression: &str) -> Result<String> {
    if expression.trim().is_empty() {
        return Err(Error::arg("expression", "is empty: give the referring expression to segment"));
    }
    if expression.contains(IMAGE_PLACEHOLDER) {
        return Err(Error::arg("expression", format!("must not contain the image placeholder `{IMAGE_PLACEHOLDER}`")));
    }
    Ok(question_template.replacen(EXPRESSION_PLACEHOLDER, expression, 1))
}

/// Render, split at `<image>` and tokenize the prompt for `expression`.
pub fn build(tokenizer: &Tokenizer, template: &ChatTemplate, question_template: &str, expression: &str) -> Result<PromptIds> {
    let message = user_message(question_template, expression)?;
    let text = template.render(&[ChatMessage::new("user", message)], true)?;
    let mut parts = text.split(IMAGE_PLACEHOLDER);
    let (Some(before), Some(after), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Error::Template {
            msg: format!("the rendered prompt must contain `{IMAGE_PLACEHOLDER}` exactly once, found {} times", text.matches(IMAGE_PLACEHOLDER).count()),
        });
    };
    let prefix = tokenizer.encode(before, true)?;
    let suffix = tokenizer.encode(after, false)?;
    Ok(PromptIds { prefix, suffix, text })
}
