#!/usr/bin/env python3
"""Make the Llama parity fixtures for tests/model_llama.rs and tests/chat_template.rs.

Run from anywhere (torch + transformers 5.x, tokenizers, safetensors on the CPU):

    python3 tools/reference/make_llama.py

Writes, deterministically (fixed seeds, no network):

* tests/fixtures/llama_gqa/   GQA (6 heads, 2 KV heads), head_dim 12, hidden 72 and intermediate
  44 (not multiples of 8/16/32), untied lm_head, llama3 rope scaling with an
  original_max_position_embeddings small enough that all three llama3 frequency bands occur.
  config.json is rewritten in the transformers-4 layout (`rope_theta` + `rope_scaling`), and the
  references are computed from the model *reloaded* from that rewritten directory, so the test also
  proves the old layout means the same thing. It carries a tiny byte-level BPE tokenizer (vocab 272)
  with SmolLM2's ChatML chat template, so the whole prompt → chat template → tokens → generate path
  can be checked.
* tests/fixtures/llama_tied/  MHA with an explicit head_dim (4 heads × 16 ≠ hidden 48), tied
  embeddings, attention and MLP biases, transformers-5 `rope_parameters` (linear scaling).
* tests/fixtures/llama_chat_templates/cases.json  chat templates rendered by transformers'
  apply_chat_template(tokenize=False), or the error message a template raised.

Each model directory holds config.json, generation_config.json, model.safetensors (f32, written by
save_pretrained) and reference.safetensors with:
  input_ids          [20] i64      a fixed id sequence
  logits             [20, V] f32   one forward over input_ids, every position
  last_hidden_state  [20, hidden]  after the final norm (= HF hidden_states[-1])
  prompt_ids         [P] i64       the generation prompt
  generated_ids      [G] i64       greedy generate(do_sample=False, max_new_tokens=12), new ids only
Weights are drawn at O(1) scale (not HF's 0.02 init) so logits are spread out and greedy choices are
decided by margins far above float error; the script prints the smallest top-1/top-2 margin.
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
VOCAB_GQA = 272

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
    "system user assistant: hello there, how are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog 0123456789 times.",
    "Größe, naïve café: ünïcödé text ✓ 日本語 too.",
]


def make_tokenizer():
    """A byte-level BPE with 3 special tokens + 256 bytes + 13 merges = 272 entries."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_GQA,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    assert tok.get_vocab_size() == VOCAB_GQA, tok.get_vocab_size()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = SMOLLM2_TEMPLATE
    return fast


