//! Whole models and the segmenter on every GPU backend, against the same transformers / PyTorch
//! references the CPU tests use (tests/model_*.rs, tests/segmenter_parity.rs; fixtures made by
//! tools/reference/): CLIP and DINOv2 (every hidden state, native and interpolated positions),
//! Llama (logits, hidden state, a KV-cache decode one token at a time, greedy generation), SAM
//! (the tiny checkpoint's prompt cases and the released 1024² geometry), the projectors, and the
//! referring segmenter end to end.
//!
//! Inputs are uploaded to the backend under test and outputs read back with `to_vec_f32`.
//!
//! Tolerances (`Gpu::model_tol`, atol 5e-4 / rtol 5e-3, unless a test says otherwise): the GPU
//! backends keep activations in f32 but sum in other orders (tiled GEMMs, split reductions, flash
//! attention's online softmax) and use fused multiply-adds and their own exp/erf, so each op is
//! within `op_tol` (1e-4) of the CPU, and a whole model accumulates that over its layers. The CPU
//! path holds these fixtures within `F32_MODEL` (1e-4 / 1e-3) of transformers; the GPU bound is
//! 5× that to absorb the per-op differences without hiding a wrong formula (a missing scale,
//! mask or bias moves these outputs by 1e-2 or more). Per model:
//! * CLIP, DINOv2 (2–4 layers, width ≤ 64, outputs of order 1): `model_tol`.
//! * Llama (logits of order 1–10 after 2 layers; the decode compares the same logits one token at
//!   a time): `model_tol`; greedy ids must match exactly (the fixtures' top-2 logit gaps are far
//!   above the tolerance).
//! * SAM: mask logits reach |x| ≈ 10 after the two-way transformer and the upscaler, so the rtol
//!   term dominates: `model_tol`. The 1024² geometry runs a global attention over 4096 keys, the
//!   longest reduction here: still `model_tol`.
//! * Llama with bf16 weights and (on CUDA) a bf16 KV cache, against the CPU on the same weights:
//!   5e-2 + 5e-2·|x| as SAM's below, and on CUDA the bf16 cache within 1e-2 + 1e-2·|x| of an
//!   f32 one (the test's own comment).
//! * SAM with bf16 weights, against the CPU on the same weights (no transformers reference):
//!   CUDA rounds GEMM operands to bf16 / TF32, so 5e-2 + 5e-2·|x| and the masks the same on 99%
//!   of the pixels away from the threshold (the test's own comment).
//! * Projectors (a few layers of width ≤ 128, one softmax over 36 patches): `model_tol`, though
//!   they need less.
//! * Segmenter: the label map must be identical (its generator checked that ±2e-4 on every SAM
//!   logit changes nothing; `model_tol` keeps the GPU's logits well inside that on this
//!   fixture), coverage exact to f32 rounding (host arithmetic on the label map), the visual
//!   tokens, [SEG] embedding and mask logits within `model_tol`, the same answer, and the final
//!   mask at IoU ≥ 0.99 against the reference.

use std::path::{Path, PathBuf};

use visword::models::clip::ClipVisionModel;
use visword::models::dinov2::Dinov2Model;
use visword::models::generate::{generate, GenerateParams, Sampling};
use visword::models::llama::{Input, Llama, Logits};
use visword::models::projector::{Projector, ProjectorDims, ProjectorKind, SvpConfig};
use visword::models::sam::{PointPrompt, Prompts, Sam};
use visword::models::segmenter::{SegmentOptions, Segmenter};
use visword::models::vit::{resolve_layer, VisionOutput};
use visword::preprocess::{CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD};
use visword::superpixels::Superpixels;
use visword::{Tensor, VarView, Weights};

use crate::common::backends::{gpus, Gpu};
use crate::common::{assert_close, fixture, fixtures_dir, ref_f32, Tol};

