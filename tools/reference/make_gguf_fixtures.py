#!/usr/bin/env python3
"""Make the GGUF import fixtures in tests/fixtures/gguf/ (deterministic, seeded).

    python3 tools/reference/make_gguf_fixtures.py            # synthetic fixtures (always)
    VISWORD_SMOLLM2_GGUF=path python3 tools/reference/make_gguf_fixtures.py   # + real-model reference

Needs numpy, torch, transformers (5.x), accelerate (transformers wants it to load GGUF files),
tokenizers and the `gguf` package. Writes:

* quants.gguf + quants_reference.safetensors: one small tensor per supported ggml type (F32, F16,
  BF16, Q8_0, Q4_0, Q4_1; 1-D to 3-D shapes, one all-zero block), quantized by `gguf.quants.quantize`
  and written by `GGUFWriter`; the reference holds `gguf.quants.dequantize` of the stored bytes.
* tiny_llama.gguf: a 2-layer Llama (hidden 64, 4 heads, 2 KV heads, untied lm_head) with seeded
  random weights, stored the way llama.cpp's converter stores it (GGUF names, Q/K rows permuted for
  its rotary layout) in a mix of ggml types, plus a 300-token byte-level BPE tokenizer (trained
  here on a fixed text) with pre-tokenizer "smollm", control and user-defined tokens, a chat template.
* tiny_llama_reference.safetensors: the state_dict transformers builds from tiny_llama.gguf
  (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)), i.e. dequantized and un-permuted.
* tiny_llama_tokens.json: strings and the ids the GGUF tokenizer gives them. transformers 5.x
  has no "smollm" entry in its GGUF pre-tokenizer table (it falls back to plain byte-level
  splitting), so the ids come from transformers' GGUF tokenizer with llama.cpp's "smollm" split
  put in place: first every \\p{N} on its own, then the GPT-2 regex, then byte-level. The tiny
  vocabulary has digit merges, so this is where the two would differ.
* smollm2_reference.json (only with the real model): for a few tensors of transformers'
  GGUF-loaded SmolLM2-135M-Instruct, the first 64 values of four rows and the f64 sum and abs-sum
  of the whole tensor; the ids of ~20 varied strings; the config transformers derives. The ids
  come from transformers' GGUF tokenizer given the "smollm" split (as for the tiny model); its
  unmodified ids are kept as `transformers_ids`. The vocabulary has no token joining an ASCII digit
  to anything, but it does merge a space with the first UTF-8 byte of non-ASCII numerals such as
  "½" or "²", so the two differ on text like " ½" (`differs_from_transformers` lists the strings).
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as T
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "gguf"

STRINGS = [
    "Hello, world!",
    "12345 apples cost $6.78",
    " leading space",
    "trailing space ",
    "multiple   spaces\tand\ttabs",
    "line1\nline2\r\nline3\n\n",
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>assistant\nThe answer is 42.<|im_end|>\n",
    "naïve café résumé",
    "日本語のテキスト",
    "emoji 🎉🚀 test",
    "Ünïcödé ½ ² ٣ digits",
    "don't won't I'm we'll THEY'RE",
    "x = a+b*(c-1)/2; // comment",
    "https://example.com/path?q=1&r=2",
    "",
    "   ",
    "<|endoftext|>",
    "a1b2c3 2024-11-26",
    "The quick brown fox jumps over the lazy dog.",
    "<tool>call</tool>",
]

# llama.cpp's "smollm" pre-tokenizer (shared with starcoder, refact, command-r, ...).
SMOLLM_SPLITS = [r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"]


def use_smollm_split(tok):
    """Give a transformers GGUF tokenizer llama.cpp's "smollm" pre-tokenizer, which transformers
    5.x lacks: each regex an isolated split, in order, then byte-level mapping."""
    from tokenizers import Regex, pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in SMOLLM_SPLITS]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )


def quants_fixture(rng):
    cases = [
        ("t.f32", T.F32, (3, 5)),
        ("t.f16", T.F16, (4, 7)),
        ("t.bf16", T.BF16, (2, 33)),
        ("t.q8_0", T.Q8_0, (3, 64)),
        ("t.q4_0", T.Q4_0, (5, 96)),
        ("t.q4_1", T.Q4_1, (2, 3, 32)),
        ("t.q4_1_1d", T.Q4_1, (64,)),
    ]
    w = gguf.GGUFWriter(str(OUT / "quants.gguf"), "test")
    ref = {}
    for name, qt, shape in cases:
        x = (rng.standard_normal(shape) * rng.uniform(0.1, 3.0)).astype(np.float32)
        flat = x.reshape(-1)
        flat[:4] += np.array([7.5, -9.0, 0.0, 1e-3], dtype=np.float32)  # outliers set block scales
        if qt in (T.Q8_0, T.Q4_0, T.Q4_1):
            flat[32:64] = 0.0  # an all-zero block: scale 0, no division by it
        data = gguf.quants.quantize(x, qt)
        w.add_tensor(name, data, raw_dtype=qt)
        ref[name] = gguf.quants.dequantize(data, qt).astype(np.float32).reshape(shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # Read back: the file as written dequantizes to the same values.
    r = gguf.GGUFReader(str(OUT / "quants.gguf"))
    for t in r.tensors:
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ref[t.name].shape)
        assert np.array_equal(got, ref[t.name]), t.name
    save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, str(OUT / "quants_reference.safetensors"))


def train_tiny_vocab():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

    text = [
        "The year 2024 had 366 days; 1999 had 365. Call 555-0123 or 555-0199.",
        "hello world, hello there! the theory of everything is 42 and 4242.",
        "Prices: 10 apples cost 12 dollars, 100 apples cost 120 dollars.",
        "café naïve 日本 emoji 🎉 spaces   and\ttabs\nnew lines",
    ] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=296,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text, trainer)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    tokens.append("<tool>")  # a user-defined (added, not special) token
    return tokens, merges


def permute_like_llama_cpp(w, n_head):
    # llama.cpp's converter interleaves each head's two rotary halves row-wise.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_llama_fixture():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hidden, heads, kv_heads, ffn, layers, ctx = 64, 4, 2, 96, 2, 256
    tokens, merges = train_tiny_vocab()
    vocab = len(tokens)
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=0.1):
        return (torch.randn(*shape, generator=g) * scale).numpy().astype(np.float32)

    hf = {"model.embed_tokens.weight": rand(vocab, hidden), "model.norm.weight": 1 + rand(hidden),
          "lm_head.weight": rand(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        hf[p + "self_attn.q_proj.weight"] = rand(hidden, hidden)
        hf[p + "self_attn.k_proj.weight"] = rand(kv_heads * hidden // heads, hidden)
        hf[p + "self_attn.v_proj.weight"] = rand(kv_heads * hidden // heads, hidden)
        hf[p + "self_attn.o_proj.weight"] = rand(hidden, hidden)
        hf[p + "mlp.gate_proj.weight"] = rand(ffn, hidden)
        hf[p + "mlp.up_proj.weight"] = rand(ffn, hidden)
        hf[p + "mlp.down_proj.weight"] = rand(hidden, ffn)
        hf[p + "input_layernorm.weight"] = 1 + rand(hidden)
        hf[p + "post_attention_layernorm.weight"] = 1 + rand(hidden)

    path = OUT / "tiny_llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(layers)
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    types = [1] * vocab
    types[0] = types[1] = types[2] = 3  # control
    types[-1] = 4  # user defined
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )

    def put(name, x, qt):
        w.add_tensor(name, gguf.quants.quantize(x, qt) if qt != T.F32 else x, raw_dtype=qt)

    put("token_embd.weight", hf["model.embed_tokens.weight"], T.Q8_0)
    put("output_norm.weight", hf["model.norm.weight"], T.F32)
    put("output.weight", hf["lm_head.weight"], T.Q8_0)
    for i in range(layers):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        # Layer 0 keeps q/k exact (F16 / F32) so the permutation round trip is checked exactly below.
        put(b + "attn_q.weight", permute_like_llama_cpp(hf[p + "self_attn.q_proj.weight"], heads), T.F16 if i == 0 else T.Q4_0)
        put(b + "attn_k.weight", permute_like_llama_cpp(hf[p + "self_attn.k_proj.weight"], kv_heads), T.F32 if i == 0 else T.Q4_1)
        put(b + "attn_v.weight", hf[p + "self_attn.v_proj.weight"], T.Q8_0)
        put(b + "attn_output.weight", hf[p + "self_attn.o_proj.weight"], T.Q4_1 if i == 0 else T.F16)
        put(b + "ffn_gate.weight", hf[p + "mlp.gate_proj.weight"], T.Q4_0)
        put(b + "ffn_up.weight", hf[p + "mlp.up_proj.weight"], T.BF16)
        put(b + "ffn_down.weight", hf[p + "mlp.down_proj.weight"], T.Q4_1)
        put(b + "attn_norm.weight", hf[p + "input_layernorm.weight"], T.F32)
        put(b + "ffn_norm.weight", hf[p + "post_attention_layernorm.weight"], T.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    model = AutoModelForCausalLM.from_pretrained(str(OUT), gguf_file=path.name, dtype=torch.float32)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    # The un-permutation must give back the HF layout exactly where the storage was exact.
    q0 = "model.layers.0.self_attn.q_proj.weight"
    assert np.array_equal(sd[q0], hf[q0].astype(np.float16).astype(np.float32)), "q permutation"
    k0 = "model.layers.0.self_attn.k_proj.weight"
    assert np.array_equal(sd[k0], hf[k0]), "k permutation"
    assert set(sd) == set(hf), sorted(set(sd) ^ set(hf))
    save_file({k: np.ascontiguousarray(v) for k, v in sorted(sd.items())}, str(OUT / "tiny_llama_reference.safetensors"))

    tok = AutoTokenizer.from_pretrained(str(OUT), gguf_file=path.name)
    use_smollm_split(tok)
    ids = [tok.encode(s) for s in STRINGS]
    assert any(len(t) > 1 and any(c.isdigit() for c in t) for t in tokens), "tiny vocab should merge digits"
    meta = {
        "strings": STRINGS,
        "ids": ids,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "add_bos_token": bool(getattr(tok, "add_bos_token", True)),
        "vocab_size": vocab,
    }
    (OUT / "tiny_llama_tokens.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")


def smollm2_reference(gguf_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    with tempfile.TemporaryDirectory() as d:
        # transformers wants a directory + file name; a symlink avoids copying 100 MB.
        link = Path(d) / gguf_path.name
        link.symlink_to(gguf_path)
        cfg = AutoConfig.from_pretrained(d, gguf_file=link.name)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=link.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=link.name)
    sd = model.state_dict()
    last = cfg.num_hidden_layers - 1
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.input_layernorm.weight",
        f"model.layers.{last}.mlp.down_proj.weight",
        "model.norm.weight",
    ]
    tensors = {}
    for n in names:
        t = sd[n].detach().float().numpy()
        rows = t.reshape(t.shape[0], -1) if t.ndim > 1 else t.reshape(1, -1)
        pick = sorted({0, 1, rows.shape[0] // 2, rows.shape[0] - 1} & set(range(rows.shape[0])))
        tensors[n] = {
            "shape": list(t.shape),
            "rows": {str(r): [float(v) for v in rows[r, :64]] for r in pick},
            "sum": float(t.astype(np.float64).sum()),
            "abs_sum": float(np.abs(t.astype(np.float64)).sum()),
        }
    ref = {
        "config": {
            k: getattr(cfg, k)
            for k in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "vocab_size",
                      "bos_token_id", "eos_token_id", "tie_word_embeddings", "head_dim"]
        },
        "rope_theta": cfg.rope_parameters["rope_theta"],
        "tensors": tensors,
        "strings": STRINGS,
        "transformers_ids": [tok.encode(s) for s in STRINGS],
    }
    use_smollm_split(tok)
    ref["ids"] = [tok.encode(s) for s in STRINGS]
    ref["differs_from_transformers"] = [s for s, a, b in zip(STRINGS, ref["ids"], ref["transformers_ids"]) if a != b]
    (OUT / "smollm2_reference.json").write_text(json.dumps(ref, ensure_ascii=False) + "\n")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    torch.manual_seed(0)
    quants_fixture(rng)
    tiny_llama_fixture()
    real = os.environ.get("VISWORD_SMOLLM2_GGUF", str(ROOT / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if Path(real).exists():
        smollm2_reference(real)
    else:
        print(f"skipping smollm2_reference.json: {real} not found", file=sys.stderr)
    for p in sorted(OUT.iterdir()):
        print(f"{p.stat().st_size:>9}  {p.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
