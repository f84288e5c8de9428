//! Chat templates rendered as transformers' `apply_chat_template(tokenize=False)` renders them:
//! tests/fixtures/llama_chat_templates/cases.json holds templates (SmolLM2's ChatML with its
//! default system turn, Llama 3 and a Llama 3.1-style one, whitespace-control-free blocks with
//! Python string methods and loop controls, raise_exception, `{% generation %}`), the inputs, and
//! the string or error transformers produced (tools/reference/make_llama.py).

mod common;

use std::path::PathBuf;

use common::fixtures_dir;
use minijinja::Value;
use visword::models::chat_template::{ChatMessage, ChatTemplate};
use visword::models::tokenizer::Tokenizer;
use visword::Error;

fn cases() -> Value {
    let path = fixtures_dir().join("llama_chat_templates").join("cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Deserialised straight into template values, so mappings keep their order (tojson shows it).
    serde_json::from_str(&text).unwrap()
}

fn special_tokens(all: &Value) -> Vec<(String, String)> {
    let st = all.get_attr("special_tokens").unwrap();
    st.try_iter().unwrap().map(|k| (k.as_str().unwrap().to_string(), st.get_item(&k).unwrap().as_str().unwrap().to_string())).collect()
}

#[test]
fn templates_render_as_in_transformers() {
    let all = cases();
    let special = special_tokens(&all);
    let mut n = 0;
    for case in all.get_attr("cases").unwrap().try_iter().unwrap() {
        let name = case.get_attr("name").unwrap().to_string();
        let template = ChatTemplate::new(case.get_attr("template").unwrap().as_str().unwrap(), special.clone())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let kwargs = case.get_attr("kwargs").unwrap();
        let keys: Vec<String> = kwargs.try_iter().unwrap().map(|k| k.as_str().unwrap().to_string()).collect();
        let extra: Vec<(&str, Value)> = keys.iter().map(|k| (k.as_str(), kwargs.get_attr(k).unwrap())).collect();
        let agp = case.get_attr("add_generation_prompt").unwrap().is_true();
        let got = template.render_with(case.get_attr("messages").unwrap(), agp, &extra);
        let expected = case.get_attr("expected").unwrap();
        if expected.is_undefined() {
            let want = case.get_attr("error").unwrap().to_string();
            match got {
                Err(Error::Template { msg }) => assert!(msg.contains(&want), "{name}: error {msg:?} should contain {want:?}"),
                other => panic!("{name}: expected the template error {want:?}, got {other:?}"),
            }
        } else {
            let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, expected.as_str().unwrap(), "{name}");
        }
        n += 1;
    }
    assert!(n >= 12, "only {n} cases");
}

#[test]
fn smollm2_default_system_turn() {
    let all = cases();
    let src = all.get_attr("cases").unwrap().get_item(&Value::from(0)).unwrap().get_attr("template").unwrap();
    let t = ChatTemplate::new(src.as_str().unwrap(), special_tokens(&all)).unwrap();
    let out = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn strftime_now_gives_todays_date() {
    let t = ChatTemplate::new("{{ strftime_now('%Y') }}|{{ strftime_now('%d %b %Y') }}", Vec::new()).unwrap();
    let out = t.render(&[ChatMessage::new("user", "x")], false).unwrap();
    let (year, date) = out.split_once('|').unwrap();
    let year: i32 = year.parse().unwrap();
    assert!((2024..3000).contains(&year), "{out}");
    assert_eq!(date.len(), 11, "{out}");
    assert!(date.ends_with(&year.to_string()));
}

#[test]
fn template_errors_are_typed() {
    assert!(matches!(ChatTemplate::new("{% for m in messages %}", Vec::new()), Err(Error::Template { .. })));
    let t = ChatTemplate::new("{{ messages[0].content }}", Vec::new()).unwrap();
    assert!(matches!(t.render(&[], true), Err(Error::InvalidArgument { .. })), "empty conversation");
}

/// Copy the fixture tokenizer into a temp dir with the given tokenizer_config.json / jinja file.
fn tokenizer_dir(tag: &str, config: &str, jinja: Option<&str>) -> PathBuf {
    let d = std::env::temp_dir().join(format!("visword_chat_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(fixtures_dir().join("llama_gqa").join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    std::fs::write(d.join("tokenizer_config.json"), config).unwrap();
    if let Some(j) = jinja {
        std::fs::write(d.join("chat_template.jinja"), j).unwrap();
    }
    d
}

#[test]
fn template_sources_in_tokenizer_config() {
    let msgs = [ChatMessage::new("user", "Hi")];
    // A list of named templates: "default" is the chat template; AddedToken-style special tokens.
    let d = tokenizer_dir(
        "list",
        r#"{"eos_token": {"content": "<|im_end|>", "special": true},
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ eos_token }}{{ messages[0].content }}"}]}"#,
        None,
    );
    let tok = Tokenizer::from_dir(&d).unwrap();
    assert_eq!(tok.apply_chat_template(&msgs, false).unwrap(), "D<|im_end|>Hi");
    let _ = std::fs::remove_dir_all(&d);

    // chat_template.jinja wins over the config's entry, as in transformers.
    let d = tokenizer_dir("jinja", r#"{"chat_template": "config"}"#, Some("file {{ messages[0].content }}\n"));
    let tok = Tokenizer::from_dir(&d).unwrap();
    assert_eq!(tok.apply_chat_template(&msgs, false).unwrap(), "file Hi");
    let _ = std::fs::remove_dir_all(&d);

    // No template at all, and a malformed config, are typed errors.
    let d = tokenizer_dir("none", "{}", None);
    let tok = Tokenizer::from_dir(&d).unwrap();
    assert!(matches!(tok.apply_chat_template(&msgs, false), Err(Error::Template { .. })));
    let _ = std::fs::remove_dir_all(&d);
    let d = tokenizer_dir("corrupt", "{\"chat_template\": ", None);
    assert!(matches!(Tokenizer::from_dir(&d), Err(Error::Config { .. })));
    let _ = std::fs::remove_dir_all(&d);
}
