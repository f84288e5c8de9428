#!/usr/bin/env python3
"""The referring segmenter end to end in PyTorch/NumPy (docs/svp.md §4): the specification
tests/segmenter_parity.rs holds `visword segment` to, and its tiny random-weight fixture.

Usage (from anywhere; torch 2.11, transformers 5.24, tokenizers, jinja2, safetensors, pillow,
torchvision, numpy on the CPU):  python3 tools/reference/make_segmenter.py
It imports svp_superpixels.py and svp_projector.py from this directory.

Writes tests/fixtures/segmenter_tiny/:

  config.json        docs/svp.md §4's format: HF configs of the three models (as save_pretrained
                     writes them), projector "svp", the svp and superpixels blocks, the special
                     token ids, question template, LLaVA-v1 chat template, max_new_tokens
  model.safetensors  LISA's tensor names: the LLM (`model.embed_tokens`, `model.layers.*`,
                     `model.norm`, `lm_head`), the vision tower (`model.vision_tower.vision_tower.`
                     + `vision_model.` + CLIPVisionModel names, as LISA's checkpoints carry them),
                     `model.mm_projector.{0,2}`, SAM (`model.visual_model.` + SamModel names),
                     `model.text_hidden_fcs.0.{0,2}`, `model.svp.*`
  tokenizer.json     byte-level BPE without merges: <unk> 0, <s> 1, </s> 2, the 256 byte
                     symbols 3..258 (byte b is id 3 + b), [SEG] 259, <im_start> 260, <im_end> 261;
                     the post-processor adds <s> ([SEG] and the image tokens are ordinary added
                     tokens, as LISA adds them)
  tokenizer_config.json   names <s>, </s>, <unk> (as `visword init` writes it)
  photo.png          the input: a 120×30 strip (rows 20..50, through the eyes) of
                     tests/fixtures/images/chelsea_120x80.png. A 4:1 photo keeps everything small:
                     SAM's resized image is 1024×256, its low-res crop 64×256 cells, and CLIP's
                     centre crop (the view) 64×64 of them
  clip_pixels.png    the CLIP processor's resized, centre-cropped 336×336 image before
                     normalisation, and
  sam_pixels.png     SAM's resized 1024×256 image before normalisation and padding: with the
                     formula below they give both processors' pixel_values exactly (checked bit
                     for bit here; the f32 tensors themselves would be 14 MB)
  reference.safetensors  (f32 unless noted)
      view                [X0, Y0, X1, Y1) of the encoder's view in low-res cell units (§1)
      points              [64, 2] the superpixel point grid in SAM's input frame
      label_map           i32 [64, 256], coverage [S, 576], geometry [S, 7] (S = 16)
      prefix_ids, suffix_ids   i32: the prompt around the visual tokens (§4)
      and for P in (svp, mlp), the run with projector P:
      P.visual_tokens     [S or 576, 64]
      P.answer_ids        i32: the generated ids, EOS included
      P.seg_embedding     [n_seg, 16] (text_hidden_fcs of the states that emitted [SEG])
      P.mask_logits       [n_seg, 65, 256] SAM's low-res single-mask logits, the first 65 of 256
                          rows: the 64 that show the image and the one bilinear upsampling reads
                          past them (the rest is padding)
      P.mask              u8 [30, 120] the union of the thresholded masks (0/1)

pixel_values from the PNGs (what transformers' torchvision backend computes, in f32):
`(u8 − 255·mean) / (255·std)` per channel with 255·mean and 255·std rounded to f32 first; SAM's
input is that in the top-left 256×1024 of a zero 1024×1024 canvas.

Models: CLIPVisionModel 336/14 (24×24 patches), hidden 32, 2 layers, 4 heads; LlamaForCausalLM
hidden 64, 2 layers, 4 heads, 2 kv heads; SamModel at the released geometry (1024 input, 64²
embedding, 256² masks) 16 wide, 2 layers (make_sam.py's sam_1024 shapes); text_hidden_fcs maps
d = 64 to SAM's prompt width 16.

Weights (seeded: torch.manual_seed(0), one generator for CLIP, the LLM and the projectors, SAM's
own): as docs/svp.md's random-weight models — N(0, 0.02²) — except that norm weights are
1 + N(0, 0.1²) and biases N(0, 0.02²), so a missing or swapped norm or bias shows. The LLM is
steered as the doc says (channel 0: +√d on the prompt's last token ':', −√d on [SEG]; no o_proj /
down_proj writes it; lm_head gives [SEG] +10 and EOS −10): the answer is [SEG] then EOS, whatever
the visual tokens. SAM, so that superpixels and the final mask have structure (a random SAM's masks
are a 4×4 checkerboard of one sign): make_sam.py's fan-in-scaled draw with seed SAM_SEED;
transposed-convolution taps equal over each 2×2 kernel and hypernetwork outputs ×10 (`blob_masks`);
mask token 0's hypernetwork bias re-aimed so the [SEG] mask splits the image (`aim_seg_mask`).

The pipeline (docs/svp.md §4), for the expression "the cat": CLIPImageProcessor /
SamImageProcessor preprocessing; SAM image embedding; superpixels (point grid over the view,
multimask decoding through SamModel, then svp_superpixels.py); CLIP hidden state −2 without the
class token; the projector (svp_projector.py, or the MLP); prompt assembly (the chat template
rendered as transformers' apply_chat_template renders it, split at <image>, prefix with special
tokens, suffix without); prefill with inputs_embeds and greedy decoding; text_hidden_fcs on the
last-layer state that emitted each [SEG]; SAM's mask decoder with it as the only sparse token and
the no-mask dense embedding, single mask; post_process_masks to 30×120; threshold 0.

The superpixel thresholds are permissive (random SAM weights: no IoU or stability filtering) and
every step acts on this image (filters, NMS, level selection, rest regions, merging). The script
checks the label map is robust: perturbing every mask logit by ±2e-4 and every IoU prediction by
±1e-5 changes nothing, so float rounding differences between implementations cannot flip it.

Deterministic: re-running writes identical files.
"""

