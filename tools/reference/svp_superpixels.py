#!/usr/bin/env python3
"""SAM superpixels, docs/svp.md §1–2, in NumPy: the definition src/superpixels/ is tested against.

Written for clarity, not speed: every step below is one numbered step of the spec, in the same
order and with the same arithmetic (f32 where the spec says f32, f64 for geometry), so the label
map it gives is the one visword must give bit for bit.

    frame = Frame.new((H, W), 1024, 256, clip_view_px(H, W, 336))
    points = point_grid(frame, n)                       # [n², 2] f32, SAM input frame, k = j·n + i
    # ... SamModel(pixel_values, input_points=points[None, :, None], input_labels=1) ...
    sp = superpixels(pred_masks[0], iou_scores[0], frame, grid=24, cfg=Config())
    sp.label_map  # i32 [lh, lw], -1 outside the view
    sp.geometry   # f32 [S, 7]
    sp.coverage   # f32 [S, grid²]
    sp.stats      # how many masks / regions each step kept (for fixtures and reports)

A module: tools/reference/make_superpixels.py (and the segmenter's reference) import it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

F32 = np.float32


# ---------------------------------------------------------------------------------------------
# §1 Frames


def preprocess_shape(h: int, w: int, longest: int) -> tuple[int, int]:
    """transformers' SamImageProcessor._get_preprocess_shape: scale in f64, round half up."""
    scale = longest * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def view_px(h: int, w: int, resized: tuple[int, int], crop: tuple[int, int] | None) -> list[float]:
    """The rectangle [x0, y0, x1, y1) of an h×w image that a resize-to-`resized` then
    centre-crop-to-`crop` processor shows, in original pixels (f64)."""
    rh, rw = resized
    if crop is None:
        return [0.0, 0.0, float(w), float(h)]
    ch, cw = crop

    def start(n: int, c: int) -> int:
        # The processor crops at (n - c) // 2, or pads (c - n) // 2 before the image.
        return (n - c) // 2 if n >= c else -((c - n) // 2)

    top, left = start(rh, ch), start(rw, cw)
    fy, fx = h / rh, w / rw
    return [left * fx, top * fy, (left + cw) * fx, (top + ch) * fy]


def clip_view_px(h: int, w: int, size: int = 336) -> list[float]:
    """The view of CLIP's processor (shortest edge `size`, centre crop size×size), with the
    resized size from transformers' own helper."""
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.image_utils import ChannelDimension

    dummy = np.zeros((3, h, w), dtype=np.uint8)
    resized = get_resize_output_image_size(dummy, size=size, default_to_square=False, input_data_format=ChannelDimension.FIRST)
    return view_px(h, w, tuple(resized), (size, size))


