#!/usr/bin/env python3
"""Convert a LISA checkpoint into a visword segmenter directory (docs/svp.md §4).

LISA (Lai et al., "LISA: Reasoning Segmentation via Large Language Model") ships an HF-style
directory: config.json (a LLaVA/Llama config with `mm_*` fields), pytorch_model*.bin or
*.safetensors (possibly sharded, with an index), and a Llama tokenizer with `[SEG]` (and
`<im_start>`/`<im_end>`) added. Its tensors:

  model.embed_tokens / model.layers.* / model.norm / lm_head     the LLM        (kept as is)
  model.vision_tower.vision_tower.vision_model.*                 CLIP           (kept as is)
  model.mm_projector.{0,2}                                       LLaVA's MLP    (kept as is)
  model.text_hidden_fcs.0.{0,2}                                  [SEG] → SAM    (kept as is)
  model.visual_model.*                                           SAM, with the original
                                                                 segment-anything names

visword reads SAM under HF `SamModel` names, so `model.visual_model.*` is renamed through
SAM_NAMES below (the one place the two layouts meet). Buffers that are not weights
(`position_ids`, `rotary_emb.inv_freq`) are dropped. config.json is written from LISA's config,
the tokenizer's added tokens and the SAM/CLIP shapes read off the tensors themselves.

Usage:
  python3 tools/convert_lisa.py LISA_DIR OUT_DIR [--vision-tower CLIP_DIR] [--seg-token-id N]
  python3 tools/convert_lisa.py --self-test [--visword target/release/visword]

--vision-tower: for checkpoints saved without the CLIP weights (LISA loads CLIP from
openai/clip-vit-large-patch14 at start-up), an HF CLIP directory to take them from.
--self-test builds a tiny random LISA-layout checkpoint by mapping tiny HF models to LISA's
names in reverse (SAM through SAM_NAMES backwards), converts it, and checks that every SAM
tensor loads into transformers' SamModel unchanged, that the other tensors and the config
survive, and (with a visword binary) that `visword segment` loads and runs the result.

Needs torch, safetensors, transformers (only for the self-test and for making a fast
tokenizer.json out of a sentencepiece tokenizer.model).
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

SAM_PREFIX = "model.visual_model."
VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."

# Original segment-anything name → HF SamModel name, below `model.visual_model.`.
# {i} {j}: layer / module indices; {p}: weight or bias; {a}: an attention projection.
# segment-anything's MLPs (the hypernetworks, the IoU head) are ModuleLists of three Linear
# layers `layers.0..2`; SamModel calls them proj_in, layers.0, proj_out.
SAM_NAMES = [
    ("image_encoder.patch_embed.proj.{p}", "vision_encoder.patch_embed.projection.{p}"),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.blocks.{i}.norm1.{p}", "vision_encoder.layers.{i}.layer_norm1.{p}"),
    ("image_encoder.blocks.{i}.attn.qkv.{p}", "vision_encoder.layers.{i}.attn.qkv.{p}"),
    ("image_encoder.blocks.{i}.attn.proj.{p}", "vision_encoder.layers.{i}.attn.proj.{p}"),
    ("image_encoder.blocks.{i}.attn.rel_pos_h", "vision_encoder.layers.{i}.attn.rel_pos_h"),
    ("image_encoder.blocks.{i}.attn.rel_pos_w", "vision_encoder.layers.{i}.attn.rel_pos_w"),
    ("image_encoder.blocks.{i}.norm2.{p}", "vision_encoder.layers.{i}.layer_norm2.{p}"),
    ("image_encoder.blocks.{i}.mlp.lin1.{p}", "vision_encoder.layers.{i}.mlp.lin1.{p}"),
    ("image_encoder.blocks.{i}.mlp.lin2.{p}", "vision_encoder.layers.{i}.mlp.lin2.{p}"),
    ("image_encoder.neck.0.{p}", "vision_encoder.neck.conv1.{p}"),
    ("image_encoder.neck.1.{p}", "vision_encoder.neck.layer_norm1.{p}"),
    ("image_encoder.neck.2.{p}", "vision_encoder.neck.conv2.{p}"),
    ("image_encoder.neck.3.{p}", "vision_encoder.neck.layer_norm2.{p}"),
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "shared_image_embedding.positional_embedding"),
    ("prompt_encoder.point_embeddings.{i}.weight", "prompt_encoder.point_embed.{i}.weight"),
    ("prompt_encoder.not_a_point_embed.weight", "prompt_encoder.not_a_point_embed.weight"),
    ("prompt_encoder.no_mask_embed.weight", "prompt_encoder.no_mask_embed.weight"),
    ("prompt_encoder.mask_downscaling.0.{p}", "prompt_encoder.mask_embed.conv1.{p}"),
    ("prompt_encoder.mask_downscaling.1.{p}", "prompt_encoder.mask_embed.layer_norm1.{p}"),
    ("prompt_encoder.mask_downscaling.3.{p}", "prompt_encoder.mask_embed.conv2.{p}"),
    ("prompt_encoder.mask_downscaling.4.{p}", "prompt_encoder.mask_embed.layer_norm2.{p}"),
    ("prompt_encoder.mask_downscaling.6.{p}", "prompt_encoder.mask_embed.conv3.{p}"),
    ("mask_decoder.iou_token.weight", "mask_decoder.iou_token.weight"),
    ("mask_decoder.mask_tokens.weight", "mask_decoder.mask_tokens.weight"),
    ("mask_decoder.transformer.layers.{i}.self_attn.{a}.{p}", "mask_decoder.transformer.layers.{i}.self_attn.{a}.{p}"),
    ("mask_decoder.transformer.layers.{i}.norm1.{p}", "mask_decoder.transformer.layers.{i}.layer_norm1.{p}"),
    ("mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.{a}.{p}", "mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.{a}.{p}"),
    ("mask_decoder.transformer.layers.{i}.norm2.{p}", "mask_decoder.transformer.layers.{i}.layer_norm2.{p}"),
    ("mask_decoder.transformer.layers.{i}.mlp.lin1.{p}", "mask_decoder.transformer.layers.{i}.mlp.lin1.{p}"),
    ("mask_decoder.transformer.layers.{i}.mlp.lin2.{p}", "mask_decoder.transformer.layers.{i}.mlp.lin2.{p}"),
    ("mask_decoder.transformer.layers.{i}.norm3.{p}", "mask_decoder.transformer.layers.{i}.layer_norm3.{p}"),
    ("mask_decoder.transformer.layers.{i}.norm4.{p}", "mask_decoder.transformer.layers.{i}.layer_norm4.{p}"),
    ("mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.{a}.{p}", "mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.{a}.{p}"),
    ("mask_decoder.transformer.final_attn_token_to_image.{a}.{p}", "mask_decoder.transformer.final_attn_token_to_image.{a}.{p}"),
    ("mask_decoder.transformer.norm_final_attn.{p}", "mask_decoder.transformer.layer_norm_final_attn.{p}"),
    ("mask_decoder.output_upscaling.0.{p}", "mask_decoder.upscale_conv1.{p}"),
    ("mask_decoder.output_upscaling.1.{p}", "mask_decoder.upscale_layer_norm.{p}"),
    ("mask_decoder.output_upscaling.3.{p}", "mask_decoder.upscale_conv2.{p}"),
    ("mask_decoder.output_hypernetworks_mlps.{i}.layers.0.{p}", "mask_decoder.output_hypernetworks_mlps.{i}.proj_in.{p}"),
    ("mask_decoder.output_hypernetworks_mlps.{i}.layers.1.{p}", "mask_decoder.output_hypernetworks_mlps.{i}.layers.0.{p}"),
    ("mask_decoder.output_hypernetworks_mlps.{i}.layers.2.{p}", "mask_decoder.output_hypernetworks_mlps.{i}.proj_out.{p}"),
    ("mask_decoder.iou_prediction_head.layers.0.{p}", "mask_decoder.iou_prediction_head.proj_in.{p}"),
    ("mask_decoder.iou_prediction_head.layers.1.{p}", "mask_decoder.iou_prediction_head.layers.0.{p}"),
    ("mask_decoder.iou_prediction_head.layers.2.{p}", "mask_decoder.iou_prediction_head.proj_out.{p}"),
]

_FIELDS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "a": r"(?P<a>q_proj|k_proj|v_proj|out_proj)"}

# Buffers some checkpoints store that are not weights.
DROPPED = re.compile(r"(\.position_ids|\.rotary_emb\.inv_freq)$")


def _compile(pattern):
    regex = re.escape(pattern)
    for field, group in _FIELDS.items():
        regex = regex.replace(re.escape("{" + field + "}"), group)
    return re.compile("^" + regex + "$")


_FORWARD = [(_compile(src), dst) for src, dst in SAM_NAMES]
_BACKWARD = [(_compile(dst), src) for src, dst in SAM_NAMES]


def _rename(name, table):
    for regex, template in table:
        m = regex.match(name)
        if m:
            return template.format(**m.groupdict())
    return None


def sam_to_hf(name):
    """segment-anything name (below model.visual_model.) → SamModel name, or None."""
    return _rename(name, _FORWARD)


def sam_from_hf(name):
    """SamModel name → segment-anything name, or None (the self-test's reverse direction)."""
    return _rename(name, _BACKWARD)


def fail(msg):
    sys.exit(f"convert_lisa: error: {msg}")


# ---------------------------------------------------------------------------------------------
# Reading a checkpoint directory


def load_state_dict(path):
    """Every tensor of an HF-style directory (safetensors or pytorch_model*.bin, sharded or not)."""
    files = sorted(os.listdir(path))
    st = [f for f in files if f.endswith(".safetensors")]
    bins = [f for f in files if re.fullmatch(r"pytorch_model.*\.bin", f)]
    chosen = st or bins
    if not chosen:
        fail(f"{path}: no *.safetensors or pytorch_model*.bin")
    state = {}
    for f in chosen:
        full = os.path.join(path, f)
        part = load_file(full) if f.endswith(".safetensors") else torch.load(full, map_location="cpu", weights_only=True, mmap=True)
        for k, v in part.items():
            if k in state:
                fail(f"{full}: tensor {k} appears in more than one shard")
            state[k] = v
    return state


def read_json(path, required=True):
    if not os.path.exists(path):
        if required:
            fail(f"{path} not found")
        return None
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# Shapes → component configs


def layer_indices(state, prefix):
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state for m in [pat.match(k)] if m})