import json
import os
import sys

import jinja2
import jinja2.ext
import numpy as np
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers import AddedToken
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SamModel,
)
from transformers.models.sam.image_processing_sam import SamImageProcessor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_sam  # noqa: E402  (SAM shapes and its fan-in-scaled random draw)
import svp_projector  # noqa: E402
import svp_superpixels  # noqa: E402

ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "segmenter_tiny")
SOURCE = os.path.join(ROOT, "tests", "fixtures", "images", "chelsea_120x80.png")
PHOTO_ROWS = (20, 50)  # a 4:1 strip through the cat's eyes
EXPRESSION = "the cat"

UNK, BOS, EOS = 0, 1, 2
BYTE0 = 3
SEG, IM_START, IM_END = 259, 260, 261
VOCAB = 262

CLIP_SIZE, CLIP_PATCH = 336, 14
GRID = CLIP_SIZE // CLIP_PATCH
VISION_FEATURE_LAYER = -2

QUESTION_TEMPLATE = "<image>\n{expression} Please output segmentation mask."
LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
# LLaVA-v1's conversation (LISA's): system, " USER: " message, " ASSISTANT:" (answers end in </s>).
CHAT_TEMPLATE = (
    '{{ "' + LLAVA_SYSTEM + '" }}'
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ ' USER: ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ASSISTANT: ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"
)
MAX_NEW_TOKENS = 32

SVP = {"ssa_heads": 4, "mlp_ratio": 2, "pos_temperature": 10000.0, "ln_eps": 1e-5}
# Permissive thresholds (random SAM weights predict low IoUs and masks with soft edges): no IoU or
# stability filtering, a box NMS that only drops near-duplicates, and a cap that makes merging run.
SUPERPIXELS = {
    "points_per_side": 8,
    "points_per_batch": 64,
    "pred_iou_thresh": -1.0,
    "whole_level_bonus": 0.1,
    "stability_thresh": 0.0,
    "stability_offset": 1.0,
    "box_nms_thresh": 0.9,
    "min_area": 100.0,
    "level_overlap_thresh": 0.3,
    "min_region_area": 256.0,
    "max_superpixels": 16,
    "rest_regions": True,
}
# SAM draws from its own generator; this seed gives masks on which every superpixel step acts.
SAM_SEED = 30


