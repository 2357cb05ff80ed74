"""GMM PPO: PPO fine-tuning of a pre-trained MLP Gaussian-mixture chunk policy (the DPPO paper's baseline).

The policy (algorithms/gaussian.py) is a mixture of 5 Gaussians over the whole chunk: per-mode
tanh-squashed means, one std per (mode, action dimension) re-initialised to `std_init` = 0.1 and
learnable within [0.01, 0.2], and mixture logits from a second MLP. A chunk is drawn by picking a mode
from the mixture weights and sampling that mode's Gaussian (unclipped, as the original). The PPO
sample's log-probability is the full joint mixture log-density of the executed actions (not averaged per
dimension), clamped to [-5, 2] like the Gaussian's; clip 0.01 as in every original GMM config (there is
none for gym; the Gaussian's gym clip 0.1 comes from a Gaussian-only config). Everything else (GAE,
critic, reward scaling, minibatches, learning rates, critic warm-up, the other gym defaults) is Gaussian
PPO's, which this class extends with the mixture policy and its defaults. method.md section 5; the
original model/rl/gmm_ppo.py.

Faithfulness notes, each an option with the original's value as default:
- The clamp [`logprob_min`, `logprob_max`] = [-5, 2] applies to the *joint* log-density, as in the
  original. With std 0.1 a likely chunk's joint log-density is about Ta * Da * 1.38 - Ta * Da / 2
  (~10 for hopper, ~25 for robomimic), far above 2: the clamp saturates for most samples, the ratio is
  then exactly 1 and the policy gradient of those samples 0, so the original GMM PPO learns only from
  unlikely samples. `logprob_max=none` (or `logprob_reduction=mean`, the joint divided by the number of
  entries) lifts this.
- Evaluation, like the original's deterministic mode, draws the mode from the mixture weights and
  executes its mean (the original added noise of std 1e-4); `eval_mode=argmax` takes the most likely mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from algorithms.gaussian import GMMPolicy
from algorithms.gaussian_ppo import GaussianPPO, GaussianPPOConfig
from algorithms.registry import register_algorithm


@dataclass
class GMMPPOConfig(GaussianPPOConfig):
    randn_clip: float | None = None
    """the original GMM samples without clipping"""
    logprob_reduction: Literal["mean", "sum"] = "sum"
    """'sum': the full joint mixture log-density (the original); 'mean': divided by the Ta * Da entries"""
    eval_mode: Literal["sample", "argmax"] = "sample"
    """evaluation mode choice: drawn from the mixture weights (the original) or the most likely one"""


@register_algorithm("gmm_ppo")
class GMMPPO(GaussianPPO):
    Config = GMMPPOConfig
    policy_kind = "gmm"

    actor_ft: GMMPolicy

    def _sample(self, obs: torch.Tensor, deterministic: bool, generator: torch.Generator | None) -> torch.Tensor:
        mode_choice = self.cfg.eval_mode if deterministic else "sample"
        return self.actor_ft.sample(obs, deterministic, self.cfg.randn_clip, generator, mode_choice)
