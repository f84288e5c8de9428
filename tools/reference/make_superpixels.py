#!/usr/bin/env python3
"""Reference fixture for visword's SAM superpixels (docs/svp.md §1–2).

Writes tests/fixtures/superpixels/ with
  config.json, model.safetensors  a SamModel at the released checkpoints' geometry (1024 input,
                                  patch 16 → 64×64 embedding, 256×256 masks) with tiny widths
                                  (vision hidden 16, 2 layers; prompt/decoder hidden 32), seeded
                                  random weights (make_sam.randomize) with the mask decoder shaped
                                  so masks follow the image (shape_masks), saved with
                                  save_pretrained (real HF names)
  photo.png                       a 4:1 strip of assets/photos/chelsea.jpg (320×80)
  reference.safetensors           transformers' multimask logits and IoU predictions for a 6×6
                                  point grid, what tools/reference/svp_superpixels.py makes of
                                  them, and a synthetic case

Why a 4:1 strip: CLIP-336's processor shows the central square of an image, so on a 4:1 photo the
view is 64×64 low-res cells (a 3:2 photo would give 171×171), and only view cells are stored:
  logits_view   f16 [N, 3, 64, 64]  pred_masks[0, :, :, vy0:vy1, vx0:vx1] (view_cells gives vy0,
                                    vx0, vy1, vx1); every value the spec reads
  iou_scores    f32 [N, 3]
  points        f32 [N, 2]          the prompts, SAM input frame (svp_superpixels.point_grid)
  label_map     u8 [lh, lw]         the reference label map + 1 (0: no superpixel)
  geometry      f32 [S, 7], coverage f32 [S, 576]
  label_map_no_rest                 the label map of the same logits with rest_regions = false
  view          f32 [4]             the view in cell units (the metadata holds it exactly)
The script checks that the f16 logits give the same label map, geometry and coverage as the f32
ones, so the stored logits stand for the model's.

Random masks reach only some steps of the procedure (their boxes nearly all span the view, so
NMS leaves few and no mask is painted over), so a synthetic case covers the rest: disc logits
around the prompts of a 451×300 image's CLIP view, exact in f32 and rebuilt by the Rust test from
  synth_params  i32 [N, 3, 5]       (cx, cy, R, e, a) per mask (see synthetic_logits)
  synth_iou_scores, synth_label_map, synth_geometry, synth_coverage   as above
Its IoU predictions lie on a 1/64 grid so that scores tie. The script asserts that each case
makes the filters, NMS and level selection reject masks, and gives rest regions and merges; the
synthetic one also has accepted masks of all three levels and a mask painted over.

The metadata entry `reference` is one JSON object: the configs (`config`, `config_no_rest`,
`synth_config`; thresholds chosen so the steps above act, the random model's IoU predictions being
far below the defaults), the patch grid, the views, and the counts of what each step kept
(`stats`, `stats_no_rest`, `synth_stats`).

Run from the repository root:  python3 tools/reference/make_superpixels.py
Deterministic: torch.manual_seed(0) and a seeded generator; re-running gives identical files.
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import SamConfig, SamModel, SamProcessor
from transformers.models.sam.image_processing_sam import SamImageProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_sam import randomize  # noqa: E402  (the same seeded initialisation as the SAM fixtures)
import svp_superpixels as svp  # noqa: E402

OUT = os.path.join("tests", "fixtures", "superpixels")
SOURCE = os.path.join("assets", "photos", "chelsea.jpg")
POINTS_PER_SIDE = 6
GRID = 24

CONFIG = svp.Config(
    points_per_side=POINTS_PER_SIDE,
    points_per_batch=16,
    pred_iou_thresh=-0.5,
    stability_thresh=0.3,
    box_nms_thresh=0.95,
    level_overlap_thresh=0.7,
    max_superpixels=12,
)


def model_config() -> SamConfig:
    vision = dict(
        hidden_size=16,
        output_channels=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=1024,
        patch_size=16,
        window_size=14,
        global_attn_indexes=[1],
        mlp_dim=24,
        num_pos_feats=16,
        use_abs_pos=False,
    )
    prompt = dict(hidden_size=32, image_size=1024, patch_size=16, mask_input_channels=8)
    decoder = dict(hidden_size=32, mlp_dim=20, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


# Per multimask level (sub-part, part, whole): the threshold offset and the contrast of its mask
# logits (see shape_masks).
LEVELS = [(2.8, 4.0), (-6.5, 32.0), (-5.2, 20.0)]


def shape_masks(model: SamModel) -> None:
    """Three changes to the seeded random mask decoder, so that its masks follow the image like
    SAM's do instead of being a stripe pattern or all-on / all-off:
      1. the transposed convolutions' four 2×2 taps are made equal (each takes its first tap),
         so a mask follows the 64×64 features instead of the kernels' 4-cell stripes;
      2. channel 0 of the upscaled features is a constant GELU(1) (zero weights, bias 1), so a
         mask token's weight on it is a threshold offset;
      3. per level (LEVELS), that weight is a fixed offset and the other weights are scaled, so
         the three levels cut the image's feature field at different heights with logits of a few
         units (stability scores spread out instead of being 0 or 1).
    The weights stay in SamModel's format; visword loads them like any checkpoint."""
    dec = model.mask_decoder
    with torch.no_grad():
        for conv in (dec.upscale_conv1, dec.upscale_conv2):
            conv.weight.copy_(conv.weight[:, :, :1, :1].expand_as(conv.weight).clone())
        dec.upscale_conv2.weight[:, 0].zero_()
        dec.upscale_conv2.bias[0] = 1.0
        for level, (offset, gain) in enumerate(LEVELS):
            out = dec.output_hypernetworks_mlps[level + 1].proj_out  # token 0 is the single-mask output
            out.weight[1:] *= gain
            out.bias[1:] *= gain
            out.weight[0].zero_()
            out.bias[0] = offset