# ---------------------------------------------------------------------------------------------
# Tokenizer


def byte_symbols():
    """GPT-2's byte → printable-unicode table: printable Latin-1 bytes stand for themselves, the
    others map to 256 + k in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def make_tokenizer() -> Tokenizer:
    vocab = {"<unk>": UNK, "<s>": BOS, "</s>": EOS}
    for b, sym in byte_symbols().items():
        vocab[sym] = BYTE0 + b
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    # LISA adds these as ordinary tokens: matched whole in text, kept by skip_special_tokens.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("[SEG]", "<im_start>", "<im_end>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    for name, i in (("[SEG]", SEG), ("<im_start>", IM_START), ("<im_end>", IM_END)):
        assert tok.token_to_id(name) == i, name
    return tok


def check_tokenizer(tok: Tokenizer) -> None:
    """Bytes map to 3 + b, text round-trips, specials are whole tokens."""
    text = "A chat… USER: <image>\nthe cat, naïve 日本 ASSISTANT:"
    ids = tok.encode(text, add_special_tokens=False).ids
    # "<image>" is plain text here: only the tokens added above are special.
    assert ids == [BYTE0 + b for b in text.encode("utf-8")], ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.encode("x", add_special_tokens=True).ids == [BOS, BYTE0 + ord("x")]
    assert tok.encode("[SEG]</s>", add_special_tokens=False).ids == [SEG, EOS]
    assert tok.decode([SEG], skip_special_tokens=False) == "[SEG]"


# ---------------------------------------------------------------------------------------------
# Models


def clip_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=CLIP_SIZE,
        patch_size=CLIP_PATCH,
        hidden_act="quick_gelu",
        projection_dim=32,
    )


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=None,
        tie_word_embeddings=False,
    )


def draw(model: torch.nn.Module, gen: torch.Generator) -> None:
    """N(0, 0.02²) weights, 1 + N(0, 0.1²) norm weights, N(0, 0.02²) biases."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def steer(llama: LlamaForCausalLM, last_prompt_token: int) -> None:
    """docs/svp.md "Random-weight models": channel 0 of the residual stream carries the answer."""
    m = llama.model
    root_d = llama.config.hidden_size**0.5
    with torch.no_grad():
        m.embed_tokens.weight[:, 0] = 0.0
        m.embed_tokens.weight[last_prompt_token, 0] = root_d
        m.embed_tokens.weight[SEG, 0] = -root_d
        for layer in m.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        llama.lm_head.weight[:, 0] = 0.0
        llama.lm_head.weight[SEG, 0] = 10.0
        llama.lm_head.weight[EOS, 0] = -10.0


def blob_masks(sam: SamModel) -> None:
    """Random transposed-convolution taps paint a 4×4 checkerboard into every mask; taps equal
    across each 2×2 kernel upsample instead, so masks are regions of the 64² embedding grid. The
    hypernetwork output ×10 moves logits away from 0 (and from the stability offset)."""
    md = sam.mask_decoder
    with torch.no_grad():
        for conv in (md.upscale_conv1, md.upscale_conv2):
            conv.weight.copy_(conv.weight[:, :, :1, :1].expand_as(conv.weight).clone())
        for mlp in md.output_hypernetworks_mlps:
            mlp.proj_out.weight *= 10.0
            mlp.proj_out.bias *= 10.0


def seg_head(d: int, out: int) -> torch.nn.Sequential:
    """LISA's text_hidden_fcs[0]: Linear, ReLU, Linear (`model.text_hidden_fcs.0.{0,2}`)."""
    return torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, out))


