"""Network building blocks shared by all algorithms: MLPs (plain / pre-activation residual), the
sinusoidal time embedding, the chunk-denoising MLP and the state-value critic."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

from core.errors import BenchError

Activation = Literal["ReLU", "Mish", "GELU", "Tanh", "ELU"]
ACTIVATIONS = {"ReLU": nn.ReLU, "Mish": nn.Mish, "GELU": nn.GELU, "Tanh": nn.Tanh, "ELU": nn.ELU}


def activation(name: Activation) -> nn.Module:
    return ACTIVATIONS[name]()


class ResidualBlock(nn.Module):
    """Two pre-activation linear layers with a skip connection (as in IBC / the DPPO code)."""

    def __init__(self, dim: int, act: Activation):
        super().__init__()
        self.l1, self.l2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.act = activation(act)

    def forward(self, x):
        return x + self.l2(self.act(self.l1(self.act(x))))


def check_residual_mlp(hidden: tuple[int, ...], residual: bool, residual_key: str, hidden_key: str) -> None:
    """A one-line config error (BenchError, naming the keys) unless a residual MLP has equal hidden widths
    and an odd layer count (see `mlp`)."""
    if residual and (len(set(hidden)) != 1 or len(hidden) % 2 != 1):
        raise BenchError(f"a residual MLP needs equal hidden widths and an odd layer count, got {list(hidden)}; "
                         f"set {residual_key}=false or change {hidden_key}")


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, act: Activation, residual: bool) -> nn.Sequential:
    """`residual=True` needs equal hidden widths and an odd number of hidden layers: one input layer,
    then residual blocks of two layers each (512x3 -> Linear + 1 block)."""
    if not residual:
        layers, d = [], in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), activation(act)]
            d = h
        return nn.Sequential(*layers, nn.Linear(d, out_dim))
    if len(set(hidden)) != 1 or len(hidden) % 2 != 1:
        raise ValueError(f"residual MLP needs equal widths and an odd layer count, got {hidden}")
    width = hidden[0]
    blocks = [ResidualBlock(width, act) for _ in range(len(hidden) // 2)]
    return nn.Sequential(nn.Linear(in_dim, width), *blocks, nn.Linear(width, out_dim))


class SinusoidalTimeEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
        self.register_buffer("freqs", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.float()[:, None] * self.freqs[None]
        return torch.cat([x.sin(), x.cos()], dim=-1)


class DenoisingMLP(nn.Module):
    """eps_theta(x_t, t, s): MLP on [flattened noisy chunk (Tp*Da); observation; time embedding]."""

    def __init__(self, obs_dim: int, horizon_steps: int, act_dim: int, hidden: tuple[int, ...],
                 time_dim: int, act: Activation, residual: bool):
        super().__init__()
        self.horizon_steps, self.act_dim = horizon_steps, act_dim
        self.time_embedding = nn.Sequential(
            SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, 2 * time_dim), nn.Mish(),
            nn.Linear(2 * time_dim, time_dim),
        )
        self.net = mlp(horizon_steps * act_dim + obs_dim + time_dim, hidden, horizon_steps * act_dim,
                       act, residual)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """x: (B, Tp, Da); t: (B,) integer steps; obs: (B, obs_dim). Returns eps with x's shape."""
        b = x.shape[0]
        h = torch.cat([x.reshape(b, -1), obs, self.time_embedding(t)], dim=-1)
        return self.net(h).view(b, self.horizon_steps, self.act_dim)


class ValueCritic(nn.Module):
    """V(s) on the observation only."""

    def __init__(self, obs_dim: int, hidden: tuple[int, ...], act: Activation = "Mish", residual: bool = True):
        super().__init__()
        self.net = mlp(obs_dim, hidden, 1, act, residual)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)