def clip_config(state):
    """CLIPVisionConfig fields read off the tower's tensors (OpenAI CLIP: 64-wide heads)."""
    p = VISION_PREFIX
    try:
        hidden = state[p + "embeddings.class_embedding"].shape[0]
        patch = state[p + "embeddings.patch_embedding.weight"].shape[2]
        positions = state[p + "embeddings.position_embedding.weight"].shape[0]
        intermediate = state[p + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        fail(f"the checkpoint has no CLIP vision tower tensor {e}; pass --vision-tower CLIP_DIR")
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        fail(f"{p}embeddings.position_embedding.weight has {positions} rows: not a square grid plus a class token")
    return {
        "model_type": "clip_vision_model",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": len(layer_indices(state, p + "encoder.layers.")),
        "num_attention_heads": hidden // 64,
        "image_size": grid * patch,
        "patch_size": patch,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


def sam_config(state):
    """SamConfig read off the (renamed) SAM tensors: widths, depths, which layers attend
    globally (their rel-pos tables span the whole grid), the head width from the rel-pos tables."""
    p = SAM_PREFIX
    hidden, _, patch, _ = state[p + "vision_encoder.patch_embed.projection.weight"].shape
    layers = layer_indices(state, p + "vision_encoder.layers.")
    out_ch = state[p + "vision_encoder.neck.conv1.weight"].shape[0]
    pos = state.get(p + "vision_encoder.pos_embed")
    grid = pos.shape[1] if pos is not None else 64
    image_size = grid * patch
    rel = [state[p + f"vision_encoder.layers.{i}.attn.rel_pos_h"] for i in layers]
    head_dim = rel[0].shape[1]
    global_layers = [i for i, t in zip(layers, rel) if t.shape[0] == 2 * grid - 1]
    windows = {(t.shape[0] + 1) // 2 for t in rel if t.shape[0] != 2 * grid - 1}
    mlp = state[p + "vision_encoder.layers.0.mlp.lin1.weight"].shape[0]
    c = state[p + "mask_decoder.iou_token.weight"].shape[1]
    return {
        "model_type": "sam",
        "vision_config": {
            "hidden_size": hidden,
            "output_channels": out_ch,
            "num_hidden_layers": len(layers),
            "num_attention_heads": hidden // head_dim,
            "image_size": image_size,
            "patch_size": patch,
            "window_size": windows.pop() if windows else 14,
            "global_attn_indexes": global_layers,
            "num_pos_feats": state[p + "shared_image_embedding.positional_embedding"].shape[1],
            "mlp_dim": mlp,
            "use_abs_pos": pos is not None,
        },
        "prompt_encoder_config": {
            "hidden_size": c,
            "image_size": image_size,
            "patch_size": patch,
            "mask_input_channels": state[p + "prompt_encoder.mask_embed.conv2.weight"].shape[0],
        },
        "mask_decoder_config": {
            "hidden_size": c,
            "mlp_dim": state[p + "mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            "num_hidden_layers": len(layer_indices(state, p + "mask_decoder.transformer.layers.")),
            # Not readable from the shapes: every released SAM uses 8 heads.
            "num_attention_heads": 8,
            "iou_head_hidden_dim": state[p + "mask_decoder.iou_prediction_head.proj_in.weight"].shape[0],
            "num_multimask_outputs": state[p + "mask_decoder.mask_tokens.weight"].shape[0] - 1,
        },
    }


LLAMA_KEYS = [
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "hidden_act", "attention_bias",
    "mlp_bias", "bos_token_id", "eos_token_id", "head_dim", "tie_word_embeddings",
]


def llm_config(lisa, state):
    cfg = {"model_type": "llama"}
    for k in LLAMA_KEYS:
        if lisa.get(k) is not None:
            cfg[k] = lisa[k]
    # LISA resizes the embeddings after adding its tokens; the table is the truth.
    cfg["vocab_size"] = state["model.embed_tokens.weight"].shape[0]
    cfg.setdefault("tie_word_embeddings", "lm_head.weight" not in state)
    return cfg


def added_tokens(path):
    """Token text → id of the tokenizer's added tokens (tokenizer.json, else added_tokens.json)."""
    tok = read_json(os.path.join(path, "tokenizer.json"), required=False)
    if tok is not None:
        return {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    return read_json(os.path.join(path, "added_tokens.json"), required=False) or {}


def copy_tokenizer(src, dst):
    names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "added_tokens.json"]
    for n in names:
        if os.path.exists(os.path.join(src, n)):
            shutil.copy(os.path.join(src, n), os.path.join(dst, n))
    if not os.path.exists(os.path.join(dst, "tokenizer.json")):
        # visword reads tokenizer.json only: make one from the sentencepiece model.
        try:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(src, use_fast=True).save_pretrained(dst)
        except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
            fail(f"{src} has no tokenizer.json and transformers could not make one ({e})")


# ---------------------------------------------------------------------------------------------
# Conversion


def convert_state(state):
    out = {}
    for k, v in state.items():
        if DROPPED.search(k):
            continue
        if k.startswith(SAM_PREFIX):
            new = sam_to_hf(k[len(SAM_PREFIX):])
            if new is None:
                fail(f"{k}: not a segment-anything tensor name this converter knows (SAM_NAMES)")
            out[SAM_PREFIX + new] = v
        else:
            out[k] = v
    return out


def add_vision_tower(state, clip_dir):
    clip_state = load_state_dict(clip_dir)
    n = 0
    for k, v in clip_state.items():
        if k.startswith("vision_model.") and not DROPPED.search(k):
            state[VISION_PREFIX + k[len("vision_model."):]] = v
            n += 1
    if n == 0:
        fail(f"{clip_dir}: no vision_model.* tensors (expected an HF CLIP or CLIPVisionModel checkpoint)")


def convert(src, dst, vision_tower=None, seg_token_id=None):
    lisa = read_json(os.path.join(src, "config.json"))
    state = load_state_dict(src)
    if vision_tower:
        add_vision_tower(state, vision_tower)
    if not any(k.startswith(SAM_PREFIX) for k in state):
        fail(f"{src}: no {SAM_PREFIX}* tensors: not a LISA checkpoint")
    state = convert_state(state)

    added = added_tokens(src)
    seg = seg_token_id if seg_token_id is not None else lisa.get("seg_token_idx", added.get("[SEG]"))
    if seg is None:
        fail("the tokenizer has no [SEG] token and the config no seg_token_idx; pass --seg-token-id")
    select = lisa.get("mm_vision_select_feature", "patch")
    if select != "patch":
        fail(f"mm_vision_select_feature `{select}`: only `patch` (class token dropped) is supported")
    config = {
        "model_type": "visword_segmenter",
        "vision": clip_config(state),
        "vision_feature_layer": lisa.get("mm_vision_select_layer", -2),
        "llm": llm_config(lisa, state),
        "sam": sam_config(state),
        "projector": "mlp",
        "seg_token_id": seg,
        "max_new_tokens": 32,
    }
    if lisa.get("mm_use_im_start_end"):
        for field, token in [("image_start_token_id", "<im_start>"), ("image_end_token_id", "<im_end>")]:
            if token not in added:
                fail(f"mm_use_im_start_end is set but the tokenizer has no {token}")
            config[field] = added[token]

    parent = os.path.dirname(os.path.abspath(dst))
    if os.path.exists(dst) and os.listdir(dst):
        fail(f"{dst} exists and is not empty")
    tmp = tempfile.mkdtemp(prefix=".convert_lisa.", dir=parent)
    try:
        save_file({k: v.contiguous() for k, v in sorted(state.items())}, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        copy_tokenizer(src, tmp)
        if os.path.exists(dst):
            os.rmdir(dst)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config


# ---------------------------------------------------------------------------------------------
# Self-test: a tiny LISA-layout checkpoint made from tiny HF models in reverse


def tiny_models(seed=0):
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, SamConfig, SamModel

    torch.manual_seed(seed)
    sam = SamModel(SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=3, num_attention_heads=2, image_size=128,
                           patch_size=16, window_size=3, global_attn_indexes=[1], mlp_dim=40, num_pos_feats=8),
        prompt_encoder_config=dict(hidden_size=16, image_size=128, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=24, num_hidden_layers=2, num_attention_heads=8, iou_head_hidden_dim=16),
    )).eval()
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=1,
                                            image_size=28, patch_size=14, hidden_act="quick_gelu")).eval()
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                                       vocab_size=264, max_position_embeddings=512, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for m in (sam, clip, llm):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape) * 0.05)
    return sam, clip, llm


