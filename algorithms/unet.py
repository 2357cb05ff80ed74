"""The 1-D temporal convolutional UNet denoiser: Chi et al.'s Diffusion Policy `ConditionalUnet1D` as DPPO
runs it (`model/diffusion/unet.py`, `Unet1D`) for Furniture-Bench and Robomimic Transport.

The action chunk (B, Tp, Da) is a sequence of Tp steps with Da channels, convolved along time. Every
residual block is Conv1d-GroupNorm-Mish twice with a 1x1 skip where the width changes, conditioned by FiLM
on [time embedding (sinusoidal + MLP), observation]: a per-channel scale and bias (`cond_predict_scale`,
the original's setting) or a bias alone. Each level of `dim_mults` is two blocks at width dim * mult,
halving Tp (stride-2 conv) between levels; two middle blocks at the widest level; then the levels back up,
each concatenating the down path's output at that resolution and doubling Tp (transposed conv); a final
Conv1d block and a 1x1 conv to Da. As in the original, the finest level's down output has no skip into
the up path (there is one up level fewer than down levels), so Tp must be divisible by 2^(levels - 1).

It has DenoisingMLP's interface (`forward(x, t, obs)`, `horizon_steps`, `act_dim`), so a DiffusionPolicy
built on it is fine-tuned by DPPO and every diffusion baseline unchanged; the policy kind is
`diffusion_unet` in algorithms/policies.py. Not ported: the original's optional observation MLP
(`cond_mlp_dims`, unused by its configs) and image observations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from algorithms.networks import Activation, SinusoidalTimeEmbedding, activation
from core.errors import BenchError


@dataclass
class UNetConfig:
    """`pretrain.diffusion_unet`; defaults are DPPO's Transport / Robomimic-Square UNet configs
    (cfg/robomimic/pretrain/{square,transport}/pre_diffusion_unet.yaml). Its Furniture-Bench configs use
    dim_mults (1, 2, 4); Lift and Can dim 40."""

    dim: int = 64
    """channels of the first level; level i has dim * dim_mults[i]"""
    dim_mults: tuple[int, ...] = (1, 2)
    time_dim: int = 16
    """diffusion-step embedding width (the original's diffusion_step_embed_dim)"""
    kernel_size: int = 5
    """temporal kernel of every Conv1d block (odd, so the length is kept)"""
    n_groups: int | None = 8
    """GroupNorm groups in every Conv1d block (None: no normalisation, the original's default)"""
    cond_predict_scale: bool = True
    """FiLM with a per-channel scale and bias; false: bias only"""
    smaller_encoder: bool = False
    """each block's conditioning encoder: activation + one linear layer; false: three linear layers"""
    activation: Activation = "Mish"
    """of the Conv1d blocks and conditioning encoders (the time MLP always uses Mish, as the original)"""
    groupnorm_eps: float = 1e-5
    """the original's furniture configs set 1e-4 ("not important")"""


def check_unet(cfg: UNetConfig, key: str = "pretrain.diffusion_unet") -> None:
    """One-line BenchErrors for values no UNet can be built with (Tp is checked by `check_unet_horizon`)."""
    if cfg.dim < 1:
        raise BenchError(f"{key}.dim must be >= 1, got {cfg.dim}")
    if not cfg.dim_mults or min(cfg.dim_mults) < 1:
        raise BenchError(f"{key}.dim_mults needs at least one multiplier, each >= 1, got {list(cfg.dim_mults)}")
    if cfg.time_dim < 4 or cfg.time_dim % 2:  # the sinusoidal embedding divides by time_dim / 2 - 1
        raise BenchError(f"{key}.time_dim must be even and >= 4, got {cfg.time_dim}")
    if cfg.kernel_size < 1 or cfg.kernel_size % 2 == 0:
        raise BenchError(f"{key}.kernel_size must be odd and >= 1 (an even kernel changes the chunk length), "
                         f"got {cfg.kernel_size}")
    if cfg.n_groups is not None:
        widths = sorted({cfg.dim * m for m in cfg.dim_mults})
        if cfg.n_groups < 1 or any(w % cfg.n_groups for w in widths):
            raise BenchError(f"{key}.n_groups ({cfg.n_groups}) must divide every level's width "
                             f"dim * dim_mults = {widths}; change it, or set it to none (no GroupNorm)")
    if not cfg.groupnorm_eps > 0:
        raise BenchError(f"{key}.groupnorm_eps must be positive, got {cfg.groupnorm_eps}")


def check_unet_horizon(cfg: UNetConfig, horizon_steps: int, key: str = "pretrain.diffusion_unet") -> None:
    """Tp is halved between levels and doubled back: it must be divisible by 2^(levels - 1)."""
    factor = 2 ** (len(cfg.dim_mults) - 1)
    if horizon_steps % factor:
        raise BenchError(f"env.horizon_steps ({horizon_steps}) must be divisible by {factor} for a UNet with "
                         f"{len(cfg.dim_mults)} levels ({key}.dim_mults={','.join(map(str, cfg.dim_mults))}); "
                         f"change one of them")


class Conv1dBlock(nn.Sequential):
    """Conv1d (length-preserving) -> GroupNorm (or nothing) -> activation."""

    def __init__(self, c_in: int, c_out: int, cfg: UNetConfig):
        norm = nn.GroupNorm(cfg.n_groups, c_out, eps=cfg.groupnorm_eps) if cfg.n_groups else nn.Identity()
        super().__init__(nn.Conv1d(c_in, c_out, cfg.kernel_size, padding=cfg.kernel_size // 2), norm,
                         activation(cfg.activation))


class FiLMResidualBlock1D(nn.Module):
    """Two Conv1d blocks; the conditioning modulates the first one's output per channel (FiLM, Perez et al.
    2018) before the second; a 1x1 conv skip where the width changes."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, cfg: UNetConfig):
        super().__init__()
        self.conv1, self.conv2 = Conv1dBlock(c_in, c_out, cfg), Conv1dBlock(c_out, c_out, cfg)
        self.scaled = cfg.cond_predict_scale
        n = 2 * c_out if self.scaled else c_out
        if cfg.smaller_encoder:
            self.cond_encoder = nn.Sequential(activation(cfg.activation), nn.Linear(cond_dim, n))
        else:
            self.cond_encoder = nn.Sequential(nn.Linear(cond_dim, n), activation(cfg.activation), nn.Linear(n, n),
                                              activation(cfg.activation), nn.Linear(n, n))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (B, c_in, T); cond: (B, cond_dim) -> (B, c_out, T)."""
        h = self.conv1(x)
        film = self.cond_encoder(cond).unsqueeze(-1)
        if self.scaled:  # the first c_out outputs are the scales, the rest the biases (the original's layout)
            scale, bias = film.chunk(2, dim=1)
            h = scale * h + bias
        else:
            h = h + film
        return self.conv2(h) + self.skip(x)


class DenoisingUNet1D(nn.Module):
    """eps_theta(x_t, t, s) as a temporal UNet over the chunk, FiLM-conditioned on [time embedding; obs]."""

    def __init__(self, obs_dim: int, horizon_steps: int, act_dim: int, cfg: UNetConfig):
        super().__init__()
        check_unet(cfg)
        check_unet_horizon(cfg, horizon_steps)
        self.horizon_steps, self.act_dim = horizon_steps, act_dim
        td = cfg.time_dim
        self.time_embedding = nn.Sequential(SinusoidalTimeEmbedding(td), nn.Linear(td, 4 * td), nn.Mish(),
                                            nn.Linear(4 * td, td))
        cond = td + obs_dim
        widths = [act_dim] + [cfg.dim * m for m in cfg.dim_mults]
        levels = list(zip(widths[:-1], widths[1:]))

        def block(c_in, c_out):
            return FiLMResidualBlock1D(c_in, c_out, cond, cfg)

        self.down = nn.ModuleList(
            nn.ModuleList([block(c_in, c_out), block(c_out, c_out),
                           nn.Conv1d(c_out, c_out, 3, stride=2, padding=1) if i < len(levels) - 1 else nn.Identity()])
            for i, (c_in, c_out) in enumerate(levels))
        self.mid = nn.ModuleList([block(widths[-1], widths[-1]), block(widths[-1], widths[-1])])
        # up from the widest level: input = the level below's output + the down path's skip at this resolution
        self.up = nn.ModuleList(
            nn.ModuleList([block(2 * c_out, c_in), block(c_in, c_in),
                           nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)])
            for c_in, c_out in reversed(levels[1:]))
        # widths[1] = dim * dim_mults[0]: the original writes `dim`, the same for its multipliers (1, ...)
        self.final = nn.Sequential(Conv1dBlock(widths[1], widths[1], cfg), nn.Conv1d(widths[1], act_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """x: (B, Tp, Da); t: (B,) integer steps; obs: (B, obs_dim). Returns eps with x's shape."""
        cond = torch.cat([self.time_embedding(t), obs], dim=-1)
        h = x.transpose(1, 2)  # (B, Da, Tp): action dimensions are the channels
        skips = []
        for block1, block2, downsample in self.down:
            h = block2(block1(h, cond), cond)
            skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, cond)
        for block1, block2, upsample in self.up:  # pops the coarsest skips first; the finest is never used
            h = upsample(block2(block1(torch.cat([h, skips.pop()], dim=1), cond), cond))
        return self.final(h).transpose(1, 2)
