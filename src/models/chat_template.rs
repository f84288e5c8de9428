//! Chat templates: the Jinja template a model ships, rendered the way transformers'
//! `apply_chat_template(tokenize=False)` renders it.
//!
//! transformers compiles templates in a sandboxed Jinja2 environment with `trim_blocks` and
//! `lstrip_blocks` on, the loop-controls extension (`break`/`continue`), a single trailing newline
//! dropped (Jinja2's default), and adds `raise_exception`, `strftime_now` and a `tojson` that
//! writes Python's `json.dumps` (no HTML escaping, `", "` / `": "` separators). The template sees
//! `messages`, `add_generation_prompt`, `tools`/`documents` (None unless given) and the tokenizer's
//! named special tokens (`bos_token`, `eos_token`, ...). minijinja provides the engine;
//! minijinja-contrib's pycompat adds the Python string/dict methods templates call
//! (`.strip()`, `.startswith()`, `.items()`, ...). Printed values follow Python's `str()`
//! (`True`, `None`, `['a']`), and `{% generation %}` blocks (assistant-mask markers) render their
//! body, as they do when transformers is not collecting a mask.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind, Output, State};

use crate::error::{Error, Result};

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Named special tokens (`bos_token` → `<s>`), visible to the template as variables.
    special_tokens: BTreeMap<String, String>,
}

const NAME: &str = "chat_template";

fn tmpl_err(e: minijinja::Error) -> Error {
    // raise_exception's message is the error detail; keep it verbatim and add where it happened.
    let msg = match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(d)) => d.to_string(),
        _ => e.to_string(),
    };
    let at = e.line().map(|l| format!(" (template line {l})")).unwrap_or_default();
    Error::Template { msg: format!("{msg}{at}") }
}

impl ChatTemplate {
    /// Compile `source`; `special_tokens` are (name, text) pairs such as ("bos_token", "<s>").
    pub fn new(source: &str, special_tokens: impl IntoIterator<Item = (String, String)>) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_str_formatter);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> std::result::Result<String, minijinja::Error> {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            Ok(strftime(&fmt, now))
        });
        env.add_filter("tojson", tojson_filter);
        env.add_template_owned(NAME, strip_generation_tags(source)).map_err(tmpl_err)?;
        Ok(ChatTemplate { env, special_tokens: special_tokens.into_iter().collect() })
    }

    /// Render a conversation of plain role/content messages.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_iter([("role", Value::from(m.role.as_str())), ("content", Value::from(m.content.as_str()))]))
            .collect();
        self.render_with(Value::from(msgs), add_generation_prompt, &[])
    }

    /// Render arbitrary `messages` (a list of maps) with extra template variables (`tools`,
    /// `date_string`, ...), which override the special tokens, as transformers' kwargs do.
    pub fn render_with(&self, messages: Value, add_generation_prompt: bool, extra: &[(&str, Value)]) -> Result<String> {
        if messages.len() == Some(0) {
            return Err(Error::arg("messages", "cannot apply a chat template to an empty conversation"));
        }
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in &self.special_tokens {
            ctx.insert(k.clone(), Value::from(v.as_str()));
        }
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        for (k, v) in extra {
            ctx.insert((*k).to_string(), v.clone());
        }
        ctx.insert("messages".into(), messages);
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        let tmpl = self.env.get_template(NAME).map_err(tmpl_err)?;
        tmpl.render(Value::from(ctx)).map_err(tmpl_err)
    }
}

/// `{% generation %}` / `{% endgeneration %}` → `{% if true %}` / `{% endif %}`, keeping the
/// whitespace-control markers, so the body renders as in transformers without mask tracking.
fn strip_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => write!(out, "{{%{lead} if true {trail}%}}").unwrap_or(()),
            "endgeneration" => write!(out, "{{%{lead} endif {trail}%}}").unwrap_or(()),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Print values as Python's `str()` does (Jinja2 output): True/False/None, floats as repr,
/// containers as their repr. Strings and everything else print as minijinja prints them.
fn python_str_formatter(out: &mut Output, state: &State, value: &Value) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Bool | ValueKind::None | ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            python_repr(value, &mut s)?;
            out.write_str(&s).map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "formatter"))
        }
        ValueKind::Number if !value.is_integer() => {
            let f = f64::try_from(value.clone())?;
            out.write_str(&python_float(f)).map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "formatter"))
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn python_repr(v: &Value, out: &mut String) -> std::result::Result<(), minijinja::Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => out.push_str(&python_float(f64::try_from(v.clone())?)),
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            let q = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
            out.push(q);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == q => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        let _ = write!(out, "\\x{:02x}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            out.push(q);
        }
        ValueKind::Map => {
            out.push('{');
            for (i, k) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(&k, out)?;
                out.push_str(": ");
                python_repr(&v.get_item(&k)?, out)?;
            }
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, x) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(&x, out)?;
            }
            out.push(']');
        }
        _ => out.push_str(&v.to_string()),
    }
    Ok(())
}

