#!/usr/bin/env python3
"""Make the projector parity fixture (docs/svp.md §3): seeded random weights and torch outputs of
the `svp`, `mlp` and `pool{k}` projectors.

Usage:  python3 tools/reference/make_projector.py

Needs torch, numpy and safetensors. Deterministic (torch and NumPy seeded; the label maps are
drawn by hand or from a seeded generator). Writes, all f32:

  tests/fixtures/svp_projector/model.safetensors
      `model.mm_projector.{0,2}.*` (C = 32 → d = 48) and `model.svp.*` (ssa_heads 4, mlp_ratio 4,
      pos_temperature 10000, ln_eps 1e-5) under the names of docs/svp.md. Linear layers keep torch's
      default init (weights and biases ±1/sqrt(fan_in)); LayerNorm weights are 1 + N(0, 0.2²) and
      biases N(0, 0.2²); the coverage bias γ is [2.5, −1.5, 0.5, 4.0], large enough next to the
      Q·K logits (≈ 0.3) that a wrong sign or a missing bias fails the test.

  tests/fixtures/svp_projector/reference.safetensors
      feats            [36, 32]  patch features F on the G = 6 grid (N(0, 1))
      sincos_table     [36, 32]  the fixed table E of §3.1
      mlp              [36, 48]  the `mlp` projector
      pool{2,3,4}      [g², 48]  `pool{k}`: adaptive_avg_pool2d to g = ceil(6/k), then the MLP
      feats_g5         [25, 32]  features on a G = 5 grid, where k does not divide G:
      pool{2,3}_g5     [g², 48]  adaptive cells overlap (k = 2: rows 0..2, 1..4, 3..5)
      <case>.coverage  [S, 36]   A of §2.11, exact rectangle overlap of labelled cells and patches
      <case>.geometry  [S, 7]    g of §2.10
      <case>.svp_tokens [S, 32]  SvpProjector output (before the MLP)
      <case>.svp       [S, 48]   the `svp` projector (after the MLP)
    for the cases
      single   one region over the whole 30×30-cell view (S = 1: every A entry is 1)
      blobs    30×30 cells, a disc, a box, an L and a stripe carved from a background region
      offset   a 27×33-cell crop whose view [2.25, 30.5) × [0, 26.6) cuts cells and patches at
               fractional positions, with an unlabelled hole (rest regions off): partial columns
               and all-zero columns
      voronoi  30×30 cells, nearest of 12 seeded sites (S = 12)
    Labels are renumbered in the token order of §2.10 (centroid raster order over patch rows).
"""

import os

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from svp_projector import SvpProjector, llava_mlp, sincos_table

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "svp_projector")

C, D, GRID, HEADS, MLP_RATIO = 32, 48, 6, 4, 4
GAMMA = [2.5, -1.5, 0.5, 4.0]


class Checkpoint(nn.Module):
    """The projector part of a LISA-layout checkpoint: `model.mm_projector.*`, `model.svp.*`."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.mm_projector = llava_mlp(C, D)
        self.model.svp = SvpProjector(C, ssa_heads=HEADS, mlp_ratio=MLP_RATIO)


def make_checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    ck = Checkpoint()
    with torch.no_grad():
        for m in ck.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
        ck.model.svp.ssa.coverage_bias.copy_(torch.tensor(GAMMA))
    return ck.eval()


# ---- superpixel inputs (docs/svp.md §2.10–2.11) on hand-made label maps ----


def axis_overlap(cells: int, lo: float, hi: float, grid: int) -> np.ndarray:
    """[cells, grid]: length of cell [i, i+1) ∩ patch span [lo + j·w, lo + (j+1)·w), w = (hi − lo)/grid."""
    w = (hi - lo) / grid
    a0 = np.arange(cells, dtype=np.float64)[:, None]
    b0 = lo + np.arange(grid, dtype=np.float64)[None, :] * w
    return np.clip(np.minimum(a0 + 1, b0 + w) - np.maximum(a0, b0), 0, None)


def view_mask(h: int, w: int, view) -> np.ndarray:
    x0, x1, y0, y1 = view
    cx = np.arange(w) + 0.5
    cy = np.arange(h) + 0.5
    return ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]


def geometry(labels: np.ndarray, view, grid: int) -> np.ndarray:
    """g [S, 7] of §2.10 for labels 0..S−1 (−1 ignored)."""
    x0, x1, y0, y1 = view
    vw, vh = x1 - x0, y1 - y0
    view_cells = int(view_mask(*labels.shape, view).sum())
    rows = []
    for s in range(labels.max() + 1):
        ys, xs = np.nonzero(labels == s)
        cx, cy = (xs + 0.5).mean(), (ys + 0.5).mean()
        box = [(xs.min() - x0) / vw, (ys.min() - y0) / vh, (xs.max() + 1 - x0) / vw, (ys.max() + 1 - y0) / vh]
        rows.append([(cx - x0) / vw, (cy - y0) / vh] + [min(max(b, 0.0), 1.0) for b in box] + [len(xs) / view_cells])
    return np.array(rows, dtype=np.float64)


def token_order(labels: np.ndarray, view, grid: int) -> np.ndarray:
    """Renumber labels in §2.10's token order: (patch row of the centroid, cx, cy, label)."""
    g = geometry(labels, view, grid)
    keys = [(min(int(np.floor(g[s, 1] * grid)), grid - 1), g[s, 0], g[s, 1], s) for s in range(len(g))]
    order = [k[3] for k in sorted(keys)]
    remap = np.full(len(g) + 1, -1, dtype=np.int64)
    for new, old in enumerate(order):
        remap[old] = new
    return np.where(labels >= 0, remap[labels], -1)