class Segmenter:
    def __init__(self, gen: torch.Generator, last_prompt_token: int):
        self.clip = CLIPVisionModel(clip_config()).eval()
        draw(self.clip, gen)
        self.llama = LlamaForCausalLM._from_config(llama_config(), attn_implementation="eager").eval()
        draw(self.llama, gen)
        steer(self.llama, last_prompt_token)
        self.sam = SamModel(make_sam.narrow_1024_config()).eval()
        make_sam.randomize(self.sam, torch.Generator().manual_seed(SAM_SEED))
        blob_masks(self.sam)
        c, d = self.clip.config.hidden_size, self.llama.config.hidden_size
        self.sam_width = self.sam.config.prompt_encoder_config.hidden_size
        self.mm_projector = svp_projector.llava_mlp(c, d).eval()
        draw(self.mm_projector, gen)
        self.text_hidden_fcs = seg_head(d, self.sam_width).eval()
        draw(self.text_hidden_fcs, gen)
        self.svp = svp_projector.SvpProjector(c, **SVP).eval()
        draw(self.svp, gen)

    def state_dict(self) -> dict:
        """Every tensor under its LISA checkpoint name."""
        out = {}

        def put(prefix, module, skip=()):
            for k, v in module.state_dict().items():
                if k not in skip:
                    out[prefix + k] = v

        llama = self.llama.state_dict()
        for k, v in llama.items():
            out[k] = v  # `model.embed_tokens`, `model.layers.*`, `model.norm`, `lm_head`
        put("model.vision_tower.vision_tower.vision_model.", self.clip)
        put("model.mm_projector.", self.mm_projector)
        # transformers ties the prompt encoder's Fourier matrix to the shared one and saves one copy.
        put("model.visual_model.", self.sam, skip=("prompt_encoder.shared_embedding.positional_embedding",))
        put("model.text_hidden_fcs.0.", self.text_hidden_fcs)
        put("model.svp.", self.svp)
        return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def hf_config(config) -> dict:
    """A config as save_pretrained writes it (only what differs from the defaults)."""
    return json.loads(config.to_json_string(use_diff=True))


def segmenter_config(seg: Segmenter) -> dict:
    return {
        "model_type": "visword_segmenter",
        "vision": hf_config(seg.clip.config),
        "vision_feature_layer": VISION_FEATURE_LAYER,
        "llm": hf_config(seg.llama.config),
        "sam": hf_config(seg.sam.config),
        "projector": "svp",
        "svp": SVP,
        "superpixels": SUPERPIXELS,
        "seg_token_id": SEG,
        "image_start_token_id": IM_START,
        "image_end_token_id": IM_END,
        "question_template": QUESTION_TEMPLATE,
        "chat_template": CHAT_TEMPLATE,
        "max_new_tokens": MAX_NEW_TOKENS,
    }


# ---------------------------------------------------------------------------------------------
# Prompt


def render_prompt(tok: Tokenizer, expression: str) -> str:
    """The chat template over one user message, rendered as apply_chat_template renders it."""
    message = QUESTION_TEMPLATE.replace("{expression}", expression)
    messages = [{"role": "user", "content": message}]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    text = env.from_string(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True, **specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    via_hf = fast.apply_chat_template(messages, chat_template=CHAT_TEMPLATE, add_generation_prompt=True, tokenize=False)
    assert text == via_hf, (text, via_hf)
    assert text.count("<image>") == 1
    return text


def split_prompt(tok: Tokenizer, text: str):
    i = text.index("<image>")
    prefix = tok.encode(text[:i], add_special_tokens=True).ids
    suffix = tok.encode(text[i + len("<image>") :], add_special_tokens=False).ids
    return prefix, suffix


# ---------------------------------------------------------------------------------------------
# Preprocessing


def clip_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE})


def fused_stats(mean, std):
    """255·mean and 255·std in f32, as the torchvision backend folds the rescale into them."""
    k = np.float32(255.0)
    return np.asarray(mean, np.float32) * k, np.asarray(std, np.float32) * k


def normalise(u8: np.ndarray, mean, std) -> np.ndarray:
    """[H, W, 3] u8 → [3, H, W] f32 exactly as the processors compute it."""
    m, s = fused_stats(mean, std)
    x = u8.astype(np.float32).transpose(2, 0, 1)
    return (x - m[:, None, None]) / s[:, None, None]


def unnormalise(pv: np.ndarray, mean, std) -> np.ndarray:
    m, s = fused_stats(mean, std)
    u = np.rint(pv * s[:, None, None] + m[:, None, None])
    assert u.min() >= 0 and u.max() <= 255
    return u.astype(np.uint8).transpose(1, 2, 0)