def make_photo() -> Image.Image:
    """Rows 70..170 of the 400×266 photo (the cat's eyes), resized to 320×80."""
    src = Image.open(SOURCE).convert("RGB")
    strip = src.crop((0, 70, 400, 170)).resize((320, 80), Image.LANCZOS)
    path = os.path.join(OUT, "photo.png")
    strip.save(path, optimize=True)
    return Image.open(path).convert("RGB")


def view_rect(frame: svp.Frame) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(frame.in_view())
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def same(a: svp.Result, b: svp.Result) -> bool:
    return (
        np.array_equal(a.label_map, b.label_map)
        and np.array_equal(a.geometry, b.geometry)
        and np.array_equal(a.coverage, b.coverage)
    )


def model_outputs():
    """The fixture model, photo, frame and point grid, and transformers' multimask outputs."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    model = SamModel(model_config()).eval()
    randomize(model, gen)
    shape_masks(model)
    model.save_pretrained(OUT, safe_serialization=True)

    photo = make_photo()
    w, h = photo.size
    processor = SamProcessor(image_processor=SamImageProcessor())
    pixel_values = processor(images=photo, return_tensors="pt")["pixel_values"].float()
    frame = svp.Frame.new((h, w), 1024, 256, svp.clip_view_px(h, w, 336))
    points = svp.point_grid(frame, POINTS_PER_SIDE)
    with torch.no_grad():
        out = model(
            pixel_values=pixel_values,
            input_points=torch.from_numpy(points)[None, :, None, :],
            input_labels=torch.ones((1, len(points), 1), dtype=torch.long),
            multimask_output=True,
        )
    logits = out.pred_masks[0].numpy().astype(np.float32)  # [N, 3, 256, 256]
    iou = out.iou_scores[0].numpy().astype(np.float32)  # [N, 3]
    return frame, points, logits, iou


SYNTH_ORIGINAL = (300, 451)  # chelsea.png's size: a 171×256 crop, a view with fractional edges
SYNTH_SEED = 4
SYNTH_CONFIG = svp.Config(
    points_per_side=6,
    pred_iou_thresh=0.8,
    stability_thresh=0.75,
    box_nms_thresh=0.7,
    max_superpixels=16,
)


def synthetic_logits(params: np.ndarray, size: int) -> np.ndarray:
    """Disc masks with a texture, exact in f32 (integers times a power of two), so the Rust test
    rebuilds them bit for bit from `params` [N, 3, 5] = (cx, cy, R, e, a) per mask:
        logit[k, m, y, x] = (R² − (x − cx)² − (y − cy)² + a·((7x + 13y + 5k + 11m) mod 17 − 8)) · 2^−e
    """
    n = params.shape[0]
    y, x = np.mgrid[0:size, 0:size].astype(np.int64)
    out = np.zeros((n, 3, size, size), dtype=np.float32)
    for k in range(n):
        for m in range(3):
            cx, cy, r, e, a = (int(v) for v in params[k, m])
            texture = (7 * x + 13 * y + 5 * k + 11 * m) % 17 - 8
            value = r * r - (x - cx) ** 2 - (y - cy) ** 2 + a * texture
            out[k, m] = value.astype(np.float32) * np.float32(2.0**-e)
    return out


def synthetic_case(seed: int):
    """Discs around the point-grid prompts: small for sub-parts, large for whole objects, with
    random offsets, sharpness and texture, and IoU predictions on a 1/64 grid so that scores tie."""
    rng = np.random.default_rng(seed)
    h, w = SYNTH_ORIGINAL
    frame = svp.Frame.new((h, w), 1024, 256, svp.clip_view_px(h, w, 336))
    cells = svp.point_grid(frame, SYNTH_CONFIG.points_per_side) * np.float32(frame.mask_size / frame.input_size)
    n = len(cells)
    radii = [(3, 10), (5, 16), (5, 22)]
    iou_range = [(44, 64), (44, 64), (36, 60)]
    params = np.zeros((n, 3, 5), dtype=np.int32)
    for k in range(n):
        for m in range(3):
            params[k, m] = (
                int(round(float(cells[k, 0]))) + rng.integers(-4, 5),
                int(round(float(cells[k, 1]))) + rng.integers(-4, 5),
                rng.integers(*radii[m]),
                rng.integers(0, 6),
                rng.integers(0, 4),
            )
    iou = np.stack([rng.integers(*iou_range[m], size=n) for m in range(3)], axis=1)
    iou = (iou / 64.0).astype(np.float32)
    return frame, params, iou


def check_paths(s: dict, what: str, levels: bool) -> None:
    """Assert that every step of the procedure acted on this case."""
    assert s["filtered"] < s["masks"], f"{what}: the filters must reject some masks"
    assert s["filtered"] > s["after_nms"] > s["accepted"] > 0, f"{what}: NMS and level selection must both reject"
    assert s["rest"] > 0 and s["merges"] > 0, f"{what}: rest regions and merging must occur"
    if levels:
        assert min(s["accepted_per_level"]) >= 2, f"{what}: every level must have accepted masks"
        assert s["painted_over"] > 0, f"{what}: some mask must be painted over"


def label_bytes(label_map: np.ndarray) -> torch.Tensor:
    """Labels + 1 as u8 (0 = −1): a quarter of the size of i32."""
    assert label_map.max() < 255
    return torch.from_numpy((label_map + 1).astype(np.uint8))


def main() -> None:
    frame, points, logits, iou = model_outputs()

    ref = svp.superpixels(logits, iou, frame, GRID, CONFIG)
    no_rest_cfg = svp.Config(**{**CONFIG.__dict__, "rest_regions": False})
    no_rest = svp.superpixels(logits, iou, frame, GRID, no_rest_cfg)

    # The stored logits: the view rectangle only, in f16. Outside it the spec reads nothing, so
    # any filler gives the same result (a large one shows that).
    vy0, vx0, vy1, vx1 = view_rect(frame)
    view_logits = logits[:, :, vy0:vy1, vx0:vx1].astype(np.float16)
    rebuilt = np.full_like(logits, 50.0)
    rebuilt[:, :, vy0:vy1, vx0:vx1] = view_logits.astype(np.float32)
    assert same(svp.superpixels(rebuilt, iou, frame, GRID, CONFIG), ref), "f16 logits change the result"
    assert same(svp.superpixels(rebuilt, iou, frame, GRID, no_rest_cfg), no_rest), "f16 logits change the result"
    print("transformers:", ref.stats)
    print("transformers, no rest regions:", no_rest.stats)
    check_paths(ref.stats, "transformers", levels=False)

    sframe, sparams, siou = synthetic_case(SYNTH_SEED)
    synth = svp.superpixels(synthetic_logits(sparams, sframe.mask_size), siou, sframe, GRID, SYNTH_CONFIG)
    print("synthetic:", synth.stats)
    check_paths(synth.stats, "synthetic", levels=True)

    tensors = {
        "logits_view": torch.from_numpy(view_logits),
        "iou_scores": torch.from_numpy(iou),
        "points": torch.from_numpy(points),
        "label_map": label_bytes(ref.label_map),
        "geometry": torch.from_numpy(ref.geometry),
        "coverage": torch.from_numpy(ref.coverage),
        "label_map_no_rest": label_bytes(no_rest.label_map),
        "view": torch.tensor(frame.view, dtype=torch.float32),
        "synth_params": torch.from_numpy(sparams),
        "synth_iou_scores": torch.from_numpy(siou),
        "synth_label_map": label_bytes(synth.label_map),
        "synth_geometry": torch.from_numpy(synth.geometry),
        "synth_coverage": torch.from_numpy(synth.coverage),
    }
    # One metadata entry: safetensors writes several in no fixed order, one keeps the file stable.
    meta = {
        "config": CONFIG.__dict__,
        "config_no_rest": no_rest_cfg.__dict__,
        "grid": GRID,
        "view": frame.view,
        "view_cells": [vy0, vx0, vy1, vx1],
        "stats": ref.stats,
        "stats_no_rest": no_rest.stats,
        "synth_config": SYNTH_CONFIG.__dict__,
        "synth_original": list(SYNTH_ORIGINAL),
        "synth_view": sframe.view,
        "synth_stats": synth.stats,
    }
    meta = {"reference": json.dumps(meta)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "reference.safetensors"), metadata=meta)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT}: {sorted(os.listdir(OUT))}, {total} bytes")


if __name__ == "__main__":
    main()