/// Python's `repr(float)`: shortest round-trip digits, positional for 1e-4 ≤ |x| < 1e16.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sci = format!("{f:e}"); // shortest digits: "-1.2345e-7"
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if f == 0.0 || (-4..16).contains(&exp) {
        let s = format!("{f}");
        return if s.contains('.') { s } else { format!("{s}.0") };
    }
    format!("{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, returned as a plain (unescaped) string.
fn tojson_filter(value: &Value, ensure_ascii: Option<bool>, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let ensure_ascii = match kwargs.get::<Option<bool>>("ensure_ascii")? {
        Some(b) => b,
        None => ensure_ascii.unwrap_or(false),
    };
    let indent: Option<String> = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::Number => Some(" ".repeat(i64::try_from(v)?.max(0) as usize)),
        Some(v) => Some(v.as_str().unwrap_or_default().to_string()),
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair")),
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let opts = JsonOpts { ensure_ascii, indent, item_sep, key_sep, sort_keys };
    let mut out = String::new();
    write_json(value, &opts, 0, &mut out)?;
    Ok(out)
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(v: &Value, o: &JsonOpts, depth: usize, out: &mut String) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => {
            let f = f64::try_from(v.clone())?;
            out.push_str(&match f {
                f if f.is_nan() => "NaN".to_string(),
                f if f.is_infinite() => if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string(),
                f => python_float(f),
            });
        }
        ValueKind::String => json_string(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if o.sort_keys {
                keys.sort_by_key(|a| a.to_string());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                // json.dumps turns non-string keys into strings.
                let ks = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => {
                        let mut s = String::new();
                        write_json(k, o, 0, &mut s)?;
                        s.trim_matches('"').to_string()
                    }
                };
                json_string(&ks, o.ensure_ascii, out);
                out.push_str(&o.key_sep);
                write_json(&v.get_item(k)?, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                write_json(x, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => {
            return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {} is not JSON serializable", v.kind())));
        }
    }
    Ok(())
}

/// A C `strftime` for a UTC timestamp (the directives templates use: %d %m %Y %y %b %B %a %A
/// %H %I %M %S %p %j %e, `%-d`-style unpadded forms, %%).
pub fn strftime(fmt: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    let days = unix_secs.div_euclid(86400);
    let secs = unix_secs.rem_euclid(86400);
    let (hour, minute, second) = (secs / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(month - 1) as usize] + day + if leap && month > 2 { 1 } else { 0 };
    let wday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.peek() == Some(&'-');
        if unpadded {
            chars.next();
        }
        let num = |out: &mut String, v: i64, width: usize| {
            if unpadded {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:0width$}");
            }
        };
        match chars.next() {
            Some('d') => num(&mut out, day, 2),
            Some('e') => {
                let _ = write!(out, "{day:>2}");
            }
            Some('m') => num(&mut out, month, 2),
            Some('Y') => {
                let _ = write!(out, "{year}");
            }
            Some('y') => num(&mut out, year.rem_euclid(100), 2),
            Some('b') | Some('h') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('a') => out.push_str(&DAYS[wday][..3]),
            Some('A') => out.push_str(DAYS[wday]),
            Some('H') => num(&mut out, hour, 2),
            Some('I') => num(&mut out, hour12, 2),
            Some('M') => num(&mut out, minute, 2),
            Some('S') => num(&mut out, second, 2),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('j') => num(&mut out, yday, 3),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of a leap year.
        let t = 1722085509 - 86400;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(strftime("%A %B %-d, %H:%M:%S %p %j %y %%", t), "Friday July 26, 13:05:09 PM 208 24 %");
        assert_eq!(strftime("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        assert_eq!(strftime("%Y-%m-%d", 951782400), "2000-02-29");
    }

    #[test]
    fn python_floats() {
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(0.1), "0.1");
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(0.0001), "0.0001");
        assert_eq!(python_float(1e16), "1e+16");
        assert_eq!(python_float(-2.5e20), "-2.5e+20");
        assert_eq!(python_float(123456.75), "123456.75");
    }

    #[test]
    fn generation_tags_become_plain_blocks() {
        assert_eq!(strip_generation_tags("a{%- generation -%}b{% endgeneration %}c{{ x }}"), "a{%- if true -%}b{% endif %}c{{ x }}");
    }
}
