#!/usr/bin/env python3
"""Check a directory written by `visword convert MODEL.gguf HF_DIR` from the Python side.

    python3 tools/reference/check_gguf_convert.py MODEL.gguf HF_DIR [TOKENS.json]

* tokenizer.json loads in Python `tokenizers`, and `transformers.AutoTokenizer` loads the
  directory; both give the ids in TOKENS.json (default: the fixture matching the model,
  tests/fixtures/gguf/smollm2_reference.json or tiny_llama_tokens.json);
* the chat template renders the same text as the GGUF-loaded tokenizer's;
* `AutoModelForCausalLM.from_pretrained(HF_DIR)` has exactly the weights transformers loads from
  the GGUF itself, and gives the same logits on a prompt (f32 dirs only: f16/bf16 are compared
  after rounding the GGUF weights the same way).
Exits non-zero on the first mismatch.
"""

import json
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]


def main():
    gguf_path, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    if len(sys.argv) > 3:
        tokens = Path(sys.argv[3])
    elif "tiny_llama" in gguf_path.name:
        tokens = ROOT / "tests/fixtures/gguf/tiny_llama_tokens.json"
    else:
        tokens = ROOT / "tests/fixtures/gguf/smollm2_reference.json"
    ref = json.loads(tokens.read_text())

    fast = Tokenizer.from_file(str(out / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(out))
    for s, want in zip(ref["strings"], ref["ids"]):
        got_fast = fast.encode(s).ids
        got_auto = auto.encode(s)
        assert got_fast == want, (s, got_fast, want)
        assert got_auto == want, (s, got_auto, want)
    print(f"tokenizer: {len(ref['strings'])} strings give the reference ids (tokenizers and AutoTokenizer)")

    with tempfile.TemporaryDirectory() as d:
        link = Path(d) / gguf_path.name
        link.symlink_to(gguf_path)
        gtok = AutoTokenizer.from_pretrained(d, gguf_file=link.name)
        chat = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
        a = auto.apply_chat_template(chat, tokenize=False)
        b = gtok.apply_chat_template(chat, tokenize=False)
        assert a == b, (a, b)
        print("chat template: same text as the GGUF tokenizer")

        want_model = AutoModelForCausalLM.from_pretrained(d, gguf_file=link.name, dtype=torch.float32)
    got_model = AutoModelForCausalLM.from_pretrained(str(out))
    dtype = got_model.dtype
    want_sd, got_sd = want_model.state_dict(), got_model.state_dict()
    assert set(want_sd) == set(got_sd), sorted(set(want_sd) ^ set(got_sd))
    for k, w in want_sd.items():
        g = got_sd[k]
        assert g.shape == w.shape, (k, g.shape, w.shape)
        assert torch.equal(g, w.to(dtype)), f"{k}: max diff {(g.float() - w.float()).abs().max()}"
    print(f"weights: all {len(got_sd)} tensors equal the GGUF-loaded ones ({dtype})")

    if dtype == torch.float32:
        ids = torch.tensor([auto.encode("The capital of France is")])
        with torch.no_grad():
            lw = want_model(ids).logits
            lg = got_model(ids).logits
        assert torch.equal(lw, lg), f"logits max diff {(lw - lg).abs().max()}"
        print("logits: identical on a prompt")
    print("ok")


if __name__ == "__main__":
    main()