def init_weights(model, seed, embed_std=1.0):
    """O(1)-scale weights: rows of projections ~ N(0, 1/fan_in), norms around 1, embeddings ~ N(0, embed_std)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(embed_std * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(3.0 * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                # Larger writes into the residual stream, so that with tied embeddings the next token
                # is not simply the current one echoed back.
                p.copy_(3.0 * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def references(model_dir, input_ids, prompt_ids, eos_ids):
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([input_ids])
        out = model(ids, output_hidden_states=True)
        logits = out.logits[0].contiguous()
        hidden = out.hidden_states[-1][0].contiguous()
        p = torch.tensor([prompt_ids])
        gen = model.generate(
            p,
            attention_mask=torch.ones_like(p),
            do_sample=False,
            max_new_tokens=12,
            eos_token_id=eos_ids,
            pad_token_id=eos_ids[0],
            output_scores=True,
            return_dict_in_generate=True,
        )
    new = gen.sequences[0, len(prompt_ids):].contiguous()
    margin = min((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item() for s in gen.scores)
    full_margin = (logits.topk(2, dim=-1).values[:, 0] - logits.topk(2, dim=-1).values[:, 1]).min().item()
    print(f"  {os.path.basename(model_dir)}: generated {new.tolist()}; min greedy margin {margin:.4f}; "
          f"min top-2 margin over input_ids {full_margin:.4f}")
    return {
        "input_ids": ids[0].to(torch.int64).contiguous(),
        "logits": logits,
        "last_hidden_state": hidden,
        "prompt_ids": p[0].to(torch.int64).contiguous(),
        "generated_ids": new.to(torch.int64),
    }


def fresh_dir(name):
    d = os.path.join(FIXTURES, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def make_gqa():
    d = fresh_dir("llama_gqa")
    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=VOCAB_GQA,
        hidden_size=72,
        intermediate_size=44,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=160,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        },
    )
    model = LlamaForCausalLM(cfg)
    init_weights(model, 11)
    model.save_pretrained(d, safe_serialization=True)
    GenerationConfig(bos_token_id=1, eos_token_id=[2, 0], pad_token_id=2).save_pretrained(d)
    # Rewrite config.json the way transformers 4 wrote it.
    path = os.path.join(d, "config.json")
    with open(path) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp.pop("rope_theta")
    c["rope_scaling"] = rp
    c["torch_dtype"] = c.pop("dtype", "float32")
    c["transformers_version"] = "4.46.0"
    with open(path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    tok = make_tokenizer()
    tok.save_pretrained(d)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    input_ids = [(i * 37 + 11) % VOCAB_GQA for i in range(20)]
    refs = references(d, input_ids, list(prompt_ids), [2, 0])
    refs["chat_prompt_text"] = torch.tensor(
        list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False).encode()), dtype=torch.uint8
    )
    save_file(refs, os.path.join(d, "reference.safetensors"))


def make_tied():
    d = fresh_dir("llama_tied")
    torch.manual_seed(2)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=48,
        intermediate_size=76,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
    )
    model = LlamaForCausalLM(cfg)
    init_weights(model, 22, embed_std=0.3)
    model.tie_weights()
    model.save_pretrained(d, safe_serialization=True)
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    assert "rope_parameters" in c and "rope_scaling" not in c, c
    input_ids = [(i * 53 + 7) % 300 for i in range(20)]
    prompt_ids = [1, 17, 250, 93, 4, 61, 128]
    refs = references(d, input_ids, prompt_ids, [2])
    save_file(refs, os.path.join(d, "reference.safetensors"))


LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Multi-line, whitespace-controlled, in the style of Llama 3.1's template: date, system message
# extraction with slicing, tools through tojson(indent=4).
LLAMA31_STYLE_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'].strip() %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
    {{- "Tools:\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# No whitespace control at all: relies on trim_blocks + lstrip_blocks, the dropped final newline,
# loop controls, namespace, Python string methods and tojson's Python-style output.
BLOCKS_TEMPLATE = """{% set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m.role == 'system' %}
        {% continue %}
    {% endif %}
    {% set ns.n = ns.n + 1 %}
    [{{ ns.n }}] {{ m.role.upper() }}: {{ m.content.strip() }}
    {% if m.content.startswith('stop') %}
        {% break %}
    {% endif %}
{% endfor %}
words={{ messages[-1].content.split() | length }} first={{ messages[-1].content.split(' ')[0] }} ends={{ messages[-1].content.endswith('!') }}
replaced={{ messages[-1].content.replace('a', 'A') }} title={{ 'hello world'.title() }} items={% for k, v in {'x': 1}.items() %}{{ k }}{{ v }}{% endfor %}
json={{ messages[-1] | tojson }}
{% if add_generation_prompt %}
ASSISTANT:
{% endif %}
"""

MISTRAL_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

GENERATION_TAG_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'assistant' %}<A>{%- generation -%} {{ m.content }} {%- endgeneration -%}</A>"
    "{% else %}<{{ m.role }}>{{ m.content }}{% endif %}\n{% endfor %}"
)


def make_chat_cases():
    d = fresh_dir("llama_chat_templates")
    tok = make_tokenizer()
    unicode_msg = "Größe & <tag> \"quoted\" 'single' 日本 \\ back\ttab"
    chat = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "  And of Italy?  "},
    ]
    with_system = [{"role": "system", "content": "  Be brief.  "}] + chat
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                "parameters": {"type": "object", "required": ["city"],
                                                               "properties": {"city": {"type": "string"}}}}}]
    cases = [
        ("smollm2_default_system", SMOLLM2_TEMPLATE, chat[:1], True, {}),
        ("smollm2_no_generation_prompt", SMOLLM2_TEMPLATE, chat, False, {}),
        ("smollm2_own_system", SMOLLM2_TEMPLATE, with_system, True, {}),
        ("llama3", LLAMA3_TEMPLATE, with_system, True, {}),
        ("llama3_unicode", LLAMA3_TEMPLATE, [{"role": "user", "content": unicode_msg}], False, {}),
        ("llama31_style", LLAMA31_STYLE_TEMPLATE, with_system, True, {"date_string": "26 Jul 2024"}),
        ("llama31_style_tools", LLAMA31_STYLE_TEMPLATE, chat[:1], True, {"date_string": "01 Jan 2025", "tools": tools}),
        ("blocks_methods", BLOCKS_TEMPLATE, with_system + [{"role": "user", "content": "a banana, a plan!"}], True, {}),
        ("blocks_break", BLOCKS_TEMPLATE, [{"role": "user", "content": "stop here"}, {"role": "user", "content": unicode_msg}], False, {}),
        ("mistral_ok", MISTRAL_STYLE_TEMPLATE, chat, False, {}),
        ("mistral_bad_order", MISTRAL_STYLE_TEMPLATE, [chat[1], chat[0]], False, {}),
        ("mistral_bad_role", MISTRAL_STYLE_TEMPLATE, [chat[0], {"role": "system", "content": "x"}], False, {}),
        ("generation_tag", GENERATION_TAG_TEMPLATE, chat, False, {}),
    ]
    out = {
        "special_tokens": tok.special_tokens_map,
        "cases": [],
    }
    for name, template, messages, agp, kwargs in cases:
        case = {"name": name, "template": template, "messages": messages, "add_generation_prompt": agp, "kwargs": kwargs}
        try:
            case["expected"] = tok.apply_chat_template(
                messages, chat_template=template, add_generation_prompt=agp, tokenize=False, **kwargs)
        except Exception as e:  # jinja2's TemplateError from raise_exception
            case["error"] = str(e)
        out["cases"].append(case)
        print(f"  {name}: {'error: ' + case['error'] if 'error' in case else repr(case['expected'][:60])}")
    with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    make_gqa()
    make_tied()
    make_chat_cases()
    print("fixtures written under", os.path.normpath(FIXTURES))
