#!/usr/bin/env python3
"""Make the CLIP-vision and DINOv2 parity fixtures (tiny seeded models + reference outputs).

Usage:  python3 tools/reference/make_vision.py [--source PATH/TO/chelsea.png]

Needs torch, transformers 5.24, safetensors, pillow and torchvision (the default image processor
backend of transformers 5 is torchvision; the PIL backend is recorded too, for comparison). With
torch 2.11 that is `pip install pillow` and `pip install --no-deps torchvision==0.26.0` (its
matching release; --no-deps keeps the installed torch).

What it writes (all f32, deterministic: every model is seeded and the input is a committed image):

  tests/fixtures/images/chelsea_120x80.png   the test photo (made once from scikit-image's CC0
                                             `chelsea.png` with --source; otherwise read as is)
  tests/fixtures/images/processors/*.json    image-processor configs that exercise upsampling,
                                             bilinear resizing to an exact size and a crop larger
                                             than the resized image (zero padding)
  tests/fixtures/images/preprocess_reference.safetensors
                                             `<case>.torchvision` and `<case>.pil`: the pixel_values
                                             [1,3,H,W] each transformers backend makes from the photo
  tests/fixtures/<model>/                    config.json + model.safetensors (save_pretrained),
                                             preprocessor_config.json and reference.safetensors

Models (sizes deliberately not multiples of 8):
  clip_quick    CLIPVisionModel, quick_gelu, hidden 36, 3 heads (head_dim 12), intermediate 70,
                image 30, patch 6, 3 layers. Saved by transformers 5 (tensor names without the
                `vision_model.` prefix).
  clip_gelu     full CLIPModel (model_type "clip", tensors under `vision_model.`), gelu, hidden 20,
                2 heads, intermediate 50, image 28, patch 7, 2 layers; also run with
                interpolate_pos_encoding=True at 35x42.
  dinov2_small  Dinov2Model with layer scale, hidden 36, 3 heads, mlp_ratio 3, image 28, patch 7,
                3 layers; run at 28x28 (native) and 35x42 (position interpolation).
  dinov2_swiglu Dinov2Model with the SwiGLU FFN, hidden 20, 2 heads, 2 layers, image 28, patch 7;
                run at 28x28 and 28x21 (interpolation to a non-square, smaller grid).

reference.safetensors holds, for each run R ("native", "interp"): `R.pixel_values`,
`R.last_hidden_state`, `R.pooler_output` and `R.hidden_states.{i}` for i = 0..=layers (as
output_hidden_states=True returns them). `image.torchvision` / `image.pil` hold the pixel_values the
model directory's own preprocessor_config.json makes from the photo with each backend; the native
run's input is `image.torchvision`.
"""

import argparse
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    BitImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
)
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
IMG_DIR = os.path.join(FIX, "images")
IMAGE = os.path.join(IMG_DIR, "chelsea_120x80.png")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def make_image(source):
    im = Image.open(source).convert("RGB").resize((120, 80), Image.LANCZOS)
    im.save(IMAGE, optimize=True)


def load_image():
    return Image.open(IMAGE).convert("RGB")


def pixel_values(proc_cls, cfg, image):
    p = proc_cls(**cfg)
    return p(images=image, return_tensors="pt")["pixel_values"].float().contiguous()


