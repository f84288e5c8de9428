#!/usr/bin/env python3
"""Reference fixtures for visword's SAM (transformers `SamModel`).

Writes tests/fixtures/sam_tiny/ with
  config.json, model.safetensors   a tiny SamModel with seeded random weights, saved with
                                   save_pretrained (real HF tensor names and layout)
  reference.safetensors            inputs and SamModel outputs for several prompt kinds
  image.png                        a small deterministic RGB image for the end-to-end path

The tiny config is chosen to exercise every code path of the real model:
  * 128×128 input, patch 16 → an 8×8 grid; window_size 3 does not divide 8, so windowed layers
    pad the grid to 9×9 (padding tokens take part in attention, as in HF);
  * global_attn_indexes [1, 3] mix windowed and global layers; odd MLP sizes;
  * prompt encoder / mask decoder hidden 32 with an attention downsample rate of 2.
Every parameter is drawn from a seeded normal distribution (HF initialises rel-pos tables and
the absolute position embedding to zeros, which would hide bugs).

Reference cases (all share one pixel_values tensor, made by the image processor from image.png,
and its image_embeddings):
  a_*  two prompts with two points each, labels [[1, 0], [1, -10]], multimask on
  b_*  one box plus one point, multimask off
  c_*  a mask prompt (input_masks) plus one point, multimask on
  d_*  two boxes (one per prompt), no points, multimask on
  e_*  a mask prompt alone (no sparse prompt), multimask off
  img_* the image processor path on image.png (160×120, resized to 128×96 with antialiasing, then
        padded; its output is `pixel_values`): two points (labels [1, 0]) and a box given in
        original pixels, their transformed coordinates, the model outputs, and post_process_masks
        before thresholding (img_masks_full, float logits at 120×160)
  relpos_* get_rel_pos with a table whose length differs from 2·size − 1 (the interpolation
        path), for q = k = 5 and for q = 3, k = 5

It also writes tests/fixtures/sam_1024/: a 16-wide SamModel with the released checkpoints'
geometry (1024 input → 64×64 grid, window 14 padded to 70, one global 64×64 layer, 256×256
masks; no absolute position table, to stay small), run on pixel values given by an exact formula (see formula_pixels) with two points and
a box; the reference keeps strided subsets of image_embeddings and pred_masks, and iou_scores.

Run from the repository root:  python3 tools/reference/make_sam.py
Deterministic: torch.manual_seed(0) and numpy seed 0; re-running gives identical files.
"""

import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import SamConfig, SamModel, SamProcessor
from transformers.models.sam.image_processing_sam import SamImageProcessor

OUT = os.path.join("tests", "fixtures", "sam_tiny")
OUT_1024 = os.path.join("tests", "fixtures", "sam_1024")


