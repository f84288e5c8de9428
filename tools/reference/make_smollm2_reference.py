#!/usr/bin/env python3
"""Reference outputs of transformers on SmolLM2-135M-Instruct converted from its GGUF by
`visword convert` (so both engines read the very same weights).

  python3 tools/reference/make_smollm2_reference.py .models/smollm2 tests/fixtures/smollm2

Writes reference.safetensors:
  input_ids        [n] i64   the chat-templated prompt "What is the capital of France?"
  logits_rows      [r] i64   which positions' logits are stored (first, middle, last)
  logits           [r, vocab] f32   transformers' f32 logits at those positions
  generated_ids    [g] i64   greedy continuation (do_sample=False, 24 new tokens, stops at eos)
and reference.json with the prompt text and the decoded answer.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
tok = AutoTokenizer.from_pretrained(src)
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
messages = [{"role": "user", "content": "What is the capital of France?"}]
text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
with torch.inference_mode():
    logits = model(ids).logits[0]
    n = ids.shape[1]
    rows = torch.tensor([0, n // 2, n - 1])
    gen = model.generate(ids, max_new_tokens=24, do_sample=False)[0, n:]
save_file(
    {
        "input_ids": ids[0].to(torch.int64).contiguous(),
        "logits_rows": rows.to(torch.int64),
        "logits": logits[rows].contiguous(),
        "generated_ids": gen.to(torch.int64).contiguous(),
    },
    os.path.join(out, "reference.safetensors"),
)
answer = tok.decode(gen, skip_special_tokens=True)
json.dump({"prompt": text, "answer": answer}, open(os.path.join(out, "reference.json"), "w"), indent=1)
print(repr(text), "->", repr(answer))