fn dir(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

fn tensor(w: &Weights, name: &str) -> Tensor {
    w.get(name).unwrap_or_else(|e| panic!("{name}: {e}")).to_f32().unwrap()
}

/// Compare a backend tensor with reference `name` of `r` (shape and values).
#[track_caller]
fn check(gpu: &Gpu, what: &str, got: &Tensor, r: &Weights, name: &str, tol: Tol) {
    let (want, shape) = ref_f32(r, name);
    assert_eq!(got.shape(), shape.as_slice(), "{} {what}: shape", gpu.backend.name());
    let got = gpu.backend.to_vec_f32(got).unwrap_or_else(|e| panic!("{} {what}: reading back: {e}", gpu.backend.name()));
    assert_close(&format!("{} {what}", gpu.backend.name()), &got, &want, tol);
}

// ---- vision encoders ---------------------------------------------------------------------------

/// Every hidden state, the last one and the pooled output of run `run`, and the feature-layer
/// path (which stops early) on the penultimate layer.
fn check_vision(gpu: &Gpu, tag: &str, forward: &dyn Fn(&Tensor, bool) -> visword::Result<VisionOutput>, feature: &dyn Fn(&Tensor, i64) -> visword::Result<Tensor>, layers: usize, r: &Weights, run: &str) {
    let be = &gpu.backend;
    let px = be.upload(&tensor(r, &format!("{run}.pixel_values"))).unwrap();
    let out = forward(&px, true).unwrap_or_else(|e| panic!("{} {tag} forward: {e}", be.name()));
    assert_eq!(out.hidden_states.len(), layers + 1);
    for (i, h) in out.hidden_states.iter().enumerate() {
        check(gpu, &format!("{tag} {run}.hidden_states.{i}"), h, r, &format!("{run}.hidden_states.{i}"), gpu.model_tol);
    }
    check(gpu, &format!("{tag} {run}.last_hidden_state"), &out.last_hidden_state, r, &format!("{run}.last_hidden_state"), gpu.model_tol);
    check(gpu, &format!("{tag} {run}.pooler_output"), &out.pooler_output, r, &format!("{run}.pooler_output"), gpu.model_tol);
    let idx = resolve_layer(-2, layers).unwrap();
    let f = feature(&px, -2).unwrap();
    check(gpu, &format!("{tag} {run} feature_layer(-2)"), &f, r, &format!("{run}.hidden_states.{idx}"), gpu.model_tol);
}

#[test]
fn clip_matches_transformers() {
    for gpu in gpus("models::clip_matches_transformers") {
        for (name, runs) in [("clip_quick", &["native"][..]), ("clip_gelu", &["native", "interp"][..])] {
            let mut model = ClipVisionModel::load(&dir(name), &gpu.backend).unwrap_or_else(|e| panic!("{name}: {e}"));
            let r = fixture(&format!("{name}/reference.safetensors"));
            for &run in runs {
                model.interpolate_pos_encoding = run == "interp";
                let be = &gpu.backend;
                check_vision(&gpu, name, &|px, h| model.forward(be, px, h), &|px, l| model.feature_layer(be, px, l), model.num_layers(), &r, run);
            }
        }
    }
}

#[test]
fn dinov2_matches_transformers() {
    for gpu in gpus("models::dinov2_matches_transformers") {
        for name in ["dinov2_small", "dinov2_swiglu"] {
            let model = Dinov2Model::load(&dir(name), &gpu.backend).unwrap_or_else(|e| panic!("{name}: {e}"));
            let r = fixture(&format!("{name}/reference.safetensors"));
            let be = &gpu.backend;
            for run in ["native", "interp"] {
                check_vision(&gpu, name, &|px, h| model.forward(be, px, h), &|px, l| model.feature_layer(be, px, l), model.num_layers(), &r, run);
            }
        }
    }
}

/// `Backend::overlap` (CUDA: the vision tower on a second stream beside SAM's encoder) gives
/// what each model gives alone, run after run, with the inputs dropped right after the call
/// (they are freed on the main stream while nothing but the overlap's join orders that after
/// the second stream's reads); a failing side part is an error and leaves the backend usable.
#[test]
fn vision_tower_beside_sam_matches_each_alone() {
    for gpu in gpus("models::vision_tower_beside_sam_matches_each_alone") {
        let be = &gpu.backend;
        let clip = ClipVisionModel::load(&dir("clip_gelu"), be).unwrap();
        let sam = Sam::load(&dir("sam_tiny"), be).unwrap();
        let rc = fixture("clip_gelu/reference.safetensors");
        let rs = fixture("sam_tiny/reference.safetensors");
        let idx = resolve_layer(-2, clip.num_layers()).unwrap();
        let sam_alone = {
            let px = be.upload(&tensor(&rs, "pixel_values")).unwrap();
            be.to_vec_f32(&sam.image_embeddings(be, &px).unwrap()).unwrap()
        };
        for run in 0..3 {
            let (features, embeddings) = {
                let cpx = be.upload(&tensor(&rc, "native.pixel_values")).unwrap();
                let spx = be.upload(&tensor(&rs, "pixel_values")).unwrap();
                let o = be.overlap(|lane| clip.feature_layer(lane, &cpx, -2), |be| sam.image_embeddings(be, &spx)).unwrap();
                assert!(o.side_ms >= 0.0);
                (o.side, o.main)
            };
            check(&gpu, &format!("run {run}: overlapped CLIP feature_layer(-2)"), &features, &rc, &format!("native.hidden_states.{idx}"), gpu.model_tol);
            let got = be.to_vec_f32(&embeddings).unwrap();
            assert_close(&format!("{} run {run}: overlapped SAM embeddings", be.name()), &got, &sam_alone, Tol { atol: 1e-5, rtol: 1e-5 });
        }
        let spx = be.upload(&tensor(&rs, "pixel_values")).unwrap();
        let failed = be.overlap(|lane| clip.feature_layer(lane, &spx, 99), |be| sam.image_embeddings(be, &spx));
        assert!(failed.is_err(), "{}: a side part that fails makes overlap fail", be.name());
        let again = be.to_vec_f32(&sam.image_embeddings(be, &spx).unwrap()).unwrap();
        assert_close(&format!("{} SAM after a failed overlap", be.name()), &again, &sam_alone, Tol { atol: 1e-5, rtol: 1e-5 });
    }
}

// ---- Llama ---------------------------------------------------------------------------------------

/// A copy of fixture model `name` (its config.json and model.safetensors) with every float
/// tensor converted to bf16, in the system temp dir (this binary also runs prebuilt on GPU
/// machines without cargo's).
fn bf16_copy(name: &str) -> crate::common::files::TempDir {
    let tmp = crate::common::files::TempDir::new_in(&std::env::temp_dir(), &format!("{name}-bf16"));
    std::fs::copy(dir(name).join("config.json"), tmp.join("config.json")).unwrap();
    let w = fixture(&format!("{name}/model.safetensors"));
    let bf16: Vec<(String, Tensor)> = w
        .names()
        .map(|n| {
            let t = w.get(n).unwrap();
            let t = if t.dtype().is_float() { t.to_dtype(visword::DType::BF16).unwrap() } else { t };
            (n.to_string(), t)
        })
        .collect();
    visword::weights::save_safetensors(&tmp.join("model.safetensors"), &bf16, None).unwrap();
    tmp
}

fn ids(w: &Weights, name: &str) -> Vec<u32> {
    w.get(name).unwrap().as_i64().unwrap().iter().map(|&x| x as u32).collect()
}

#[test]
fn llama_logits_kv_cache_decode_and_greedy_ids_match_transformers() {
    for gpu in gpus("models::llama") {
        let be = &gpu.backend;
        for name in ["llama_gqa", "llama_tied"] {
            let model = Llama::load(&dir(name), be).unwrap_or_else(|e| panic!("{name}: {e}"));
            let r = fixture(&format!("{name}/reference.safetensors"));
            let input = ids(&r, "input_ids");
            let vocab = model.config.vocab_size;

            // One forward over the whole sequence.
            let mut cache = model.new_cache(be, input.len()).unwrap();
            let out = model.forward(be, Input::Ids(&input), &mut cache, Logits::All, true).unwrap();
            check(&gpu, &format!("{name} logits"), &out.logits.unwrap(), &r, "logits", gpu.model_tol);
            check(&gpu, &format!("{name} last_hidden_state"), &out.hidden.unwrap(), &r, "last_hidden_state", gpu.model_tol);

            // The KV cache: a 6-token prefill, a 5-token chunk, then one token at a time; every
            // row must equal the full forward's (the reference).
            let (want, _) = ref_f32(&r, "logits");
            let mut cache = model.new_cache(be, input.len()).unwrap();
            let mut got = Vec::with_capacity(want.len());
            for chunk in [&input[..6], &input[6..11]] {
                let out = model.forward(be, Input::Ids(chunk), &mut cache, Logits::All, false).unwrap();
                got.extend(be.to_vec_f32(&out.logits.unwrap()).unwrap());
            }
            for i in 11..input.len() {
                let out = model.forward(be, Input::Ids(&input[i..i + 1]), &mut cache, Logits::Last, false).unwrap();
                let l = out.logits.unwrap();
                assert_eq!(l.shape(), &[1, vocab]);
                got.extend(be.to_vec_f32(&l).unwrap());
            }
            assert_eq!(cache.len(), input.len());
            // On CUDA the steps after the second replay a recorded graph.
            assert_eq!(cache.replays_steps(), be.step_graphs(), "{name}: {:?}", cache.graph_note());
            assert_close(&format!("{} {name} logits, KV-cache decode", be.name()), &got, &want, gpu.model_tol);

            // Greedy generation from input embeddings' path's sibling (ids), with the cache.
            let prompt = ids(&r, "prompt_ids");
            let want_ids = ids(&r, "generated_ids");
            let mut cache = model.new_cache(be, prompt.len() + 12).unwrap();
            let params = GenerateParams { max_new_tokens: 12, sampling: Sampling::Greedy, seed: 0, stop_tokens: model.config.eos_token_ids.clone() };
            let g = generate(&model, be, Input::Ids(&prompt), &mut cache, &params, &mut |_| Ok(())).unwrap();
            assert_eq!(g.tokens, want_ids, "{} {name}: greedy ids", be.name());
        }
    }
}

/// CUDA records a cache's second decode step as a graph and replays it for the later ones
/// (src/backend/cuda/graph.rs): every step's logits and hidden states equal the eager steps',
/// with the cache exactly as long as the sequence and with one of room (the recorded attention
/// splits over the capacity: splits past the keys), after a truncate (the position is read on
/// the device), and the cache says it replays.
#[test]
fn recorded_decode_steps_match_eager_ones() {
    for gpu in gpus("models::decode_graph") {
        let be = &gpu.backend;
        let visword::Backend::Cuda(cb) = be else {
            eprintln!("models::decode_graph: {} runs decode steps eagerly", be.name());
            continue;
        };
        let model = Llama::load(&dir("llama_gqa"), be).unwrap();
        let input = ids(&fixture("llama_gqa/reference.safetensors"), "input_ids");
        let run = |graphs: bool, capacity: usize| -> Vec<(Vec<f32>, Vec<f32>)> {
            cb.set_step_graphs(graphs);
            let mut cache = model.new_cache(be, capacity).unwrap();
            model.forward(be, Input::Ids(&input[..4]), &mut cache, Logits::Last, false).unwrap();
            let mut steps = Vec::new();
            for (i, &id) in input[4..].iter().enumerate() {
                if i == 6 {
                    cache.truncate(cache.len() - 3);
                }
                let out = model.forward(be, Input::Ids(&[id]), &mut cache, Logits::Last, true).unwrap();
                steps.push((be.to_vec_f32(&out.logits.unwrap()).unwrap(), be.to_vec_f32(&out.hidden.unwrap()).unwrap()));
            }
            assert_eq!(cache.replays_steps(), graphs, "graphs {graphs}, capacity {capacity}: {:?}", cache.graph_note());
            steps
        };
        for capacity in [input.len(), model.config.max_position_embeddings] {
            let eager = run(false, capacity);
            let replayed = run(true, capacity);
            for (i, (g, e)) in replayed.iter().zip(&eager).enumerate() {
                assert_close(&format!("capacity {capacity}, step {i}: logits"), &g.0, &e.0, gpu.op_tol);
                assert_close(&format!("capacity {capacity}, step {i}: hidden"), &g.1, &e.1, gpu.op_tol);
            }
        }
        cb.set_step_graphs(true);
    }
}

/// Llama with bf16 weights (llama_gqa converted), on each GPU against the CPU on the same weights,
/// through the KV cache as the stack runs it: a 6-token prefill, a 5-token chunk, then one token
/// at a time (recorded and replayed on CUDA). CUDA keeps a half-precision model's cache as bf16
/// (`Backend::kv_cache_dtype`), rounds GEMM operands to bf16 and the prefill's attention operands
/// to f16, so the tolerance is the bf16 one of the SAM test below (5e-2 + 5e-2·|x| on logits of
/// order 1–10). On CUDA the same steps through an f32 cache differ from the bf16 cache's by the
/// rounding of K and V alone (relative 2⁻⁹ per element): within 1e-2 + 1e-2·|x|, where reading
/// the wrong rows or unrounded bits would move the logits by O(1).
#[test]
fn llama_with_bf16_weights_and_cache_matches_the_cpu() {
    let g = gpus("models::llama_bf16");
    if g.is_empty() {
        return;
    }
    let tmp = bf16_copy("llama_gqa");
    let input = ids(&fixture("llama_gqa/reference.safetensors"), "input_ids");
    let run = |be: &visword::Backend| -> (Vec<f32>, visword::DType) {
        let model = Llama::load(&tmp, be).unwrap();
        let mut cache = model.new_cache(be, input.len() + 3).unwrap();
        let mut got = Vec::new();
        for chunk in [&input[..6], &input[6..11]] {
            let out = model.forward(be, Input::Ids(chunk), &mut cache, Logits::All, false).unwrap();
            got.extend(be.to_vec_f32(&out.logits.unwrap()).unwrap());
        }
        for i in 11..input.len() {
            let out = model.forward(be, Input::Ids(&input[i..i + 1]), &mut cache, Logits::Last, false).unwrap();
            got.extend(be.to_vec_f32(&out.logits.unwrap()).unwrap());
        }
        assert_eq!(cache.replays_steps(), be.step_graphs(), "{}: {:?}", be.name(), cache.graph_note());
        (got, cache.dtype())
    };
    let (want, cpu_dtype) = run(&visword::Backend::cpu());
    assert_eq!(cpu_dtype, visword::DType::F32);
    for gpu in &g {
        let be = &gpu.backend;
        let (got, dtype) = run(be);
        assert_eq!(dtype, be.kv_cache_dtype(true), "{}", be.name());
        assert_close(&format!("llama_gqa bf16 weights, {dtype} cache, on {}", be.name()), &got, &want, Tol { atol: 5e-2, rtol: 5e-2 });
        if let visword::Backend::Cuda(cb) = be {
            assert_eq!(dtype, visword::DType::BF16, "CUDA keeps a bf16 model's cache as bf16 by default");
            cb.set_kv_bf16(false);
            let (f32_cache, f32_dtype) = run(be);
            cb.set_kv_bf16(true);
            assert_eq!(f32_dtype, visword::DType::F32);
            assert_close("llama_gqa bf16 weights on CUDA: bf16 cache against an f32 cache", &got, &f32_cache, Tol { atol: 1e-2, rtol: 1e-2 });
            // Steps replayed from a graph on the bf16 cache against eager ones.
            cb.set_step_graphs(false);
            let (eager, _) = run(be);
            cb.set_step_graphs(true);
            assert_close("llama_gqa bf16 weights on CUDA: recorded steps against eager ones", &got, &eager, gpu.op_tol);
        }
    }
}

// ---- SAM ---------------------------------------------------------------------------------------

/// Points `[1, P, N, 2]` and labels `[1, P, N]` of the reference as prompts.
fn points_from(r: &Weights, prefix: &str) -> Vec<Vec<PointPrompt>> {
    let (pts, ps) = ref_f32(r, &format!("{prefix}input_points"));
    let (labels, _) = ref_f32(r, &format!("{prefix}input_labels"));
    let (p, n) = (ps[1], ps[2]);
    (0..p)
        .map(|i| (0..n).map(|j| PointPrompt { x: pts[(i * n + j) * 2], y: pts[(i * n + j) * 2 + 1], label: labels[i * n + j] as i32 }).collect())
        .collect()
}

fn boxes_from(r: &Weights, name: &str) -> Vec<[f32; 4]> {
    ref_f32(r, name).0.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

#[test]
fn sam_prompt_cases_match_transformers() {
    for gpu in gpus("models::sam_prompt_cases") {
        let be = &gpu.backend;
        let sam = Sam::load(&dir("sam_tiny"), be).unwrap();
        let r = fixture("sam_tiny/reference.safetensors");
        let emb = sam.image_embeddings(be, &be.upload(&tensor(&r, "pixel_values")).unwrap()).unwrap();
        check(&gpu, "sam_tiny image_embeddings", &emb, &r, "image_embeddings", gpu.model_tol);
        let mask = |name: &str| Some(be.upload(&tensor(&r, name)).unwrap());
        let cases = [
            ("a", Prompts { points: points_from(&r, "a_"), ..Default::default() }, true),
            ("b", Prompts { points: points_from(&r, "b_"), boxes: boxes_from(&r, "b_input_boxes"), mask: None }, false),
            ("c", Prompts { points: points_from(&r, "c_"), boxes: vec![], mask: mask("c_input_masks") }, true),
            ("d", Prompts { points: vec![], boxes: boxes_from(&r, "d_input_boxes"), mask: None }, true),
            ("e", Prompts { points: vec![], boxes: vec![], mask: mask("e_input_masks") }, false),
        ];
        for (case, prompts, multimask) in cases {
            let out = sam.predict(be, &emb, &prompts, multimask).unwrap_or_else(|e| panic!("{} case {case}: {e}", be.name()));
            check(&gpu, &format!("sam_tiny {case} pred_masks"), &out.pred_masks, &r, &format!("{case}_pred_masks"), gpu.model_tol);
            check(&gpu, &format!("sam_tiny {case} iou_scores"), &out.iou_scores, &r, &format!("{case}_iou_scores"), gpu.model_tol);
        }
    }
}

/// SAM with bf16 weights (the tiny checkpoint converted), on each GPU against the CPU on the
/// same weights: the precision the benchmarks run at. The CPU reads bf16 exactly and computes in
/// f32; CUDA rounds GEMM operands to bf16 (M > 4) or reads them as TF32 (M ≥ 8·N, cuBLASLt), so
/// each GEMM input carries a relative error up to 2⁻⁸. The bf16 tolerance: logits within
/// 5e-2 + 5e-2·|x| (a wrong formula moves them by O(1)), and the masks (logit > 0) the same on
/// at least 99% of the pixels whose logits are not within 0.1 of the threshold.
#[test]
fn sam_with_bf16_weights_matches_the_cpu() {
    let g = gpus("models::sam_bf16");
    if g.is_empty() {
        return;
    }
    let tmp = bf16_copy("sam_tiny");
    let r = fixture("sam_tiny/reference.safetensors");
    let cpu = visword::Backend::cpu();
    let run = |be: &visword::Backend| {
        let sam = Sam::load(&tmp, be).unwrap();
        let emb = sam.image_embeddings(be, &be.upload(&tensor(&r, "pixel_values")).unwrap()).unwrap();
        let mut outs = vec![be.to_vec_f32(&emb).unwrap()];
        for (case, boxes) in [("a", vec![]), ("b", boxes_from(&r, "b_input_boxes"))] {
            let prompts = Prompts { points: points_from(&r, &format!("{case}_")), boxes, mask: None };
            let out = sam.predict(be, &emb, &prompts, true).unwrap();
            outs.push(be.to_vec_f32(&out.pred_masks).unwrap());
            outs.push(be.to_vec_f32(&out.iou_scores).unwrap());
        }
        outs
    };
    let want = run(&cpu);
    let tol = Tol { atol: 5e-2, rtol: 5e-2 };
    for gpu in &g {
        let got = run(&gpu.backend);
        for (i, (gv, wv)) in got.iter().zip(&want).enumerate() {
            let what = format!("sam_tiny bf16 weights, output {i} (embeddings, then masks / iou per case) on {}", gpu.backend.name());
            assert_close(&what, gv, wv, tol);
            if i % 2 == 1 {
                let (mut same, mut n) = (0usize, 0usize);
                for (&a, &b) in gv.iter().zip(wv) {
                    if b.abs() > 0.1 {
                        n += 1;
                        same += ((a > 0.0) == (b > 0.0)) as usize;
                    }
                }
                assert!(same as f64 >= 0.99 * n as f64, "{what}: masks agree on {same} of {n} pixels");
            }
        }
    }
}

/// Every `step`-th row and column of `[.., H, W]` planes.
fn strided(v: &[f32], planes: usize, h: usize, w: usize, step: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for p in 0..planes {
        for y in (0..h).step_by(step) {
            for x in (0..w).step_by(step) {
                out.push(v[(p * h + y) * w + x]);
            }
        }
    }
    out
}

/// The released geometry: a 1024² input (64×64 grid, windows of 14 padded to 70, a global
/// layer over all 4096 tokens) and 256² masks.
#[test]
fn sam_released_geometry_matches_transformers() {
    for gpu in gpus("models::sam_released_geometry") {
        let be = &gpu.backend;
        let sam = Sam::load(&dir("sam_1024"), be).unwrap();
        let r = fixture("sam_1024/reference.safetensors");
        let s = 1024;
        // The deterministic pattern tools/reference/make_sam.py feeds (as tests/model_sam.rs).
        let pixels: Vec<f32> = (0..3 * s * s)
            .map(|i| {
                let (c, y, x) = (i / (s * s), (i / s) % s, i % s);
                (((7 * x + 13 * y + 29 * c) % 256) as f32 - 128.0) / 64.0
            })
            .collect();
        let px = be.upload(&Tensor::from_f32(pixels, vec![1, 3, s, s]).unwrap()).unwrap();
        let emb = sam.image_embeddings(be, &px).unwrap();
        assert_eq!(emb.shape(), [1, 16, 64, 64]);
        let got = strided(&be.to_vec_f32(&emb).unwrap(), 16, 64, 64, 4);
        let tag = be.name();
        assert_close(&format!("{tag} sam_1024 image_embeddings (every 4th)"), &got, &ref_f32(&r, "image_embeddings_stride4").0, gpu.model_tol);
        let prompts = Prompts { points: points_from(&r, ""), boxes: boxes_from(&r, "input_boxes"), mask: None };
        let out = sam.predict(be, &emb, &prompts, true).unwrap();
        assert_eq!(out.pred_masks.shape(), [1, 1, 3, 256, 256]);
        let got = strided(&be.to_vec_f32(&out.pred_masks).unwrap(), 3, 256, 256, 8);
        assert_close(&format!("{tag} sam_1024 pred_masks (every 8th)"), &got, &ref_f32(&r, "pred_masks_stride8").0, gpu.model_tol);
        check(&gpu, "sam_1024 iou_scores", &out.iou_scores, &r, "iou_scores", gpu.model_tol);
    }
}

// ---- projectors ---------------------------------------------------------------------------------

/// The fixture's hand-made superpixel case `case` (coverage and geometry; no label map needed).
fn superpixels(r: &Weights, case: &str, grid: usize) -> Superpixels {
    let (coverage, shape) = ref_f32(r, &format!("{case}.coverage"));
    let (geo, _) = ref_f32(r, &format!("{case}.geometry"));
    Superpixels {
        label_map: Vec::new(),
        height: 0,
        width: 0,
        count: shape[0],
        grid,
        coverage,
        geometry: geo.chunks_exact(7).map(|g| g.try_into().unwrap()).collect(),
    }
}

#[test]
fn projectors_match_torch() {
    const GRID: usize = 6;
    for gpu in gpus("models::projectors") {
        let be = &gpu.backend;
        let w = fixture("svp_projector/model.safetensors");
        let r = fixture("svp_projector/reference.safetensors");
        // tests/model_projector.rs's dimensions and SSA heads.
        let cfg = SvpConfig { ssa_heads: 4, ..SvpConfig::default() };
        let load = |kind, grid| Projector::load(be, &VarView::new(&w, be).pp("model"), kind, ProjectorDims { vision_width: 32, llm_width: 48, grid }, &cfg).unwrap();
        let feats = |name: &str| be.upload(&tensor(&r, name)).unwrap();
        for (kind, grid, input, output) in [
            (ProjectorKind::Mlp, GRID, "feats", "mlp"),
            (ProjectorKind::Pool(2), GRID, "feats", "pool2"),
            (ProjectorKind::Pool(3), GRID, "feats", "pool3"),
            (ProjectorKind::Pool(4), GRID, "feats", "pool4"),
            (ProjectorKind::Pool(2), 5, "feats_g5", "pool2_g5"),
            (ProjectorKind::Pool(3), 5, "feats_g5", "pool3_g5"),
        ] {
            let y = load(kind, grid).forward(be, &feats(input), None).unwrap();
            check(&gpu, output, &y, &r, output, gpu.model_tol);
        }
        let svp = load(ProjectorKind::Svp, GRID);
        let f = feats("feats");
        for case in ["single", "blobs", "offset", "voronoi"] {
            let y = svp.forward(be, &f, Some(&superpixels(&r, case, GRID))).unwrap();
            check(&gpu, &format!("svp {case}"), &y, &r, &format!("{case}.svp"), gpu.model_tol);
        }
    }
}

// ---- the segmenter end to end ----------------------------------------------------------------------

/// pixel_values from a stored 8-bit image as transformers' torchvision backend computes them
/// (as tests/segmenter_parity.rs): `(x − 255·mean) / (255·std)` in f32, top-left of a zero
/// `canvas`² input (SAM's padding; 0 = none).
fn pixel_values(png: &Path, mean: [f32; 3], std: [f32; 3], canvas: usize) -> Tensor {
    let img = image::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display())).to_rgb8();
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (ch, cw) = if canvas == 0 { (h, w) } else { (canvas, canvas) };
    let mut out = vec![0f32; 3 * ch * cw];
    for c in 0..3 {
        let (m, s) = (mean[c] * 255.0, std[c] * 255.0);
        for y in 0..h {
            for x in 0..w {
                out[(c * ch + y) * cw + x] = (img.get_pixel(x as u32, y as u32)[c] as f32 - m) / s;
            }
        }
    }
    Tensor::from_f32(out, vec![1, 3, ch, cw]).unwrap()
}

