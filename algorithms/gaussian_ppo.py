"""Gaussian PPO: PPO fine-tuning of a pre-trained MLP Gaussian chunk policy (the DPPO paper's baseline).

The policy (algorithms/gaussian.py) outputs a tanh-squashed mean for the whole chunk (Tp, Da) and a std
that is either one learnable value per action dimension, re-initialised to `std_init` (0.1 robomimic,
0.08 Transport, 0.04 furniture) and clamped to [std_min, std_max] = [0.01, 0.2], or (a policy
pre-trained with `pretrain.gaussian.std=state`) a per-state std head. Each env step is one PPO sample: the
chunk is drawn once (z clipped to +-3 std), its log-probability is the Gaussian log-density of the
executed actions averaged over their (Ta, Da) entries and clamped to [-5, 2] (old and new alike), and
PPO's clipped surrogate (clip 0.01; 0.1 on gym, see below) is applied with GAE advantages normalised per
minibatch. The critic, GAE, reward scaling, minibatching and optimiser step are DPPO's (algorithms/ppo.py).
method.md section 5; the original model/rl/gaussian_ppo.py and agent/finetune/train_ppo_gaussian_agent.py.

Choices, each an option with the original's value as default:
- `logprob_reduction` "mean" (the original averages; "sum" is the exact chunk log-likelihood) and the
  clamp [`logprob_min`, `logprob_max`] (None: no clamp). Only the executed Ta actions are scored, as in
  DPPO; the original scored all Tp, which is the same in all its configs (Tp = Ta).
- `target_kl` = 1 and `ent_coef` = 0 as in every original config.
- Evaluation is the mean chunk (the original drew with std 1e-4: the same up to 1e-4).
- Gym has no original Gaussian fine-tuning config, only a from-scratch one (ppo_gaussian_mlp.yaml, Tp = 1);
  the gym suite defaults take its PPO values: clip 0.1, actor lr 1e-4, batch 1000, 10 epochs, gamma
  0.99, no critic warm-up. (With robomimic's clip 0.01 the `small` hopper run did not improve:
  1142 -> 1028; with 0.1 it reached 2297.)
There is no BC regulariser (off in every original config).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch

from algorithms.base import ActorCriticConfig, ActOutput, AlgoContext, Rollout
from algorithms.gaussian import GaussianPolicy
from algorithms.ppo import PolicyLoss, PPOAlgorithm, clipped_surrogate
from algorithms.registry import register_algorithm
from core.errors import BenchError


@dataclass
class GaussianPPOConfig(ActorCriticConfig):
    std_init: float | None = 0.1
    """fine-tuning std at the start, for a fixed-std policy (0.08 Transport, 0.04 furniture); None keeps
    the pre-training std"""
    std_min: float = 0.01
    std_max: float = 0.2
    learn_std: bool = True
    """the fixed std is learnable while fine-tuning (the original's learn_fixed_std)"""
    randn_clip: float | None = 3.0
    """sampled z = (a - mean) / std is clipped to +-randn_clip"""
    logprob_reduction: Literal["mean", "sum"] = "mean"
    """of the chunk's log-density over the executed (Ta, Da) entries; the original averages"""
    logprob_min: float | None = -5.0
    logprob_max: float | None = 2.0
    """clamp of the reduced log-probability (new and old), as the original"""
    gamma: float = 0.999
    gae_lambda: float = 0.95
    clip: float = 0.01
    norm_adv: bool = True
    reward_scale_running: bool = True
    reward_clip: float = 10.0
    reward_var_unbiased: bool = True
    """the running return variance divides by count - 1, as the original's RunningMeanStd; false: by count"""
    n_critic_warmup_itr: int = 2
    update_epochs: int = 10
    batch_size: int = 7500
    """env steps (chunks) per minibatch"""
    actor_lr: float = 1e-5
    actor_lr_min: float = 1e-5
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    """entropy bonus (of the reduced log-probability's distribution)"""
    clip_vloss: float | None = None
    target_kl: float | None = 1.0


@register_algorithm("gaussian_ppo")
class GaussianPPO(PPOAlgorithm):
    Config = GaussianPPOConfig
    policy_kind = "gaussian"
    extra_stats = ("entropy",)

    @classmethod
    def check_config(cls, cfg: GaussianPPOConfig) -> None:
        super().check_config(cfg)
        if not 0 < cfg.std_min <= cfg.std_max or (cfg.std_init is not None and cfg.std_init <= 0):
            raise BenchError(f"need 0 < algo.std_min <= algo.std_max and algo.std_init > 0, got {cfg.std_min}, "
                             f"{cfg.std_max}, {cfg.std_init}")

    def __init__(self, cfg: GaussianPPOConfig, ctx: AlgoContext, pretrained: GaussianPolicy):
        super().__init__(cfg, ctx, pretrained)
        dev = ctx.device
        self.actor_ft = copy.deepcopy(pretrained).to(dev).train()
        if pretrained.log_var is not None:  # a fixed std: fine-tuning's initial value and bounds, learnable
            self.actor_ft.set_std(cfg.std_init, cfg.std_min, cfg.std_max, cfg.learn_std)
        self.build_critic()

    # ----------------------------------------------------------------------------------------------
    # Acting

    def _reduce(self, joint: torch.Tensor) -> torch.Tensor:
        """Joint log-density (or entropy) of the executed entries -> the per-sample quantity PPO uses."""
        if self.cfg.logprob_reduction == "mean":
            return joint / (self.ctx.act_steps * self.ctx.act_dim)
        return joint

    def _logprob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        logp = self._reduce(self.actor_ft.log_prob(obs, actions, self.ctx.act_steps))
        if self.cfg.logprob_min is None and self.cfg.logprob_max is None:
            return logp
        return logp.clamp(self.cfg.logprob_min, self.cfg.logprob_max)

    def _sample(self, obs: torch.Tensor, deterministic: bool, generator: torch.Generator | None) -> torch.Tensor:
        return self.actor_ft.sample(obs, deterministic, self.cfg.randn_clip, generator)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        actions = self._sample(obs, deterministic, generator)
        if deterministic:
            return ActOutput(actions)
        return ActOutput(actions, {"actions": actions, "logprobs": self._logprob(obs, actions)})

    # ----------------------------------------------------------------------------------------------
    # Update

    def policy_loss(self, data: dict[str, torch.Tensor], idx: torch.Tensor, adv: torch.Tensor,
                    update_actor: bool) -> PolicyLoss:
        cfg, obs_b = self.cfg, data["obs"][idx]
        # old log-probs were reduced and clamped at sampling time
        log_ratio = self._logprob(obs_b, data["actions"][idx]) - data["logprobs"][idx]
        ratio = log_ratio.exp()
        a = adv[idx]
        if cfg.norm_adv:
            a = (a - a.mean()) / (a.std() + 1e-8)
        pg_loss = clipped_surrogate(a, ratio, cfg.clip).mean()
        out = PolicyLoss(idx, pg_loss, pg_loss, ratio, log_ratio, cfg.clip)
        if cfg.ent_coef > 0:
            entropy = self._reduce(self.actor_ft.entropy(obs_b, self.ctx.act_steps)).mean()
            out.actor_loss = pg_loss - cfg.ent_coef * entropy
            out.stats["entropy"] = entropy.item()
        return out

    def learn(self, ro: Rollout, iteration: int) -> dict[str, float]:
        out = super().learn(ro, iteration)
        with torch.no_grad():
            out["std"] = self.actor_ft.mean_std(ro.obs.flatten(0, 1)[:1024])
        return out