def tiny_config() -> SamConfig:
    vision = dict(
        hidden_size=48,
        output_channels=32,
        num_hidden_layers=4,
        num_attention_heads=3,
        image_size=128,
        patch_size=16,
        window_size=3,
        global_attn_indexes=[1, 3],
        mlp_dim=91,
        num_pos_feats=16,
    )
    prompt = dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8)
    decoder = dict(
        hidden_size=32,
        mlp_dim=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        attention_downsample_rate=2,
        iou_head_hidden_dim=24,
    )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def narrow_1024_config() -> SamConfig:
    """The released checkpoints' geometry (1024 input, 64×64 grid, window 14 padded to 70,
    a 64×64 global layer, 256×256 masks) at a tiny width."""
    vision = dict(
        hidden_size=16,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=1024,
        patch_size=16,
        window_size=14,
        global_attn_indexes=[1],
        mlp_dim=24,
        num_pos_feats=8,
        # A 64×64×16 absolute position table alone would be 256 KB; the tiny model covers it.
        use_abs_pos=False,
    )
    prompt = dict(hidden_size=16, image_size=1024, patch_size=16, mask_input_channels=8)
    decoder = dict(hidden_size=16, mlp_dim=20, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def formula_pixels(size: int) -> torch.Tensor:
    """[1, 3, size, size] values ((7x + 13y + 29c) mod 256 − 128) / 64: exact in f32, so the
    Rust test rebuilds the same input instead of reading 12 MB from a fixture."""
    c, y, x = torch.meshgrid(torch.arange(3), torch.arange(size), torch.arange(size), indexing="ij")
    return (((7 * x + 13 * y + 29 * c) % 256 - 128).float() / 64.0).unsqueeze(0)


def make_1024(gen: torch.Generator) -> None:
    model = SamModel(narrow_1024_config()).eval()
    randomize(model, gen)
    os.makedirs(OUT_1024, exist_ok=True)
    model.save_pretrained(OUT_1024, safe_serialization=True)
    pixel_values = formula_pixels(1024)
    points = torch.tensor([[[[300.0, 200.0], [700.5, 650.0]]]])
    labels = torch.tensor([[[1, 0]]])
    boxes = torch.tensor([[[100.0, 120.0, 900.0, 1000.0]]])
    with torch.no_grad():
        emb = model.get_image_embeddings(pixel_values)
        out = model(pixel_values=pixel_values, input_points=points, input_labels=labels, input_boxes=boxes)
    ref = {
        "input_points": points,
        "input_labels": labels.float(),
        "input_boxes": boxes,
        # Strided subsets keep the fixture small while covering the whole grid / mask.
        "image_embeddings_stride4": emb[:, :, ::4, ::4],
        "image_embeddings_shape": torch.tensor(emb.shape, dtype=torch.float32),
        "pred_masks_stride8": out.pred_masks[..., ::8, ::8],
        "pred_masks_shape": torch.tensor(out.pred_masks.shape, dtype=torch.float32),
        "iou_scores": out.iou_scores,
    }
    ref = {k: v.detach().to(torch.float32).clone().contiguous() for k, v in ref.items()}
    save_file(ref, os.path.join(OUT_1024, "reference.safetensors"))


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Seeded values for every parameter, scaled so activations stay O(1)."""
    tables = {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, torch.nn.Embedding)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")[-1]
            if "layer_norm" in name:
                base = 1.0 if leaf == "weight" else 0.0
                value = base + 0.1 * torch.randn(p.shape, generator=gen)
            elif leaf == "positional_embedding":
                value = 1.5 * torch.randn(p.shape, generator=gen)
            elif leaf in ("rel_pos_h", "rel_pos_w", "pos_embed"):
                value = 0.3 * torch.randn(p.shape, generator=gen)
            elif name in tables:
                # Learned tokens and prompt embeddings ([n, hidden] tables).
                value = torch.randn(p.shape, generator=gen)
            elif p.dim() >= 2:
                # Linear [out, in], Conv2d [out, in, k, k]: fan-in is everything but dim 0;
                # ConvTranspose2d [in, out, k, k] with kernel == stride: each output sees `in` inputs.
                fan_in = p.shape[0] if "upscale_conv" in name else p[0].numel()
                value = torch.randn(p.shape, generator=gen) / fan_in**0.5
            else:
                value = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(value)


def make_image() -> np.ndarray:
    """160×120 RGB: smooth gradients, a disc and a bar, so resizing has real edges."""
    h, w = 120, 160
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 127 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0)
    g = 40 + 1.2 * x
    b = 200 - 1.4 * y
    disc = (x - 70) ** 2 + (y - 55) ** 2 < 28**2
    r[disc], g[disc], b[disc] = 250, 30, 20
    bar = (x > 110) & (x < 125) & (y > 10) & (y < 100)
    r[bar], g[bar], b[bar] = 10, 10, 240
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def main() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    gen = torch.Generator().manual_seed(0)
    config = tiny_config()
    model = SamModel(config).eval()
    randomize(model, gen)
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)

    ref = {}
    # Image-processor path: resize (antialiased bilinear on uint8), rescale, normalise, pad.
    # Its pixel_values (with the zero padding a real input has) feed every reference case.
    image = make_image()
    Image.fromarray(image).save(os.path.join(OUT, "image.png"), optimize=True)
    pil = Image.open(os.path.join(OUT, "image.png")).convert("RGB")
    processor = SamProcessor(
        image_processor=SamImageProcessor(size={"longest_edge": 128}, pad_size={"height": 128, "width": 128})
    )
    points = [[[80.0, 60.0], [20.0, 100.0]]]
    labels = [[1, 0]]
    box = [[15.0, 10.0, 140.0, 110.0]]
    inputs = processor(images=pil, input_points=[points], input_labels=[labels], input_boxes=[box], return_tensors="pt")
    pixel_values = inputs["pixel_values"].float()
    ref["pixel_values"] = pixel_values
    with torch.no_grad():
        emb = model.get_image_embeddings(pixel_values)
        out = model(
            pixel_values=pixel_values,
            input_points=inputs["input_points"].float(),
            input_labels=inputs["input_labels"],
            input_boxes=inputs["input_boxes"].float(),
            multimask_output=True,
        )
    ref["image_embeddings"] = emb
    full = processor.image_processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
    )[0]
    ref["img_points_original"] = torch.tensor(points)
    ref["img_labels"] = torch.tensor(labels)
    ref["img_box_original"] = torch.tensor(box)
    ref["img_input_points"] = inputs["input_points"].float()
    ref["img_input_boxes"] = inputs["input_boxes"].float()
    ref["img_pred_masks"] = out.pred_masks
    ref["img_iou_scores"] = out.iou_scores
    ref["img_masks_full"] = full.float()

    def run(prefix, multimask, **prompts):
        with torch.no_grad():
            out = model(pixel_values=pixel_values, multimask_output=multimask, **prompts)
        for k, v in prompts.items():
            ref[f"{prefix}_{k}"] = v.to(torch.float32)
        ref[f"{prefix}_pred_masks"] = out.pred_masks
        ref[f"{prefix}_iou_scores"] = out.iou_scores
        # The model recomputes image_embeddings from pixel_values each time; they must agree.
        assert torch.equal(model.get_image_embeddings(pixel_values), emb)

    # (a) two prompts, two points each, mixed labels (a negative point and a padding point).
    run(
        "a",
        True,
        input_points=torch.tensor([[[[20.0, 30.0], [100.5, 64.0]], [[64.0, 64.0], [0.0, 0.0]]]]),
        input_labels=torch.tensor([[[1, 0], [1, -10]]]),
    )
    # (b) one box plus one point, single mask.
    run(
        "b",
        False,
        input_points=torch.tensor([[[[50.0, 40.0]]]]),
        input_labels=torch.tensor([[[1]]]),
        input_boxes=torch.tensor([[[10.0, 12.5, 90.0, 110.0]]]),
    )
    # (c) a mask prompt (low-res logits, 4× the embedding grid) plus one point.
    mask = torch.randn((1, 1, 32, 32), generator=gen) * 3.0
    run(
        "c",
        True,
        input_points=torch.tensor([[[[70.0, 20.0]]]]),
        input_labels=torch.tensor([[[1]]]),
        input_masks=mask,
    )
    # (d) two boxes, one per prompt, no points.
    run("d", True, input_boxes=torch.tensor([[[0.0, 0.0, 127.0, 127.0], [30.0, 40.0, 60.0, 100.0]]]))
    # (e) a mask prompt alone.
    run("e", False, input_masks=mask)

    # get_rel_pos with interpolation: a 7-row table stretched to 9 (q = k = 5) and q ≠ k.
    attn = model.vision_encoder.layers[0].attn
    table = torch.randn((7, 16), generator=gen)
    ref["relpos_table"] = table
    with torch.no_grad():
        ref["relpos_q5_k5"] = attn.get_rel_pos(5, 5, table)
        ref["relpos_q3_k5"] = attn.get_rel_pos(3, 5, table)

    ref = {k: v.detach().to(torch.float32).clone().contiguous() for k, v in ref.items()}
    save_file(ref, os.path.join(OUT, "reference.safetensors"))
    make_1024(gen)
    for out in (OUT, OUT_1024):
        total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print(f"wrote {out}: {sorted(os.listdir(out))}, {total} bytes")


if __name__ == "__main__":
    main()
