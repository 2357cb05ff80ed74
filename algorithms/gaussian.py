"""The Gaussian and Gaussian-mixture (GMM) chunk policies of the Gaussian/GMM PPO baselines.

Both are MLPs on the observation that output a whole action chunk (Tp, Da) in normalised action space,
with tanh-squashed means (method.md section 5; the original model/common/mlp_gaussian.py, mlp_gmm.py):

- `GaussianPolicy`: N(mean(s), diag std^2). The std is either
  - "fixed": one log-variance per action dimension, shared over the chunk and all states, clamped to
    [std_min, std_max]. It stays at `fixed_std` during pre-training (the original pre-trained with a
    fixed std of 0.1) and becomes learnable when fine-tuning starts (`set_std`), or
  - "state": a second output head gives a log-variance per state and chunk entry, tanh-rescaled into
    [log std_min^2, log std_max^2] (the original's learned-std variant, bounds [0.01, 1]).
- `GMMPolicy`: a mixture of M components with per-mode tanh means, one log-variance per (mode, action
  dimension) (fixed during pre-training, learnable when fine-tuning, clamped), and mixture logits from a
  separate MLP. Its log-likelihood is the full joint one over the chunk (not per dimension).

`log_prob(obs, actions, n_steps)` scores the first `n_steps` actions of each chunk (PPO scores the
executed ones; a mixture's marginal over them is the mixture of the components' marginals) and returns
the joint log-density per sample; the algorithms reduce and clamp it. `loss` is the pre-training
negative log-likelihood (per chunk entry for the Gaussian, joint for the GMM, as the original).
Shapes: obs (B, obs_dim); action chunks (B, Tp, Da).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from algorithms.diffusion import clipped_randn
from algorithms.networks import Activation, mlp

LOG_2PI = math.log(2 * math.pi)


@dataclass
class GaussianPolicyConfig:
    """Architecture of the MLP Gaussian chunk policy (Gaussian PPO's starting point; algorithms/gaussian.py).
    As in the original robomimic configs, the MLP is by default the diffusion policy's (same widths,
    activation, residual blocks), so presets size both alike."""

    hidden_dims: tuple[int, ...] | None = None
    """None: pretrain.hidden_dims"""
    activation: Activation | None = None
    """None: pretrain.activation"""
    residual: bool | None = None
    """None: pretrain.residual"""
    std: Literal["fixed", "state"] = "fixed"
    """'fixed': one std per action dimension, held at fixed_std during pre-training (as the original) and
    learnable in fine-tuning; 'state': a network head outputs the std per state, in [state_std_min, state_std_max]"""
    fixed_std: float = 0.1
    state_std_min: float = 0.01
    state_std_max: float = 1.0


@dataclass
class GMMPolicyConfig:
    """Architecture of the MLP Gaussian-mixture chunk policy (GMM PPO's starting point; algorithms/gaussian.py);
    the MLPs default to the diffusion policy's, as for the Gaussian policy."""

    hidden_dims: tuple[int, ...] | None = None
    """None: pretrain.hidden_dims"""
    activation: Activation | None = None
    """None: pretrain.activation"""
    residual: bool | None = None
    """None: pretrain.residual"""
    n_modes: int = 5
    fixed_std: float = 0.1
    """std of every mode during pre-training (learnable in fine-tuning)"""


def normal_log_density(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x; mean, exp(log_var))."""
    return -0.5 * ((x - mean) ** 2 * torch.exp(-log_var) + log_var + LOG_2PI)


class _ChunkPolicy(nn.Module):
    """What the Gaussian and the GMM policy share: chunk shape, the clamped learnable log-variance."""

    def __init__(self, horizon_steps: int, act_dim: int, log_var_shape: tuple[int, ...], init_std: float,
                 std_min: float, std_max: float):
        super().__init__()
        self.horizon_steps, self.act_dim = horizon_steps, act_dim
        self.log_var = nn.Parameter(torch.full(log_var_shape, 2 * math.log(init_std)), requires_grad=False)
        self.std_min, self.std_max = std_min, std_max

    @property
    def chunk_size(self) -> int:
        return self.horizon_steps * self.act_dim

    def set_std(self, init_std: float | None, std_min: float, std_max: float, learnable: bool) -> None:
        """Fine-tuning's std: re-initialise it (None keeps the current one), new bounds, learnable or not."""
        if not 0 < std_min <= std_max:
            raise ValueError(f"need 0 < std_min <= std_max, got {std_min}, {std_max}")
        with torch.no_grad():
            if init_std is not None:
                self.log_var.fill_(2 * math.log(init_std))
        self.std_min, self.std_max = std_min, std_max
        self.log_var.requires_grad_(learnable)

    def _clamped_log_var(self) -> torch.Tensor:
        return self.log_var.clamp(2 * math.log(self.std_min), 2 * math.log(self.std_max))


class GaussianPolicy(_ChunkPolicy):
    def __init__(self, obs_dim: int, horizon_steps: int, act_dim: int, hidden: tuple[int, ...], activation: str,
                 residual: bool, std: str = "fixed", fixed_std: float = 0.1, std_min: float = 0.01,
                 std_max: float = 1.0):
        if std not in ("fixed", "state"):
            raise ValueError(f"std must be 'fixed' or 'state', got {std!r}")
        # a fixed std is held at fixed_std until fine-tuning sets its bounds (`set_std`)
        bounds = (std_min, std_max) if std == "state" else (fixed_std, fixed_std)
        super().__init__(horizon_steps, act_dim, (act_dim,), fixed_std, *bounds)
        self.std_mode = std
        if std == "state":
            self.log_var = None  # the std comes from the network's second head
        n_heads = 2 if std == "state" else 1  # mean (+ log-variance) heads on a shared trunk
        self.net = mlp(obs_dim, tuple(hidden), n_heads * self.chunk_size, activation, residual)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_var), each (B, Tp, Da)."""
        b, shape = obs.shape[0], (obs.shape[0], self.horizon_steps, self.act_dim)
        out = self.net(obs)
        mean = torch.tanh(out[:, : self.chunk_size]).view(shape)
        if self.std_mode == "state":
            lo, hi = 2 * math.log(self.std_min), 2 * math.log(self.std_max)
            log_var = lo + 0.5 * (hi - lo) * (torch.tanh(out[:, self.chunk_size:]) + 1)
            return mean, log_var.view(shape)
        return mean, self._clamped_log_var().expand(b, self.horizon_steps, self.act_dim)

    def mean_std(self, obs: torch.Tensor) -> float:
        return torch.exp(0.5 * self(obs)[1]).mean().item()

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
        """Joint log-density (B,) of the first n_steps actions of each chunk (all Tp when None)."""
        mean, log_var = self(obs)
        n = n_steps or self.horizon_steps
        return normal_log_density(actions[:, :n], mean[:, :n], log_var[:, :n]).sum(dim=(1, 2))

    def entropy(self, obs: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
        """Entropy (B,) of the first n_steps actions' distribution."""
        n = n_steps or self.horizon_steps
        log_var = self(obs)[1][:, :n]
        return (0.5 * (log_var + LOG_2PI + 1)).sum(dim=(1, 2))

    def sample(self, obs: torch.Tensor, deterministic: bool = False, randn_clip: float | None = 3.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """A chunk: the mean when deterministic, else mean + std * z with z clipped to +-randn_clip."""
        mean, log_var = self(obs)
        if deterministic:
            return mean
        return mean + torch.exp(0.5 * log_var) * clipped_randn(mean.shape, randn_clip, generator, obs.device)

    def loss(self, x0: torch.Tensor, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pre-training NLL, averaged over batch and chunk entries (the original's D.Normal(...).log_prob mean)."""
        mean, log_var = self(obs)
        return -normal_log_density(x0, mean, log_var).mean()


class GMMPolicy(_ChunkPolicy):
    def __init__(self, obs_dim: int, horizon_steps: int, act_dim: int, hidden: tuple[int, ...], activation: str,
                 residual: bool, n_modes: int = 5, fixed_std: float = 0.1):
        if n_modes < 1:
            raise ValueError(f"n_modes must be >= 1, got {n_modes}")
        # the std is held at fixed_std until fine-tuning sets its bounds (`set_std`)
        super().__init__(horizon_steps, act_dim, (n_modes, act_dim), fixed_std, fixed_std, fixed_std)
        self.n_modes = n_modes
        self.mean_net = mlp(obs_dim, tuple(hidden), n_modes * self.chunk_size, activation, residual)
        self.logits_net = mlp(obs_dim, tuple(hidden), n_modes, activation, residual)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(means (B, M, Tp, Da), log_var (M, Da) broadcastable over B and Tp, logits (B, M))."""
        b = obs.shape[0]
        means = torch.tanh(self.mean_net(obs)).view(b, self.n_modes, self.horizon_steps, self.act_dim)
        return means, self._clamped_log_var()[:, None, :], self.logits_net(obs)

    def mean_std(self, obs: torch.Tensor) -> float:
        return torch.exp(0.5 * self._clamped_log_var()).mean().item()

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
        """Joint mixture log-density (B,) of the first n_steps actions: logsumexp_m log w_m + log N_m."""
        means, log_var, logits = self(obs)
        n = n_steps or self.horizon_steps
        per_mode = normal_log_density(actions[:, None, :n], means[:, :, :n], log_var).sum(dim=(2, 3))
        return torch.logsumexp(F.log_softmax(logits, -1) + per_mode, dim=-1)

    def entropy(self, obs: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
        """The original's approximate entropy (B,): sum_m w_m H(component m) (a mixture has no closed form)."""
        n = n_steps or self.horizon_steps
        _, log_var, logits = self(obs)
        component = n * (0.5 * (log_var[:, 0] + LOG_2PI + 1)).sum(-1)  # (M,)
        return (logits.softmax(-1) * component).sum(-1)

    def sample(self, obs: torch.Tensor, deterministic: bool = False, randn_clip: float | None = None,
               generator: torch.Generator | None = None, mode_choice: str = "sample") -> torch.Tensor:
        """Pick a mode (drawn from the mixture weights, or the most likely one with mode_choice="argmax"),
        then that mode's mean when deterministic, else mean + std * z."""
        means, log_var, logits = self(obs)
        if mode_choice == "argmax":
            mode = logits.argmax(-1)
        else:
            mode = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        mean = means[torch.arange(obs.shape[0], device=obs.device), mode]
        if deterministic:
            return mean
        std = torch.exp(0.5 * log_var[mode])  # (B, 1, Da)
        return mean + std * clipped_randn(mean.shape, randn_clip, generator, obs.device)

    def loss(self, x0: torch.Tensor, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pre-training NLL of whole chunks under the mixture, averaged over the batch (as the original)."""
        return -self.log_prob(obs, x0).mean()