def coverage(labels: np.ndarray, view, grid: int) -> np.ndarray:
    """A [S, G²] of §2.11: exact overlap of each region's cells with each patch, column-normalised."""
    x0, x1, y0, y1 = view
    h, w = labels.shape
    oy = axis_overlap(h, y0, y1, grid)  # [h, G]
    ox = axis_overlap(w, x0, x1, grid)  # [w, G]
    s_count = labels.max() + 1
    onehot = (labels[None] == np.arange(s_count)[:, None, None]).astype(np.float64)  # [S, h, w]
    o = np.einsum("yr,syx,xc->src", oy, onehot, ox).reshape(s_count, grid * grid)
    col = o.sum(axis=0, keepdims=True)
    return np.divide(o, col, out=np.zeros_like(o), where=col > 0)


def case_single():
    return np.zeros((30, 30), dtype=np.int64), (0.0, 30.0, 0.0, 30.0)


def case_blobs():
    lab = np.zeros((30, 30), dtype=np.int64)
    yy, xx = np.mgrid[0:30, 0:30]
    lab[(xx + 0.5 - 10) ** 2 + (yy + 0.5 - 12) ** 2 < 7**2] = 1  # disc
    lab[3:11, 18:28] = 2  # box
    lab[18:29, 20:23] = 3  # L: vertical bar
    lab[26:29, 20:29] = 3  # L: foot
    lab[np.abs(xx - yy - 8) <= 1] = 4  # diagonal stripe, over the box's corner
    lab[24:27, 2:5] = 5  # small square
    return lab, (0.0, 30.0, 0.0, 30.0)


def case_offset():
    h, w = 27, 33
    view = (2.25, 30.5, 0.0, 26.6)
    yy, xx = np.mgrid[0:h, 0:w]
    lab = np.zeros((h, w), dtype=np.int64)
    lab[xx > 0.8 * yy + 12] = 1
    lab[(yy > 15) & (xx < 14)] = 2
    lab[(xx - 22) ** 2 + (yy - 20) ** 2 < 16] = 3
    lab[2:12, 5:12] = -1  # an uncovered hole, as with rest_regions = false
    lab[~view_mask(h, w, view)] = -1
    return lab, view


def case_voronoi():
    rng = np.random.default_rng(7)
    sites = rng.uniform(0, 30, size=(12, 2))
    yy, xx = np.mgrid[0:30, 0:30]
    d = (xx[None] + 0.5 - sites[:, 0, None, None]) ** 2 + (yy[None] + 0.5 - sites[:, 1, None, None]) ** 2
    return d.argmin(axis=0).astype(np.int64), (0.0, 30.0, 0.0, 30.0)


CASES = {"single": case_single, "blobs": case_blobs, "offset": case_offset, "voronoi": case_voronoi}


def pool_then_mlp(mlp: nn.Module, feats: torch.Tensor, grid: int, k: int) -> torch.Tensor:
    g = -(-grid // k)
    x = feats.T.reshape(1, C, grid, grid)
    pooled = nn.functional.adaptive_avg_pool2d(x, g).reshape(C, g * g).T
    return mlp(pooled)


def main():
    ck = make_checkpoint()
    mlp, svp = ck.model.mm_projector, ck.model.svp
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(GRID * GRID, C, generator=gen)
    feats_g5 = torch.randn(25, C, generator=gen)

    ref = {"feats": feats, "sincos_table": sincos_table(GRID, C), "feats_g5": feats_g5}
    with torch.no_grad():
        ref["mlp"] = mlp(feats)
        for k in (2, 3, 4):
            ref[f"pool{k}"] = pool_then_mlp(mlp, feats, GRID, k)
        for k in (2, 3):
            ref[f"pool{k}_g5"] = pool_then_mlp(mlp, feats_g5, 5, k)
        for name, make in CASES.items():
            labels, view = make()
            labels = token_order(labels, view, GRID)
            a = coverage(labels, view, GRID)
            assert (a.sum(axis=1) > 0).all(), f"{name}: a superpixel covers no patch"
            a = torch.tensor(a, dtype=torch.float32)
            g = torch.tensor(geometry(labels, view, GRID), dtype=torch.float32)
            tokens = svp(feats, a, g)
            ref[f"{name}.coverage"], ref[f"{name}.geometry"] = a, g
            ref[f"{name}.svp_tokens"], ref[f"{name}.svp"] = tokens, mlp(tokens)
            zero_cols = int((a.sum(0) == 0).sum())
            split_cols = int(((a > 0).sum(0) > 1).sum())
            print(f"{name}: S = {a.shape[0]}, {split_cols} split columns, {zero_cols} empty columns")

    os.makedirs(OUT, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in ck.state_dict().items()}
    save_file(weights, os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"))
    print(f"wrote {OUT}: {len(weights)} weights, {len(ref)} reference tensors")


if __name__ == "__main__":
    main()