@dataclass
class Frame:
    original: tuple[int, int]  # (H, W)
    resized: tuple[int, int]  # (h', w')
    input_size: int  # S_in
    mask_size: int  # L
    crop: tuple[int, int]  # (lh, lw)
    view: list[float]  # [X0, Y0, X1, Y1) in low-res cell units

    @staticmethod
    def new(original: tuple[int, int], input_size: int, mask_size: int, view_px: list[float]) -> "Frame":
        h, w = original
        rh, rw = preprocess_shape(h, w, input_size)
        crop = (-(-rh * mask_size // input_size), -(-rw * mask_size // input_size))  # ceil
        sx = (rw / w) * (mask_size / input_size)
        sy = (rh / h) * (mask_size / input_size)
        view = [view_px[0] * sx, view_px[1] * sy, view_px[2] * sx, view_px[3] * sy]
        return Frame(original, (rh, rw), input_size, mask_size, crop, view)

    def in_view(self) -> np.ndarray:
        """bool [lh, lw]: the cell's centre is in [X0, X1) × [Y0, Y1)."""
        lh, lw = self.crop
        cy = np.arange(lh, dtype=np.float64) + 0.5
        cx = np.arange(lw, dtype=np.float64) + 0.5
        X0, Y0, X1, Y1 = self.view
        return ((cy >= Y0) & (cy < Y1))[:, None] & ((cx >= X0) & (cx < X1))[None, :]


# ---------------------------------------------------------------------------------------------
# §2 Superpixel generation


@dataclass
class Config:
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.86
    whole_level_bonus: float = 0.1
    stability_thresh: float = 0.92
    stability_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_area: float = 100.0
    level_overlap_thresh: float = 0.3
    min_region_area: float = 256.0
    max_superpixels: int = 64
    rest_regions: bool = True


@dataclass
class Result:
    label_map: np.ndarray  # i32 [lh, lw]
    geometry: np.ndarray  # f32 [S, 7]
    coverage: np.ndarray  # f32 [S, G²]
    stats: dict = field(default_factory=dict)


def point_grid(frame: Frame, n: int) -> np.ndarray:
    """Step 1: [n², 2] (x, y) in SAM's input frame, prompt k = j·n + i (x fastest)."""
    X0, Y0, X1, Y1 = frame.view
    scale = frame.input_size / frame.mask_size
    pts = []
    for j in range(n):
        for i in range(n):
            x = X0 + (i + 0.5) * (X1 - X0) / n
            y = Y0 + (j + 0.5) * (Y1 - Y0) / n
            pts.append((x * scale, y * scale))
    return np.array(pts, dtype=np.float64).astype(F32)


def permille(t: float) -> int:
    """A [0, 1] threshold as the integer per-mille value NMS and level selection compare with
    exactly (1000 · intersection > nms · union), so every backend decides ties alike."""
    return int(min(max(np.floor(float(F32(t)) * 1000.0 + 0.5), 0), 1000))


def superpixels(logits: np.ndarray, iou: np.ndarray, frame: Frame, grid: int, cfg: Config) -> Result:
    """Steps 2–11 on mask logits [N, 3, L, L] and IoU predictions [N, 3]."""
    n_prompts = logits.shape[0]
    assert logits.shape == (n_prompts, 3, frame.mask_size, frame.mask_size) and iou.shape == (n_prompts, 3)
    lh, lw = frame.crop
    view = frame.in_view()
    px_per_cell = F32((frame.input_size / frame.mask_size) ** 2)
    stats = {"masks": 3 * n_prompts}

    # 2–3. Filters over the view cells of the crop.
    crop = logits[:, :, :lh, :lw].astype(F32)
    masks = (crop > 0) & view  # bool [N, 3, lh, lw]
    area = masks.sum(axis=(2, 3))
    off = F32(cfg.stability_offset)
    hi = ((crop > off) & view).sum(axis=(2, 3))
    lo = ((crop > -off) & view).sum(axis=(2, 3))
    bonus = np.array([0.0, 0.0, cfg.whole_level_bonus], dtype=F32)
    score = iou.astype(F32) + bonus[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        stability = np.where(lo > 0, hi.astype(F32) / np.maximum(lo, 1).astype(F32), F32(0))
    keep = (
        (score >= F32(cfg.pred_iou_thresh))
        & (stability >= F32(cfg.stability_thresh))
        & (area > 0)
        & (area.astype(F32) * px_per_cell >= F32(cfg.min_area))
    )
    cands = [(k, m) for k in range(n_prompts) for m in range(3) if keep[k, m]]
    stats["filtered"] = len(cands)
    per_level = lambda cs: [sum(1 for _, m in cs if m == lv) for lv in range(3)]  # noqa: E731
    stats["filtered_per_level"] = per_level(cands)

    # 4. Box NMS, whole objects first.
    def box(k, m):
        ys, xs = np.nonzero(masks[k, m])
        return xs.min(), ys.min(), xs.max(), ys.max()

    def order(c):  # (level desc, score desc, k asc, m asc)
        k, m = c
        return (-m, -float(score[k, m]), k, m)

    cands.sort(key=order)
    kept, kept_boxes = [], []
    for k, m in cands:
        b = box(k, m)
        suppressed = False
        for q in kept_boxes:
            ix = min(b[2], q[2]) - max(b[0], q[0]) + 1
            iy = min(b[3], q[3]) - max(b[1], q[1]) + 1
            inter = max(ix, 0) * max(iy, 0)
            a1 = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
            a2 = (q[2] - q[0] + 1) * (q[3] - q[1] + 1)
            if 1000 * inter > permille(cfg.box_nms_thresh) * (a1 + a2 - inter):
                suppressed = True
                break
        if not suppressed:
            kept.append((k, m))
            kept_boxes.append(b)
    stats["after_nms"] = len(kept)
    stats["after_nms_per_level"] = per_level(kept)

    # 5. Level selection: whole objects, then parts and sub-parts that add mostly new cells.
    union = np.zeros((lh, lw), dtype=bool)
    accepted = []  # (k, m) in acceptance order
    for k, m in kept:  # already level 2, 1, 0, each by (score desc, k, m)
        mask = masks[k, m]
        if m == 2 or 1000 * int((mask & union).sum()) < permille(cfg.level_overlap_thresh) * int(area[k, m]):
            accepted.append((k, m))
            union |= mask
    stats["accepted"] = len(accepted)
    stats["accepted_per_level"] = per_level(accepted)

    # 6. Paint coarse to fine; later paint wins.
    labels = np.full((lh, lw), -1, dtype=np.int64)
    paint = sorted(range(len(accepted)), key=lambda a: (-accepted[a][1], -int(area[accepted[a]]), -a))
    for a in paint:
        labels[masks[accepted[a]]] = a
    stats["painted_over"] = len(accepted) - len(np.unique(labels[labels >= 0]))

    # 7. Rest regions: 4-connected components of unpainted view cells, in raster discovery order.
    next_region = len(accepted)
    rest = 0
    if cfg.rest_regions:
        for y in range(lh):
            for x in range(lw):
                if view[y, x] and labels[y, x] < 0:
                    labels[y, x] = next_region
                    todo = deque([(y, x)])
                    while todo:
                        cy, cx = todo.popleft()
                        for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                            if 0 <= ny < lh and 0 <= nx < lw and view[ny, nx] and labels[ny, nx] < 0:
                                labels[ny, nx] = next_region
                                todo.append((ny, nx))
                    next_region += 1
                    rest += 1
    stats["rest"] = rest

    # 8. Empty regions simply never appear in `labels`.
    # 9. Merging: smallest region into its longest-shared-border neighbour.
    merges = 0
    while True:
        nums, cells = np.unique(labels[labels >= 0], return_counts=True)
        if len(nums) == 0:
            break
        i = np.lexsort((nums, cells))[0]  # fewest cells, then lower number
        over = cfg.max_superpixels > 0 and len(nums) > cfg.max_superpixels
        small = F32(cells[i]) * px_per_cell < F32(cfg.min_region_area)
        if not (over or small):
            break
        s = nums[i]
        shared = {}
        for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
            for u, v in ((a, b), (b, a)):
                sel = (u == s) & (v >= 0) & (v != s)
                for t, c in zip(*np.unique(v[sel], return_counts=True)):
                    shared[int(t)] = shared.get(int(t), 0) + int(c)
        if not shared:
            break  # the region to merge has no neighbour
        target = min(shared, key=lambda t: (-shared[t], t))
        labels[labels == s] = target
        merges += 1
    stats["merges"] = merges

    # 10. Geometry and token order.
    X0, Y0, X1, Y1 = frame.view
    VW, VH = X1 - X0, Y1 - Y0
    view_cells = int(view.sum())
    regions = []
    for r in np.unique(labels[labels >= 0]):
        ys, xs = np.nonzero(labels == r)
        n = len(xs)
        cx = (float(xs.sum()) + 0.5 * n) / n  # mean of cell centres, exact numerator
        cy = (float(ys.sum()) + 0.5 * n) / n
        clamp = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
        g = [
            (cx - X0) / VW,
            (cy - Y0) / VH,
            clamp((xs.min() - X0) / VW),
            clamp((ys.min() - Y0) / VH),
            clamp((xs.max() + 1 - X0) / VW),
            clamp((ys.max() + 1 - Y0) / VH),
            n / view_cells,
        ]
        regions.append((min(math.floor(g[1] * grid), grid - 1), g[0], g[1], int(r), g))
    regions.sort(key=lambda t: t[:4])
    label_map = np.full((lh, lw), -1, dtype=np.int32)
    for new, reg in enumerate(regions):
        label_map[labels == reg[3]] = new
    geometry = np.array([reg[4] for reg in regions], dtype=np.float64).reshape(-1, 7).astype(F32)
    stats["superpixels"] = len(regions)

    # 11. Coverage: exact overlap of each labelled cell with each patch rectangle.
    pw, ph = VW / grid, VH / grid

    def overlap(lo_edges, hi_edges, n_cells):  # [grid, n_cells] length of [x, x+1) ∩ [lo, hi)
        x = np.arange(n_cells, dtype=np.float64)[None, :]
        return np.clip(np.minimum(x + 1, hi_edges[:, None]) - np.maximum(x, lo_edges[:, None]), 0.0, None)

    cols = np.arange(grid, dtype=np.float64)
    wx = overlap(X0 + cols * pw, X0 + (cols + 1) * pw, lw)
    wy = overlap(Y0 + cols * ph, Y0 + (cols + 1) * ph, lh)
    S = len(regions)
    onehot = (label_map[None, :, :] == np.arange(S)[:, None, None]).astype(np.float64)
    o = np.einsum("ry,syx,cx->src", wy, onehot, wx).reshape(S, grid * grid)
    total = o.sum(axis=0)
    coverage = np.divide(o, total[None, :], out=np.zeros_like(o), where=total[None, :] > 0).astype(F32)
    return Result(label_map, geometry, coverage, stats)