def byte_tokenizer(path, extra):
    """A byte-level BPE tokenizer.json with `extra` added tokens after the 256 bytes + 3 specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i, sym in enumerate(sorted(ByteLevel.alphabet(), key=lambda s: _byte_of(s))):
        vocab[sym] = 3 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.add_tokens(extra)
    tok.save(path)
    return {t: tok.token_to_id(t) for t in extra}


def _byte_of(sym):
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(map(chr, cs), bs))[sym]


def self_test(visword=None):
    from transformers import SamModel

    sam, clip, llm = tiny_models()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "lisa"), os.path.join(tmp, "visword")
        os.makedirs(src)
        d = llm.config.hidden_size
        state = dict(llm.state_dict())
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # an old-style buffer
        for k, v in clip.state_dict().items():
            # transformers 5's CLIPVisionModel has no `vision_model` level; 4's had one.
            state[VISION_PREFIX + k.removeprefix("vision_model.")] = v
        state[VISION_PREFIX + "embeddings.position_ids"] = torch.arange(5)[None]
        hf_sam = {k: v for k, v in sam.state_dict().items() if k != "prompt_encoder.shared_embedding.positional_embedding"}
        for k, v in hf_sam.items():
            orig = sam_from_hf(k)
            assert orig is not None, f"SAM_NAMES has no entry for SamModel tensor {k}"
            state[SAM_PREFIX + orig] = v
        g = torch.Generator().manual_seed(1)
        for name, shape in [("model.mm_projector.0", (d, 64)), ("model.mm_projector.2", (d, d)),
                            ("model.text_hidden_fcs.0.0", (d, d)), ("model.text_hidden_fcs.0.2", (16, d))]:
            state[name + ".weight"] = torch.randn(shape, generator=g) * 0.05
            state[name + ".bias"] = torch.randn(shape[0], generator=g) * 0.05
        # Two pytorch_model shards with an index, as LISA's release is saved.
        names = sorted(state)
        half = len(names) // 2
        index = {"metadata": {}, "weight_map": {}}
        for i, part in enumerate([names[:half], names[half:]]):
            fname = f"pytorch_model-0000{i + 1}-of-00002.bin"
            torch.save({k: state[k].contiguous() for k in part}, os.path.join(src, fname))
            index["weight_map"].update({k: fname for k in part})
        with open(os.path.join(src, "pytorch_model.bin.index.json"), "w") as f:
            json.dump(index, f)
        ids = byte_tokenizer(os.path.join(src, "tokenizer.json"), ["[SEG]", "<im_start>", "<im_end>"])
        lisa_cfg = dict(llm.config.to_dict(), model_type="llava", mm_vision_select_layer=-2, mm_use_im_start_end=True,
                        mm_vision_tower="openai/clip-vit-large-patch14", out_dim=16, vocab_size=264)
        with open(os.path.join(src, "config.json"), "w") as f:
            json.dump(lisa_cfg, f)

        cfg = convert(src, dst)
        out = load_file(os.path.join(dst, "model.safetensors"))

        # SAM: every tensor back under its SamModel name, unchanged, loading strictly.
        sam_out = {k[len(SAM_PREFIX):]: v for k, v in out.items() if k.startswith(SAM_PREFIX)}
        assert set(sam_out) == set(hf_sam), sorted(set(sam_out) ^ set(hf_sam))
        for k, v in hf_sam.items():
            assert torch.equal(sam_out[k], v), k
        fresh = SamModel(sam.config)
        missing, unexpected = fresh.load_state_dict(sam_out, strict=False)
        assert not unexpected and set(missing) <= {"prompt_encoder.shared_embedding.positional_embedding"}, (missing, unexpected)
        # Everything else is kept as is, buffers dropped.
        for k, v in state.items():
            if k.startswith(SAM_PREFIX):
                continue
            if DROPPED.search(k):
                assert k not in out, k
            else:
                assert torch.equal(out[k], v), k
        # The config read off the shapes is the models' own.
        v, s = cfg["vision"], cfg["sam"]
        assert (v["hidden_size"], v["image_size"], v["patch_size"], v["num_hidden_layers"], v["intermediate_size"]) == (64, 28, 14, 3, 96), v
        sv, sc = s["vision_config"], sam.config.vision_config
        assert (sv["hidden_size"], sv["num_attention_heads"], sv["global_attn_indexes"], sv["window_size"], sv["mlp_dim"]) == \
               (sc.hidden_size, sc.num_attention_heads, list(sc.global_attn_indexes), sc.window_size, sc.mlp_dim), sv
        assert s["mask_decoder_config"]["mlp_dim"] == 24 and s["prompt_encoder_config"]["mask_input_channels"] == 8, s
        assert (cfg["seg_token_id"], cfg["image_start_token_id"], cfg["image_end_token_id"]) == (ids["[SEG]"], ids["<im_start>"], ids["<im_end>"])
        assert cfg["llm"]["vocab_size"] == 264 and cfg["llm"]["model_type"] == "llama"
        # Names the converter does not know are refused, not passed through.
        try:
            convert_state({SAM_PREFIX + "image_encoder.blocks.0.attn.unknown": torch.zeros(1)})
            raise AssertionError("an unknown SAM name was accepted")
        except SystemExit as e:
            assert "unknown" in str(e)

        if visword:
            img = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "images", "chelsea_120x80.png")
            r = subprocess.run([visword, "segment", "--model", dst, img, "the cat", "--max-new-tokens", "4", "--json"],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            report = json.loads(r.stdout)
            assert report["visual_tokens"] == 4, report
            print(f"visword segment on the converted model: {report}")
        else:
            print("(no visword binary given: skipped running the converted model)")
    print("convert_lisa self-test: ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", nargs="?", help="LISA checkpoint directory")
    ap.add_argument("dst", nargs="?", help="output segmenter directory (new)")
    ap.add_argument("--vision-tower", help="HF CLIP directory for checkpoints saved without the vision tower")
    ap.add_argument("--seg-token-id", type=int, help="the [SEG] id, when neither the config nor the tokenizer names it")
    ap.add_argument("--self-test", action="store_true", help="convert a tiny synthetic LISA checkpoint and check the result")
    ap.add_argument("--visword", help="with --self-test: a visword binary to run on the converted model")
    a = ap.parse_args()
    if a.self_test:
        self_test(a.visword)
        return
    if not (a.src and a.dst):
        ap.error("give LISA_DIR and OUT_DIR (or --self-test)")
    cfg = convert(a.src, a.dst, a.vision_tower, a.seg_token_id)
    print(f"wrote {a.dst}: vision {cfg['vision']['image_size']}px/{cfg['vision']['patch_size']}, "
          f"LLM {cfg['llm']['hidden_size']}×{cfg['llm']['num_hidden_layers']}, SAM {cfg['sam']['vision_config']['hidden_size']} wide")


if __name__ == "__main__":
    main()