def preprocess(image: Image.Image):
    """Both processors' pixel_values, and the u8 images they are exact functions of."""
    cp = clip_processor()
    clip_pv = cp(images=image, return_tensors="pt")["pixel_values"].float()
    sp = SamImageProcessor()
    s = sp(images=image, return_tensors="pt")
    sam_pv = s["pixel_values"].float()
    rh, rw = (int(v) for v in s["reshaped_input_sizes"][0])
    clip_u8 = unnormalise(clip_pv[0].numpy(), cp.image_mean, cp.image_std)
    sam_u8 = unnormalise(sam_pv[0, :, :rh, :rw].numpy(), sp.image_mean, sp.image_std)
    # The PNGs must be a lossless encoding of the f32 inputs.
    assert np.array_equal(normalise(clip_u8, cp.image_mean, cp.image_std), clip_pv[0].numpy())
    canvas = np.zeros(sam_pv.shape[1:], np.float32)
    canvas[:, :rh, :rw] = normalise(sam_u8, sp.image_mean, sp.image_std)
    assert np.array_equal(canvas, sam_pv[0].numpy())
    return clip_pv, sam_pv, clip_u8, sam_u8, (rh, rw)


# ---------------------------------------------------------------------------------------------
# Pipeline


@torch.no_grad()
def superpixels(seg: Segmenter, image_embeddings, original, resized):
    frame = svp_superpixels.Frame.new(original, 1024, 256, svp_superpixels.clip_view_px(*original, CLIP_SIZE))
    assert frame.resized == resized
    points = svp_superpixels.point_grid(frame, SUPERPIXELS["points_per_side"])  # [n², 2], SAM input frame
    pts = torch.tensor(points, dtype=torch.float32)[None, :, None, :]
    labels = torch.ones(pts.shape[:3], dtype=torch.long)
    out = seg.sam(image_embeddings=image_embeddings, input_points=pts, input_labels=labels, multimask_output=True)
    logits = out.pred_masks[0].numpy()  # [n², 3, 256, 256]
    iou = out.iou_scores[0].numpy()  # [n², 3]
    sp = svp_superpixels.superpixels(logits, iou, frame, GRID, svp_superpixels.Config(**SUPERPIXELS))
    check_robust(sp, logits, iou, frame)
    return frame, np.asarray(points, np.float32), sp


def check_robust(sp, logits, iou, frame):
    """The label map must not hinge on the last bits of a logit or an IoU: visword's SAM logits
    differ from transformers' by up to ~6e-5 here, a third of the perturbation."""
    rng = np.random.default_rng(0)
    for _ in range(4):
        dl = rng.choice([-2e-4, 2e-4], size=logits.shape).astype(np.float32)
        di = rng.choice([-1e-5, 1e-5], size=iou.shape).astype(np.float32)
        other = svp_superpixels.superpixels(logits + dl, iou + di, frame, GRID, svp_superpixels.Config(**SUPERPIXELS))
        assert np.array_equal(other.label_map, sp.label_map), "label map is fragile: change the seed or thresholds"


@torch.no_grad()
def vision_features(seg: Segmenter, clip_pv):
    out = seg.clip(pixel_values=clip_pv, output_hidden_states=True)
    return out.hidden_states[VISION_FEATURE_LAYER][0, 1:]  # [P, C] without the class token


@torch.no_grad()
def generate(seg: Segmenter, prefix, suffix, visual):
    """Prefill the assembled embeddings and decode greedily (each step re-runs the whole sequence:
    the answer is two tokens, and no cache keeps the reference simple); also returns, per
    generated token, the last-layer state at the position that emitted it."""
    emb = seg.llama.model.embed_tokens
    ids = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    parts = [emb(ids(prefix)), emb(ids([IM_START])), visual, emb(ids([IM_END])), emb(ids(suffix))]
    x = torch.cat(parts, 0)[None]
    prompt_len = x.shape[1]
    ctx = seg.llama.config.max_position_embeddings
    assert prompt_len < ctx
    generated, states = [], []
    while True:
        out = seg.llama(inputs_embeds=x, use_cache=False, output_hidden_states=True)
        last = out.hidden_states[-1][0, -1]
        # hidden_states[-1] is after the final norm: lm_head of it is the logits.
        assert torch.allclose(seg.llama.lm_head(last), out.logits[0, -1], atol=1e-5)
        nxt = int(torch.argmax(out.logits[0, -1]))  # first maximum: ties go to the lowest id
        generated.append(nxt)
        states.append(last)
        if nxt == EOS or len(generated) == MAX_NEW_TOKENS or prompt_len + len(generated) >= ctx:
            break
        x = torch.cat([x, emb(ids([nxt]))[None]], 1)
    return prompt_len, generated, torch.stack(states)


