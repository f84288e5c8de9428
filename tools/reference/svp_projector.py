"""The semantic visual projector (docs/svp.md §3) as a PyTorch module: the spec the Rust
`src/models/projector/svp.rs` is tested against.

Mounted as `model.svp`, `SvpProjector`'s state_dict names are exactly the checkpoint names of
docs/svp.md (`model.svp.sspe.geo_mlp.0.weight`, `model.svp.ssa.q_proj.bias`, ...). It maps patch
features F [P, C], the coverage matrix A [S, P] and the superpixel geometry g [S, 7] to S tokens
[S, C]; LLaVA's `model.mm_projector` MLP (`llava_mlp`) follows it, as in every projector.

Importing this file does no work: other reference scripts build on `sincos_table`,
`scatter_mean`, `SvpProjector` and `llava_mlp`.
"""

import math

import torch
from torch import nn

# Per-superpixel geometry features (docs/svp.md §2.10): centroid, box, area fraction.
GEOMETRY_FEATURES = 7


def sincos_table(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos table E [grid², dim] (docs/svp.md §3.1), f32.

    Row p = r·grid + c is `[sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)]` with q = dim/4 frequencies
    ω_i = temperature^(−i/q). Computed in float64 and rounded once to f32.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos table width {dim} is not divisible by 4")
    q = dim // 4
    omega = torch.pow(torch.tensor(temperature, dtype=torch.float64), -torch.arange(q, dtype=torch.float64) / q)
    idx = torch.arange(grid, dtype=torch.float64)
    rows = idx.repeat_interleave(grid)  # r of patch p
    cols = idx.repeat(grid)  # c of patch p
    cw = cols[:, None] * omega[None, :]
    rw = rows[:, None] * omega[None, :]
    return torch.cat([cw.sin(), cw.cos(), rw.sin(), rw.cos()], dim=1).to(torch.float32)


def scatter_mean(coverage: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Coverage-weighted mean per superpixel: `(A · V)[s] / Σ_p A[s, p]` for A [S, P], V [P, C]."""
    return (coverage @ values) / coverage.sum(dim=1, keepdim=True)


class SSPE(nn.Module):
    """Semantic superpixel positional embedding: the geometry MLP `Linear(7, C) → GELU → Linear(C, C)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.geo_mlp = nn.Sequential(nn.Linear(GEOMETRY_FEATURES, dim), nn.GELU(), nn.Linear(dim, dim))


class SsaMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class SSA(nn.Module):
    """Semantic superpixel aggregator: one pre-norm cross-attention layer (queries the S tokens,
    keys/values the P patches) with the learned coverage bias γ_h·A[s, p], then a residual MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, ln_eps: float):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"width {dim} is not divisible by ssa_heads = {heads}")
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim, eps=ln_eps)
        self.norm_kv = nn.LayerNorm(dim, eps=ln_eps)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.coverage_bias = nn.Parameter(torch.zeros(heads))
        self.norm_mlp = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = SsaMlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, patches: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
        """x [S, C] tokens, patches [P, C] = F + E, coverage A [S, P] → [S, C]."""
        s, c = x.shape
        p = patches.shape[0]
        h, dh = self.heads, c // self.heads
        q = self.q_proj(self.norm_q(x)).reshape(s, h, dh).transpose(0, 1)  # [H, S, Dh]
        kv = self.norm_kv(patches)
        k = self.k_proj(kv).reshape(p, h, dh).transpose(0, 1)  # [H, P, Dh]
        v = self.v_proj(kv).reshape(p, h, dh).transpose(0, 1)
        logits = (q @ k.transpose(1, 2)) / math.sqrt(dh) + self.coverage_bias[:, None, None] * coverage[None]
        attn = logits.softmax(dim=-1) @ v  # [H, S, Dh]
        x = x + self.o_proj(attn.transpose(0, 1).reshape(s, c))
        return x + self.mlp(self.norm_mlp(x))


class SvpProjector(nn.Module):
    """docs/svp.md §3 steps 1–4 (the MLP to the LLM width is `llava_mlp`, applied after)."""

    def __init__(self, dim: int, ssa_heads: int = 8, mlp_ratio: int = 4, pos_temperature: float = 10000.0, ln_eps: float = 1e-5):
        super().__init__()
        if dim % 4 != 0:
            raise ValueError(f"width {dim} is not divisible by 4 (sin-cos table)")
        self.pos_temperature = pos_temperature
        self.sspe = SSPE(dim)
        self.ssa = SSA(dim, ssa_heads, mlp_ratio, ln_eps)

    def forward(self, feats: torch.Tensor, coverage: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """feats F [P, C] (grid order, P = G²), coverage A [S, P], geometry g [S, 7] → [S, C]."""
        p, c = feats.shape
        grid = math.isqrt(p)
        if grid * grid != p:
            raise ValueError(f"{p} patches do not form a square grid")
        table = sincos_table(grid, c, self.pos_temperature).to(feats.dtype)
        z = scatter_mean(coverage, feats)
        e = scatter_mean(coverage, table)
        x = z + e + self.sspe.geo_mlp(geometry)
        return self.ssa(x, feats + table, coverage)


def llava_mlp(vision_width: int, llm_width: int) -> nn.Sequential:
    """LLaVA-1.5's `model.mm_projector`: `Linear(C, d) → GELU → Linear(d, d)` (names `.0`, `.2`)."""
    return nn.Sequential(nn.Linear(vision_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))
