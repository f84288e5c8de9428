//! Llama parity with transformers on small seeded checkpoints (tools/reference/make_llama.py):
//! logits and final hidden states for a fixed id sequence, the KV-cache paths, greedy generation,
//! the chat-prompt tokenization, the `generate` command's dump, and typed errors for bad input.
//!
//! llama_gqa: GQA, untied lm_head, odd sizes, llama3 rope scaling, transformers-4 config layout.
//! llama_tied: MHA with explicit head_dim, tied embeddings, biases, transformers-5 rope_parameters.

mod common;

use std::path::{Path, PathBuf};

use common::files::{smollm2_gguf, TempDir};
use common::{assert_close, fixtures_dir, ref_f32, Tol, F32_MODEL};
use visword::models::generate::{generate, GenerateParams, Sampling, StopReason};
use visword::models::llama::{Input, Llama, LlamaConfig, Logits};
use visword::models::tokenizer::Tokenizer;
use visword::weights::save_safetensors;
use visword::{Backend, DType, Error, Tensor, Weights};

const FIXTURES: [&str; 2] = ["llama_gqa", "llama_tied"];

fn dir(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

fn reference(name: &str) -> Weights {
    Weights::open(dir(name).join("reference.safetensors")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn ref_ids(w: &Weights, name: &str) -> Vec<u32> {
    w.get(name).unwrap().as_i64().unwrap().iter().map(|&x| x as u32).collect()
}

fn load(name: &str, be: &Backend) -> Llama {
    Llama::load(&dir(name), be).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Rewrites a checkpoint's tensors (drop one, change a shape, convert dtypes).
type Rewrite<'a> = &'a dyn Fn(&Weights) -> Vec<(String, Tensor)>;

/// Copy a fixture's files into a temp dir, optionally rewriting its weights.
fn copy_fixture(name: &str, tag: &str, rewrite: Option<Rewrite>) -> TempDir {
    let t = TempDir::new(&format!("llama-{tag}"));
    for e in std::fs::read_dir(dir(name)).unwrap() {
        let p = e.unwrap().path();
        let fname = p.file_name().unwrap().to_owned();
        if fname == "model.safetensors" && rewrite.is_some() {
            continue;
        }
        std::fs::copy(&p, t.path().join(fname)).unwrap();
    }
    if let Some(f) = rewrite {
        let w = Weights::open(dir(name).join("model.safetensors")).unwrap();
        save_safetensors(&t.path().join("model.safetensors"), &f(&w), None).unwrap();
    }
    t
}

fn all_tensors(w: &Weights) -> Vec<(String, Tensor)> {
    w.names().map(|n| (n.to_string(), w.get(n).unwrap())).collect()
}

#[test]
fn logits_and_hidden_states_match_transformers() {
    let be = Backend::cpu();
    for name in FIXTURES {
        let model = load(name, &be);
        let r = reference(name);
        let ids = ref_ids(&r, "input_ids");
        let mut cache = model.new_cache(&be, ids.len()).unwrap();
        let out = model.forward(&be, Input::Ids(&ids), &mut cache, Logits::All, true).unwrap();
        let (want, shape) = ref_f32(&r, "logits");
        let logits = out.logits.unwrap();
        assert_eq!(logits.shape(), shape.as_slice());
        assert_close(&format!("{name} logits"), &be.to_vec_f32(&logits).unwrap(), &want, F32_MODEL);
        let (want, shape) = ref_f32(&r, "last_hidden_state");
        let hidden = out.hidden.unwrap();
        assert_eq!(hidden.shape(), shape.as_slice());
        assert_close(&format!("{name} last_hidden_state"), &be.to_vec_f32(&hidden).unwrap(), &want, F32_MODEL);
        assert_eq!(cache.len(), ids.len());
    }
}

#[test]
fn config_layouts_are_understood() {
    let gqa = LlamaConfig::from_dir(&dir("llama_gqa")).unwrap();
    assert_eq!((gqa.num_attention_heads, gqa.num_key_value_heads, gqa.head_dim), (6, 2, 12));
    assert!(matches!(gqa.rope_scaling, visword::models::llama::RopeScaling::Llama3 { .. }));
    assert!(!gqa.tie_word_embeddings);
    // config.json says 2; generation_config.json says [2, 0].
    assert_eq!(gqa.eos_token_ids, vec![2, 0]);
    let tied = LlamaConfig::from_dir(&dir("llama_tied")).unwrap();
    assert_eq!((tied.num_attention_heads, tied.num_key_value_heads, tied.head_dim, tied.hidden_size), (4, 4, 16, 48));
    assert_eq!(tied.rope_scaling, visword::models::llama::RopeScaling::Linear { factor: 2.0 });
    assert_eq!(tied.rope_theta, 500.0);
    assert!(tied.tie_word_embeddings && tied.attention_bias && tied.mlp_bias);
}

/// Prefill a few tokens, then a chunk, then one token at a time: every row of logits must equal
/// the single full forward's (same positions, same cache contents).
#[test]
fn incremental_decoding_equals_full_forward() {
    let be = Backend::cpu();
    for name in FIXTURES {
        let model = load(name, &be);
        let r = reference(name);
        let ids = ref_ids(&r, "input_ids");
        let (want, _) = ref_f32(&r, "logits");
        let vocab = model.config.vocab_size;
        let mut cache = model.new_cache(&be, ids.len()).unwrap();
        let mut got: Vec<f32> = Vec::new();
        let out = model.forward(&be, Input::Ids(&ids[..6]), &mut cache, Logits::All, false).unwrap();
        got.extend(be.to_vec_f32(&out.logits.unwrap()).unwrap());
        let out = model.forward(&be, Input::Ids(&ids[6..11]), &mut cache, Logits::All, false).unwrap();
        got.extend(be.to_vec_f32(&out.logits.unwrap()).unwrap());
        for i in 11..ids.len() {
            let out = model.forward(&be, Input::Ids(&ids[i..i + 1]), &mut cache, Logits::Last, false).unwrap();
            let l = out.logits.unwrap();
            assert_eq!(l.shape(), &[1, vocab]);
            got.extend(be.to_vec_f32(&l).unwrap());
        }
        assert_eq!(cache.len(), ids.len());
        assert_close(&format!("{name} incremental logits"), &got, &want, F32_MODEL);

        // Logits::Last of a multi-token prefill is the last row.
        let mut cache = model.new_cache(&be, ids.len()).unwrap();
        let out = model.forward(&be, Input::Ids(&ids), &mut cache, Logits::Last, false).unwrap();
        assert_close(&format!("{name} last-row logits"), &be.to_vec_f32(&out.logits.unwrap()).unwrap(), &want[(ids.len() - 1) * vocab..], F32_MODEL);

        // A truncated cache replays the same positions.
        cache.truncate(10);
        let out = model.forward(&be, Input::Ids(&ids[10..]), &mut cache, Logits::All, false).unwrap();
        assert_close(&format!("{name} logits after truncate"), &be.to_vec_f32(&out.logits.unwrap()).unwrap(), &want[10 * vocab..], F32_MODEL);
    }
}

#[test]
fn prefill_from_embeddings_equals_prefill_from_ids() {
    let be = Backend::cpu();
    for name in FIXTURES {
        let model = load(name, &be);
        let ids = ref_ids(&reference(name), "input_ids");
        let mut c1 = model.new_cache(&be, ids.len()).unwrap();
        let a = model.forward(&be, Input::Ids(&ids), &mut c1, Logits::All, true).unwrap();
        let emb = model.embed(&be, &ids).unwrap();
        assert_eq!(emb.shape(), &[ids.len(), model.config.hidden_size]);
        let mut c2 = model.new_cache(&be, ids.len()).unwrap();
        let b = model.forward(&be, Input::Embeds(&emb), &mut c2, Logits::All, true).unwrap();
        let exact = Tol { atol: 0.0, rtol: 0.0 };
        assert_close(&format!("{name} logits from embeds"), &be.to_vec_f32(&b.logits.unwrap()).unwrap(), &be.to_vec_f32(&a.logits.unwrap()).unwrap(), exact);
        assert_close(&format!("{name} hidden from embeds"), &be.to_vec_f32(&b.hidden.unwrap()).unwrap(), &be.to_vec_f32(&a.hidden.unwrap()).unwrap(), exact);
    }
}

fn greedy(max_new_tokens: usize, stop_tokens: Vec<u32>) -> GenerateParams {
    GenerateParams { max_new_tokens, sampling: Sampling::Greedy, seed: 0, stop_tokens }
}

#[test]
fn greedy_generation_matches_transformers() {
    let be = Backend::cpu();
    for name in FIXTURES {
        let model = load(name, &be);
        let r = reference(name);
        let prompt = ref_ids(&r, "prompt_ids");
        let want = ref_ids(&r, "generated_ids");
        let mut cache = model.new_cache(&be, prompt.len() + 12).unwrap();
        let mut streamed = Vec::new();
        let params = greedy(12, model.config.eos_token_ids.clone());
        let g = generate(&model, &be, Input::Ids(&prompt), &mut cache, &params, &mut |t| {
            streamed.push(t);
            Ok(())
        })
        .unwrap();
        assert_eq!(g.tokens, want, "{name}: greedy ids");
        assert_eq!(streamed, want, "{name}: streamed ids");
        assert_eq!(g.prompt_tokens, prompt.len());
        if want.len() == 12 && !params.stop_tokens.contains(&want[11]) {
            assert_eq!(g.stop, StopReason::MaxNewTokens);
        }
    }
}

#[test]
fn stop_tokens_and_full_context_end_generation() {
    let be = Backend::cpu();
    let model = load("llama_gqa", &be);
    let r = reference("llama_gqa");
    let prompt = ref_ids(&r, "prompt_ids");
    let want = ref_ids(&r, "generated_ids");
    // The first occurrence of the 5th generated token stops generation, and is included.
    let stop = want[4];
    let first = want.iter().position(|&t| t == stop).unwrap();
    let mut cache = model.new_cache(&be, prompt.len() + 12).unwrap();
    let g = generate(&model, &be, Input::Ids(&prompt), &mut cache, &greedy(12, vec![stop]), &mut |_| Ok(())).unwrap();
    assert_eq!(g.tokens, want[..=first].to_vec());
    assert_eq!(g.stop, StopReason::StopToken(stop));
    // Room for 3 more tokens in the cache: the 4th new token needs no cache slot, then it stops.
    let mut cache = model.new_cache(&be, prompt.len() + 3).unwrap();
    let g = generate(&model, &be, Input::Ids(&prompt), &mut cache, &greedy(12, vec![]), &mut |_| Ok(())).unwrap();
    assert_eq!(g.tokens, want[..4].to_vec());
    assert_eq!(g.stop, StopReason::ContextFull);
    // max_new_tokens 0: prefill only.
    let mut cache = model.new_cache(&be, prompt.len()).unwrap();
    let g = generate(&model, &be, Input::Ids(&prompt), &mut cache, &greedy(0, vec![]), &mut |_| Ok(())).unwrap();
    assert!(g.tokens.is_empty());
}

#[test]
fn seeded_sampling_is_reproducible() {
    let be = Backend::cpu();
    let model = load("llama_tied", &be);
    let prompt = ref_ids(&reference("llama_tied"), "prompt_ids");
    let run = |seed: u64| {
        let mut cache = model.new_cache(&be, prompt.len() + 16).unwrap();
        let params = GenerateParams { max_new_tokens: 16, sampling: Sampling::top_p(1.5, 0.95).unwrap(), seed, stop_tokens: vec![] };
        generate(&model, &be, Input::Ids(&prompt), &mut cache, &params, &mut |_| Ok(())).unwrap().tokens
    };
    let a = run(42);
    assert_eq!(a, run(42));
    assert_eq!(a.len(), 16);
    assert!(a.iter().all(|&t| (t as usize) < model.config.vocab_size));
    assert_ne!(a, run(43), "different seeds should give different samples at temperature 1.5");
}

#[test]
fn chat_prompt_tokenizes_as_transformers() {
    let r = reference("llama_gqa");
    let tok = Tokenizer::from_dir(&dir("llama_gqa")).unwrap();
    let want_text = String::from_utf8(r.get("chat_prompt_text").unwrap().raw_bytes().unwrap().to_vec()).unwrap();
    let msgs = [visword::models::chat_template::ChatMessage::new("user", "What is the capital of France?")];
    let text = tok.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(text, want_text);
    assert_eq!(tok.encode(&text, false).unwrap(), ref_ids(&r, "prompt_ids"));
    assert_eq!(tok.eos_token_id(), Some(2));
}

#[test]
fn streaming_decode_handles_split_characters() {
    let tok = Tokenizer::from_dir(&dir("llama_gqa")).unwrap();
    let text = "Größe ✓ 日本語 naïve café, then <|im_end|> plain";
    let ids = tok.encode(text, false).unwrap();
    // Byte-level BPE with a 272-entry vocabulary: most non-ASCII characters span several tokens.
    assert!(ids.len() > text.chars().count() / 2);
    let mut s = tok.stream();
    let mut out = String::new();
    for &id in &ids {
        if let Some(p) = s.push(id).unwrap() {
            assert!(!p.contains('\u{FFFD}'), "piece {p:?} has a replacement character");
            out.push_str(&p);
        }
    }
    if let Some(p) = s.finish().unwrap() {
        out.push_str(&p);
    }
    assert_eq!(out, tok.decode(&ids, true).unwrap());
    assert_eq!(out, "Größe ✓ 日本語 naïve café, then  plain");
}

#[test]
fn half_precision_weights_load_and_agree() {
    let be = Backend::cpu();
    let r = reference("llama_gqa");
    let ids = ref_ids(&r, "input_ids");
    let (want, _) = ref_f32(&r, "logits");
    // Rounding every weight to 16 bits moves these O(10) logits by a few hundredths.
    for (dtype, tol) in [(DType::F16, Tol { atol: 2e-2, rtol: 1e-2 }), (DType::BF16, Tol { atol: 0.15, rtol: 5e-2 })] {
        let convert = move |w: &Weights| -> Vec<(String, Tensor)> {
            all_tensors(w).into_iter().map(|(n, t)| (n, t.to_dtype(dtype).unwrap())).collect()
        };
        let t = copy_fixture("llama_gqa", &format!("{dtype}"), Some(&convert));
        let model = Llama::load(t.path(), &be).unwrap();
        let mut cache = model.new_cache(&be, ids.len()).unwrap();
        let out = model.forward(&be, Input::Ids(&ids), &mut cache, Logits::All, false).unwrap();
        assert_close(&format!("llama_gqa {dtype} logits"), &be.to_vec_f32(&out.logits.unwrap()).unwrap(), &want, tol);
    }
}

#[test]
fn generate_command_dumps_logits_and_ids() {
    use visword::cli::generate::{run, Args};
    let r = reference("llama_gqa");
    let t = TempDir::new("llama-cli");
    let args = |dump: &Path| Args {
        model: dir("llama_gqa"),
        prompt: None,
        system: None,
        max_new_tokens: 12,
        greedy: true,
        temperature: None,
        top_p: None,
        seed: None,
        no_chat_template: false,
        input_ids: None,
        dump: Some(dump.to_path_buf()),
        backend: "cpu".into(),
        ignore_eos: false,
    };
    // --input-ids: logits over the ids, greedy ids after them.
    let ids = ref_ids(&r, "input_ids");
    let path = t.path().join("ids.safetensors");
    run(&Args { input_ids: Some(ids.clone()), max_new_tokens: 3, ..args(&path) }).unwrap();
    let d = Weights::open(&path).unwrap();
    let (want, shape) = ref_f32(&r, "logits");
    let (got, got_shape) = ref_f32(&d, "logits");
    assert_eq!(got_shape, shape);
    assert_close("cli logits", &got, &want, F32_MODEL);
    assert_eq!(ref_ids(&d, "input_ids"), ids);
    assert_eq!(d.get("generated_ids").unwrap().dtype(), DType::I64);
    assert_eq!(ref_ids(&d, "generated_ids").len(), 3);

    // --prompt through the chat template: the same prompt ids and greedy ids as transformers.
    let path = t.path().join("prompt.safetensors");
    run(&Args { prompt: Some("What is the capital of France?".into()), ..args(&path) }).unwrap();
    let d = Weights::open(&path).unwrap();
    assert_eq!(ref_ids(&d, "input_ids"), ref_ids(&r, "prompt_ids"));
    assert_eq!(ref_ids(&d, "generated_ids"), ref_ids(&r, "generated_ids"));

    // Bad arguments are typed errors and leave no output behind.
    let path = t.path().join("bad.safetensors");
    for bad in [
        Args { prompt: Some(String::new()), ..args(&path) },
        Args { prompt: None, ..args(&path) },
        Args { input_ids: Some(vec![1, 272]), ..args(&path) },
        Args { input_ids: Some(vec![1; 161]), ..args(&path) },
        Args { backend: "tpu".into(), prompt: Some("hi".into()), ..args(&path) },
    ] {
        match run(&bad) {
            Err(Error::InvalidArgument { .. }) => {}
            other => panic!("{bad:?}: expected InvalidArgument, got {other:?}"),
        }
        assert!(!path.exists());
    }
}

#[test]
fn bad_model_directories_give_typed_errors() {
    let be = Backend::cpu();
    let missing = fixtures_dir().join("no_such_llama");
    assert!(matches!(Llama::load(&missing, &be), Err(Error::Config { .. })), "missing directory");

    let t = copy_fixture("llama_tied", "noconfig", None);
    std::fs::remove_file(t.path().join("config.json")).unwrap();
    match Llama::load(t.path(), &be) {
        Err(Error::Config { path, .. }) => assert!(path.ends_with("config.json"), "{path:?}"),
        other => panic!("missing config.json: {:?}", other.err()),
    }

    let t = copy_fixture("llama_tied", "badjson", None);
    std::fs::write(t.path().join("config.json"), "{\"hidden_size\": 48, ").unwrap();
    match Llama::load(t.path(), &be) {
        Err(Error::Config { path, msg }) => assert!(path.ends_with("config.json") && msg.contains("JSON"), "{path:?}: {msg}"),
        other => panic!("corrupt config.json: {:?}", other.err()),
    }

    let drop_one = |w: &Weights| -> Vec<(String, Tensor)> {
        all_tensors(w).into_iter().filter(|(n, _)| n != "model.layers.1.mlp.up_proj.weight").collect()
    };
    let t = copy_fixture("llama_tied", "missing", Some(&drop_one));
    match Llama::load(t.path(), &be) {
        Err(Error::MissingTensor { name, .. }) => assert_eq!(name, "model.layers.1.mlp.up_proj.weight"),
        other => panic!("missing tensor: {:?}", other.err()),
    }

    let reshape_one = |w: &Weights| -> Vec<(String, Tensor)> {
        all_tensors(w)
            .into_iter()
            .map(|(n, t)| if n == "model.layers.0.self_attn.k_proj.weight" { (n, t.reshape(&[32, 96]).unwrap()) } else { (n, t) })
            .collect()
    };
    let t = copy_fixture("llama_tied", "shape", Some(&reshape_one));
    match Llama::load(t.path(), &be) {
        Err(Error::TensorShape { name, expected, got }) => {
            assert_eq!(name, "model.layers.0.self_attn.k_proj.weight");
            assert_eq!((expected, got), (vec![64, 48], vec![32, 96]));
        }
        other => panic!("wrong-shape tensor: {:?}", other.err()),
    }
}

#[test]
fn bad_inputs_give_typed_errors() {
    let be = Backend::cpu();
    let model = load("llama_gqa", &be);
    let max = model.config.max_position_embeddings;
    let is_arg = |r: visword::Result<visword::models::llama::Output>| matches!(r, Err(Error::InvalidArgument { .. }));
    let mut cache = model.new_cache(&be, max).unwrap();
    let vocab = model.config.vocab_size as u32;
    assert!(is_arg(model.forward(&be, Input::Ids(&[1, vocab, 2]), &mut cache, Logits::Last, false)), "id = vocab");
    assert!(is_arg(model.forward(&be, Input::Ids(&[u32::MAX]), &mut cache, Logits::Last, false)), "huge id");
    assert!(is_arg(model.forward(&be, Input::Ids(&[]), &mut cache, Logits::Last, false)), "empty prompt");
    let long = vec![5u32; max + 1];
    assert!(is_arg(model.forward(&be, Input::Ids(&long), &mut cache, Logits::Last, false)), "prompt longer than the context");
    assert!(cache.is_empty(), "failed calls leave the cache as it was");
    assert!(matches!(model.new_cache(&be, max + 1), Err(Error::InvalidArgument { .. })));
    assert!(matches!(model.new_cache(&be, 0), Err(Error::InvalidArgument { .. })));
    let narrow = Tensor::zeros(vec![3, 71]);
    assert!(is_arg(model.forward(&be, Input::Embeds(&narrow), &mut cache, Logits::Last, false)), "embeddings of the wrong width");
    let empty = Tensor::zeros(vec![0, 72]);
    assert!(is_arg(model.forward(&be, Input::Embeds(&empty), &mut cache, Logits::Last, false)), "no embeddings");
    // Filling the cache exactly works; one more token does not.
    let mut small = model.new_cache(&be, 4).unwrap();
    model.forward(&be, Input::Ids(&[1, 2, 3]), &mut small, Logits::None, false).unwrap();
    model.forward(&be, Input::Ids(&[4]), &mut small, Logits::Last, false).unwrap();
    assert!(is_arg(model.forward(&be, Input::Ids(&[5]), &mut small, Logits::Last, false)), "past a full cache");
    assert!(matches!(model.embed(&be, &[vocab - 1, vocab]), Err(Error::InvalidArgument { .. })));
}

/// SmolLM2-135M-Instruct converted from its GGUF: the chat prompt tokenizes as in transformers,
/// logits match transformers on the same converted weights (tests/fixtures/smollm2), and greedy
/// decoding answers the question.
#[test]
fn smollm2_answers_like_transformers() {
    let Some(gguf) = smollm2_gguf() else { return };
    let t = TempDir::new("llama-smollm2");
    let out = t.path().join("hf");
    visword::gguf::convert::convert_llama(&gguf, &out, DType::F32).unwrap();
    let be = Backend::cpu();
    let model = Llama::load(&out, &be).unwrap();
    let tok = Tokenizer::from_dir(&out).unwrap();
    let r = Weights::open(fixtures_dir().join("smollm2").join("reference.safetensors")).unwrap();

    let msgs = [visword::models::chat_template::ChatMessage::new("user", "What is the capital of France?")];
    let ids = tok.encode(&tok.apply_chat_template(&msgs, true).unwrap(), false).unwrap();
    assert_eq!(ids, ref_ids(&r, "input_ids"));

    let mut cache = model.new_cache(&be, ids.len() + 24).unwrap();
    let out = model.forward(&be, Input::Ids(&ids), &mut cache, Logits::All, false).unwrap();
    let logits = be.to_vec_f32(&out.logits.unwrap()).unwrap();
    let vocab = model.config.vocab_size;
    let rows: Vec<f32> = r.get("logits_rows").unwrap().as_i64().unwrap().iter().flat_map(|&i| logits[i as usize * vocab..][..vocab].to_vec()).collect();
    let (want, _) = ref_f32(&r, "logits");
    assert_close("smollm2 logits", &rows, &want, F32_MODEL);

    cache.clear();
    let mut stop = model.config.eos_token_ids.clone();
    stop.extend(tok.eos_token_id());
    let params = greedy(24, stop);
    let g = generate(&model, &be, Input::Ids(&ids), &mut cache, &params, &mut |_| Ok(())).unwrap();
    assert_eq!(g.tokens, ref_ids(&r, "generated_ids"));
    let answer = tok.decode(&g.tokens, true).unwrap();
    assert_eq!(answer, "The capital of France is Paris.");
    eprintln!("smollm2: {answer:?}; prefill {:.0} tok/s, decode {:.1} tok/s", g.prefill_tokens_per_sec(), g.decode_tokens_per_sec());
}