@torch.no_grad()
def decode_masks(seg: Segmenter, image_embeddings, seg_embedding, original, resized):
    """The [SEG] embeddings as SAM sparse prompts → low-res logits → original-size logits."""
    sam = seg.sam
    n = seg_embedding.shape[0]
    e = sam.config.prompt_encoder_config.image_embedding_size
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, e, e)
    low = sam.mask_decoder(
        image_embeddings=image_embeddings,
        image_positional_embeddings=sam.get_image_wide_positional_embeddings(),
        sparse_prompt_embeddings=seg_embedding[None, :, None, :],
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )[0]  # [1, n, 1, 256, 256]
    full = SamImageProcessor().post_process_masks(low, [list(original)], [list(resized)], binarize=False)[0]
    return low[0, :, 0], full[:, 0]  # [n, 256, 256], [n, H, W]


@torch.no_grad()
def answer(seg: Segmenter, tok: Tokenizer, feats, sp, projector: str):
    """Visual tokens → prompt → greedy answer → the [SEG] embeddings."""
    if projector == "mlp":
        visual = seg.mm_projector(feats)
    else:
        cov = torch.from_numpy(np.asarray(sp.coverage, np.float32))
        geo = torch.from_numpy(np.asarray(sp.geometry, np.float32))
        visual = seg.mm_projector(seg.svp(feats, cov, geo))
    prefix, suffix = split_prompt(tok, render_prompt(tok, EXPRESSION))
    prompt_len, generated, states = generate(seg, prefix, suffix, visual)
    seg_states = states[[i for i, t in enumerate(generated) if t == SEG]]
    seg_embedding = seg.text_hidden_fcs(seg_states)
    text = tok.decode([t for t in generated if t != EOS], skip_special_tokens=False)
    print(f"{projector}: {visual.shape[0]} visual tokens, prompt {prompt_len} tokens, answer {text!r} ({generated})")
    return prefix, suffix, {
        f"{projector}.visual_tokens": visual,
        f"{projector}.answer_ids": torch.tensor(generated, dtype=torch.int32),
        f"{projector}.seg_embedding": seg_embedding,
    }


