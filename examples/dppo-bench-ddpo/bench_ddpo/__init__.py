"""DDPO (Black et al., 2023, "Training Diffusion Models with Reinforcement Learning") as a dppo-bench plugin.

DDPO applies PPO's clipped objective to the denoising chain like DPPO, but without a critic: the
advantage of a chunk is its Monte-Carlo discounted return-to-go within the episode (normalised per
minibatch by DPPO's `norm_adv`), with no bootstrap at the rollout's end or at truncations. Everything
else (sampling, stored log-probs, the per-denoising-step clip, minibatches over (env step, denoising
step) pairs) is inherited from DPPO, so this class only replaces DPPO's `advantages` hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.dppo import DPPO, DPPOConfig
from algorithms.ppo import gae


@dataclass
class DDPOConfig(DPPOConfig):
    vf_coef: float = 0.0
    """no critic in DDPO: its value loss is switched off"""


class DDPO(DPPO):
    Config = DDPOConfig

    def advantages(self, ro):
        scaler = self.reward_scaler if self.cfg.reward_scale_running else None
        rewards = ro.rewards.cpu().numpy()
        dones = ro.terminated | ro.truncated
        if scaler is not None:
            rewards = scaler(rewards, dones.cpu().numpy())
        rewards = torch.as_tensor(rewards, dtype=torch.float32, device=ro.obs.device)
        zeros = torch.zeros_like(rewards)
        # GAE with V = 0 and lambda = 1 is the discounted return-to-go, cut at episode ends
        returns = gae(rewards, zeros, zeros, dones, self.cfg.gamma, 1.0)
        return returns, returns, zeros