def randomize(model, seed):
    """Give every parameter a non-trivial value: HF's init leaves norms at 1/0, biases at 0 and
    tiny attention weights, which would hide mistakes in those paths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.8 + 0.2)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "position_embedding" in name or "cls_token" in name or "class_embedding" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def run(model, px, prefix, out, **kw):
    with torch.no_grad():
        o = model(pixel_values=px, output_hidden_states=True, **kw)
    out[f"{prefix}.pixel_values"] = px
    out[f"{prefix}.last_hidden_state"] = o.last_hidden_state
    out[f"{prefix}.pooler_output"] = o.pooler_output
    for i, h in enumerate(o.hidden_states):
        out[f"{prefix}.hidden_states.{i}"] = h


def save_model(name, model, proc_cfg, fast_cls, pil_cls, runs, image, checkpoint=None):
    """Save `checkpoint` (default: `model`) and the reference outputs of `model`."""
    d = os.path.join(FIX, name)
    shutil.rmtree(d, ignore_errors=True)
    (checkpoint or model).save_pretrained(d)
    fast_cls(**proc_cfg).save_pretrained(d)
    out = {
        "image.torchvision": pixel_values(fast_cls, proc_cfg, image),
        "image.pil": pixel_values(pil_cls, proc_cfg, image),
    }
    for prefix, px, kw in runs(out["image.torchvision"]):
        run(model, px, prefix, out, **kw)
    save_file({k: v.clone().contiguous() for k, v in out.items()}, os.path.join(d, "reference.safetensors"))


def sized(proc_cls, base, h, w, image):
    """The photo preprocessed straight to h×w (no crop): real image content at a non-native size."""
    cfg = dict(base, size={"height": h, "width": w}, do_center_crop=False)
    return pixel_values(proc_cls, cfg, image)


def clip_fixtures(image):
    torch.manual_seed(1)
    cfg = CLIPVisionConfig(
        hidden_size=36, intermediate_size=70, num_hidden_layers=3, num_attention_heads=3,
        image_size=30, patch_size=6, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    m = CLIPVisionModel(cfg).eval()
    randomize(m, 11)
    proc = {"size": {"shortest_edge": 30}, "crop_size": {"height": 30, "width": 30}}
    save_model("clip_quick", m, proc, CLIPImageProcessor, CLIPImageProcessorPil,
               lambda px: [("native", px, {})], image)

    torch.manual_seed(2)
    full = CLIPConfig(
        vision_config=dict(hidden_size=20, intermediate_size=50, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=7, hidden_act="gelu", layer_norm_eps=1e-5),
        text_config=dict(vocab_size=16, hidden_size=8, intermediate_size=12, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        projection_dim=8,
    )
    m = CLIPModel(full).eval()
    randomize(m, 12)
    proc = {"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}}
    interp = sized(CLIPImageProcessor, proc, 35, 42, image)
    save_model("clip_gelu", m.vision_model, proc, CLIPImageProcessor, CLIPImageProcessorPil,
               lambda px: [("native", px, {}), ("interp", interp, {"interpolate_pos_encoding": True})], image,
               checkpoint=m)


def dinov2_fixtures(image):
    proc = {
        "size": {"shortest_edge": 32}, "crop_size": {"height": 28, "width": 28},
        "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
    }
    torch.manual_seed(3)
    cfg = Dinov2Config(
        hidden_size=36, num_hidden_layers=3, num_attention_heads=3, mlp_ratio=3, image_size=28, patch_size=7,
        layerscale_value=0.5, hidden_act="gelu",
    )
    m = Dinov2Model(cfg).eval()
    randomize(m, 13)
    interp = sized(BitImageProcessor, proc, 35, 42, image)
    save_model("dinov2_small", m, proc, BitImageProcessor, BitImageProcessorPil,
               lambda px: [("native", px, {}), ("interp", interp, {})], image)

    torch.manual_seed(4)
    cfg = Dinov2Config(
        hidden_size=20, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, image_size=28, patch_size=7,
        use_swiglu_ffn=True,
    )
    m = Dinov2Model(cfg).eval()
    randomize(m, 14)
    interp = sized(BitImageProcessor, proc, 28, 21, image)
    save_model("dinov2_swiglu", m, proc, BitImageProcessor, BitImageProcessorPil,
               lambda px: [("native", px, {}), ("interp", interp, {})], image)


# Processor configs beyond the model fixtures' own (which downscale and crop).
PROCESSOR_CASES = {
    # Upscaling (80 → 100 on the short side) then a crop.
    "clip_upscale": {"size": {"shortest_edge": 100}, "crop_size": {"height": 64, "width": 64}},
    # Bilinear straight to an exact size, no crop, ImageNet statistics.
    "bilinear_exact": {
        "size": {"height": 40, "width": 50}, "resample": 2, "do_center_crop": False,
        "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
    },
    # A crop larger than the resized image (20×30): the processor pads with zeros first.
    "pad_crop": {"size": {"shortest_edge": 20}, "crop_size": {"height": 25, "width": 27}},
}


def processor_fixtures(image):
    d = os.path.join(IMG_DIR, "processors")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    out = {}
    for case, cfg in PROCESSOR_CASES.items():
        p = CLIPImageProcessor(**cfg)
        with open(os.path.join(d, f"{case}.json"), "w") as f:
            f.write(p.to_json_string())
        out[f"{case}.torchvision"] = pixel_values(CLIPImageProcessor, cfg, image)
        out[f"{case}.pil"] = pixel_values(CLIPImageProcessorPil, cfg, image)
        a, b = out[f"{case}.torchvision"], out[f"{case}.pil"]
        print(f"{case}: {tuple(a.shape)}; torchvision vs pil max {float((a - b).abs().max()):.4f} "
              f"mean {float((a - b).abs().mean()):.5f}")
    save_file(out, os.path.join(IMG_DIR, "preprocess_reference.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", help="scikit-image's chelsea.png, to (re)make the test photo")
    args = ap.parse_args()
    if args.source:
        make_image(args.source)
    torch.set_num_threads(1)  # deterministic reductions
    image = load_image()
    processor_fixtures(image)
    clip_fixtures(image)
    dinov2_fixtures(image)
    total = 0
    for root, _, files in os.walk(FIX):
        for f in files:
            p = os.path.join(root, f)
            if "/common" not in p and (root.startswith(IMG_DIR) or "clip_" in root or "dinov2_" in root):
                total += os.path.getsize(p)
    print(f"vision fixtures: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