@torch.no_grad()
def aim_seg_mask(seg: Segmenter, image_embeddings, seg_embedding, resized) -> None:
    """A random SAM's single-mask output is one sign over the whole image (mask token 0's
    hypernetwork vector h meets upscaled features U that barely vary). Re-aim h (through the
    hypernetwork's output bias) at the line through the median U, perpendicular to it, scaled to
    logits of spread ~2: the [SEG] mask then splits the image along the features' structure."""
    md = seg.sam.mask_decoder
    caught = {}
    hooks = [
        md.upscale_conv2.register_forward_hook(lambda m, i, o: caught.__setitem__("u", torch.nn.functional.gelu(o))),
        md.output_hypernetworks_mlps[0].register_forward_hook(lambda m, i, o: caught.__setitem__("h", o)),
    ]
    decode_masks(seg, image_embeddings, seg_embedding[:1], (1, 1), resized)
    for h in hooks:
        h.remove()
    rows = -(-resized[0] * 256 // 1024)  # the low-res rows that show the image
    u = caught["u"][0, :, :rows].reshape(caught["u"].shape[1], -1)  # [2, cells]
    assert u.shape[0] == 2, "the aiming assumes SAM's 16-wide decoder (2 upscaled channels)"
    med = u.median(dim=1).values
    target = torch.stack([-med[1], med[0]])
    target *= 2.0 / float((target @ u).std())
    proj = md.output_hypernetworks_mlps[0].proj_out
    proj.bias += target - caught["h"].reshape(-1)


@torch.no_grad()
def masks(seg: Segmenter, image_embeddings, seg_embedding, original, resized, projector: str):
    n = seg_embedding.shape[0]
    low, full = decode_masks(seg, image_embeddings, seg_embedding, original, resized)
    mask = (full > 0).any(0).to(torch.uint8)
    print(f"{projector}: {n} mask(s), {int(mask.sum())} of {mask.numel()} px on")
    assert 0 < int(mask.sum()) < mask.numel(), "the reference mask should be neither empty nor full"
    # Only the first lh + 1 low-res rows reach the image (bilinear upsampling reads one row past
    # the crop); the rest is padding.
    rows = -(-resized[0] * 256 // 1024) + 1
    return {f"{projector}.mask_logits": low[:, :rows], f"{projector}.mask": mask}


def main() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    gen = torch.Generator().manual_seed(0)
    tok = make_tokenizer()
    check_tokenizer(tok)
    text = render_prompt(tok, EXPRESSION)
    last_token = tok.encode(text.split("<image>")[1], add_special_tokens=False).ids[-1]
    seg = Segmenter(gen, last_token)

    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    strip = Image.open(SOURCE).convert("RGB")
    strip = strip.crop((0, PHOTO_ROWS[0], strip.width, PHOTO_ROWS[1]))
    strip.save(os.path.join(OUT, "photo.png"), optimize=True)
    image = Image.open(os.path.join(OUT, "photo.png")).convert("RGB")
    original = (image.height, image.width)
    clip_pv, sam_pv, clip_u8, sam_u8, resized = preprocess(image)
    Image.fromarray(clip_u8).save(os.path.join(OUT, "clip_pixels.png"), optimize=True)
    Image.fromarray(sam_u8).save(os.path.join(OUT, "sam_pixels.png"), optimize=True)

    with torch.no_grad():
        image_embeddings = seg.sam.get_image_embeddings(sam_pv)
    frame, points, sp = superpixels(seg, image_embeddings, original, resized)
    print(f"superpixels: {sp.stats}")
    feats = vision_features(seg, clip_pv)
    ref = {
        "view": torch.tensor(frame.view, dtype=torch.float32),
        "points": torch.from_numpy(points),
        "label_map": torch.from_numpy(np.asarray(sp.label_map, np.int32)),
        "coverage": torch.from_numpy(np.asarray(sp.coverage, np.float32)),
        "geometry": torch.from_numpy(np.asarray(sp.geometry, np.float32)),
    }
    for projector in ("svp", "mlp"):
        prefix, suffix, out = answer(seg, tok, feats, sp, projector)
        ref.update(out)
    ref["prefix_ids"] = torch.tensor(prefix, dtype=torch.int32)
    ref["suffix_ids"] = torch.tensor(suffix, dtype=torch.int32)
    aim_seg_mask(seg, image_embeddings, ref["svp.seg_embedding"], resized)
    for projector in ("svp", "mlp"):
        ref.update(masks(seg, image_embeddings, ref[f"{projector}.seg_embedding"], original, resized, projector))

    # The weights as the pipeline above used them (aim_seg_mask changed one bias).
    save_file(seg.state_dict(), os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(segmenter_config(seg), f, indent=2, ensure_ascii=False)
        f.write("\n")
    tok.save(os.path.join(OUT, "tokenizer.json"))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "model_max_length": seg.llama.config.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
    }
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=2)
        f.write("\n")
    assert Tokenizer.from_file(os.path.join(OUT, "tokenizer.json")).encode(text).ids == tok.encode(text).ids
    ref = {k: v.detach().contiguous().clone() for k, v in ref.items()}
    save_file(ref, os.path.join(OUT, "reference.safetensors"))
    sizes = {f: os.path.getsize(os.path.join(OUT, f)) for f in sorted(os.listdir(OUT))}
    print(f"wrote {OUT}: {sizes}, {sum(sizes.values())} bytes")


if __name__ == "__main__":
    main()