#[test]
fn segmenter_end_to_end_matches_the_reference() {
    for gpu in gpus("models::segmenter_end_to_end") {
        let be = &gpu.backend;
        let tag = be.name();
        let m = dir("segmenter_tiny");
        let r = fixture("segmenter_tiny/reference.safetensors");
        let photo = image::open(m.join("photo.png")).unwrap().to_rgb8();
        let opts = SegmentOptions {
            max_new_tokens: None,
            pixel_values: Some(pixel_values(&m.join("clip_pixels.png"), CLIP_MEAN, CLIP_STD, 0)),
            sam_pixel_values: Some(pixel_values(&m.join("sam_pixels.png"), IMAGENET_MEAN, IMAGENET_STD, 1024)),
        };
        for projector in ["svp", "mlp"] {
            let kind = ProjectorKind::parse(projector).unwrap();
            let seg = Segmenter::load(&m, be, Some(kind)).unwrap_or_else(|e| panic!("{tag} {projector}: {e}"));
            let out = seg.segment(be, &photo, "the cat", &opts).unwrap_or_else(|e| panic!("{tag} {projector}: {e}"));
            let p = |n: &str| format!("{projector}.{n}");

            // The steered fixture answers "[SEG]".
            assert_eq!(out.answer, "[SEG]", "{tag} {projector}: answer");
            let (visual, vshape) = ref_f32(&r, &p("visual_tokens"));
            assert_eq!(out.visual_tokens, vshape[0], "{tag} {projector}: visual tokens");
            assert_eq!(out.visual.shape(), vshape.as_slice());
            assert_close(&format!("{tag} {projector} visual_tokens"), &out.visual.to_f32_vec().unwrap(), &visual, gpu.model_tol);

            if let Some(sp) = &out.superpixels {
                let want: Vec<i32> = r.get("label_map").unwrap().as_i32().unwrap().to_vec();
                let diff = sp.label_map.iter().zip(&want).filter(|(a, b)| a != b).count();
                assert_eq!(sp.label_map.len(), want.len(), "{tag}: label map size");
                assert_eq!(diff, 0, "{tag}: {diff} of {} label-map cells differ", want.len());
                assert_close(&format!("{tag} coverage"), &sp.coverage, &ref_f32(&r, "coverage").0, Tol { atol: 1e-6, rtol: 1e-5 });
            }

            let (want, _) = ref_f32(&r, &p("seg_embedding"));
            assert_close(&format!("{tag} {projector} seg_embedding"), &out.seg_embeddings.to_f32_vec().unwrap(), &want, gpu.model_tol);

            // The reference keeps the logit rows that reach the image.
            let (want, wshape) = ref_f32(&r, &p("mask_logits"));
            let l = out.mask_logits.dim(2);
            assert_eq!(l, wshape[2], "{tag} {projector}: mask logits width");
            let got: Vec<f32> = out.mask_logits.to_f32_vec().unwrap()[..wshape[1] * l].to_vec();
            assert_close(&format!("{tag} {projector} mask_logits"), &got, &want, gpu.model_tol);

            let want = r.get(&p("mask")).unwrap().to_f32_vec().unwrap();
            let got = out.union_mask();
            assert_eq!(got.len(), want.len(), "{tag} {projector}: mask size");
            let inter = got.iter().zip(&want).filter(|(g, w)| **g > 127 && **w > 0.5).count();
            let union = got.iter().zip(&want).filter(|(g, w)| **g > 127 || **w > 0.5).count();
            let iou = inter as f64 / union.max(1) as f64;
            eprintln!("{tag} {projector} mask: IoU {iou:.5} ({inter} / {union} px)");
            assert!(union > 0 && iou >= 0.99, "{tag} {projector}: mask IoU {iou:.5} < 0.99");
        }
    }
}
