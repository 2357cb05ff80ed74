"""Presets: every built-in layer of default values, as data in one place.

A run's config is composed in this order, each layer a flat dict of dotted keys applied over the last
(`bench.config.build_run_config`; later layers win):

1. the config dataclasses' own defaults (`bench/config.py`, each algorithm's `Config`: the paper's values)
2. `SUITE_DEFAULTS[suite]`                         harness values of the task's suite
3. `ALGORITHM_DEFAULTS[algo][suite]`               the algorithm's values for that suite
4. `HARNESS_PRESETS[preset][suite]`, then `[preset][task]`
5. `ALGORITHM_PRESETS[algo][preset][suite]`, then `[preset][task]`
6. `--set key=value` overrides
7. task-dependent values still unset (Tp, Ta, episode length) are filled from the task (`resolve_task_values`)

A plugin algorithm (not in these tables) brings layers 3 and 5 as its class attributes `suite_defaults`
and `presets`, with the same shapes; a plugin task suite brings layers 2 and 4 as its registered
`envs.tasks.SuiteSpec` (`defaults`, `presets`); everything else is the same.
"""

from __future__ import annotations

import math
from typing import Any

# Per-suite defaults (method.md section 4), applied before the algorithm's and the preset's layers.
SUITE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gym": {"pretrain.activation": "ReLU", "pretrain.lr": 1e-3, "pretrain.lr_min": 1e-4,
            "pretrain.batch_size": 128},
    # robosuite steps cost ~5-10 ms of Python each: worker processes (async) use every core
    "robomimic": {"pretrain.activation": "Mish", "pretrain.lr": 1e-4, "pretrain.lr_min": 1e-5,
                  "pretrain.batch_size": 256, "env.vector": "async"},
    "toy": {"pretrain.activation": "Mish", "pretrain.lr": 1e-3, "pretrain.lr_min": 1e-4},
    # the paper pre-trained on 50 human demos per task; K = 100 (fine-tuned with 5 DDIM steps, dppo.py)
    "furniture": {"pretrain.activation": "Mish", "pretrain.lr": 1e-4, "pretrain.lr_min": 1e-5,
                  "pretrain.batch_size": 256, "pretrain.denoising_steps": 100, "env.vector": "async",
                  "data.n_demos": 50, "data.demo_quality": "mh"},
}

def _robomimic_paper(n_steps: int, n_iterations: int, epochs: int, mean_demo_len: int, wide: bool = False) -> dict:
    """Per-task paper values (method.md section 4; DPPO's cfg/robomimic/pretrain). Pre-training ran
    `epochs` passes over 300 mh demos at batch 256 (fine-tuning starts from the epoch-5000 checkpoint on
    Lift/Can, 8000 on Square/Transport); converted to updates with the mh sets' mean demo lengths
    (Can: 62,756 transitions in DPPO's processing script; the others approximate). EMA from epoch 20."""
    per_epoch = math.ceil(300 * mean_demo_len / 256)
    out = {"train.n_steps": n_steps, "train.n_iterations": n_iterations, "pretrain.n_updates": epochs * per_epoch,
           "pretrain.ema_start": 20 * per_epoch}
    if wide:  # Square and Transport: 1024x3 denoiser, 32-dim time embedding
        out.update({"pretrain.hidden_dims": (1024, 1024, 1024), "pretrain.time_dim": 32})
    return out


# Harness-level presets per suite, and per task where tasks of a suite differ (applied after the suite's
# entry); algorithms add their own keys for the same preset names.
HARNESS_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "toy": {"env.n_envs": 2, "train.n_iterations": 2, "train.n_steps": 5, "train.checkpoint_every": 1,
                 "eval.every": 1, "eval.n_episodes": 2, "eval.n_envs": 2, "data.n_transitions": 1_000,
                 "pretrain.hidden_dims": (32, 32, 32), "pretrain.n_updates": 50, "pretrain.batch_size": 64,
                 "pretrain.ema_start": 10, "pretrain.denoising_steps": 10},
        "gym": {"env.n_envs": 2, "train.n_iterations": 2, "train.n_steps": 8, "train.checkpoint_every": 1,
                "eval.every": 1, "eval.n_episodes": 2, "eval.n_envs": 2, "env.max_episode_steps": 40,
                "data.n_transitions": 3_000, "pretrain.hidden_dims": (32, 32, 32), "pretrain.n_updates": 50,
                "pretrain.batch_size": 64, "pretrain.ema_start": 10, "pretrain.denoising_steps": 10},
        "robomimic": {"env.n_envs": 2, "env.vector": "sync", "train.n_iterations": 2, "train.n_steps": 8,
                      "train.checkpoint_every": 1, "eval.every": 1, "eval.n_episodes": 2, "eval.n_envs": 2,
                      "env.max_episode_steps": 40, "data.n_demos": 2, "data.demo_quality": "ph",
                      "pretrain.hidden_dims": (32, 32, 32), "pretrain.n_updates": 50, "pretrain.batch_size": 64,
                      "pretrain.ema_start": 10, "pretrain.denoising_steps": 10},
        "furniture": {"env.n_envs": 2, "env.vector": "sync", "train.n_iterations": 2, "train.n_steps": 4,
                      "train.checkpoint_every": 1, "eval.every": 1, "eval.n_episodes": 2, "eval.n_envs": 2,
                      "env.max_episode_steps": 32, "data.n_demos": 2, "data.demo_quality": "ph",
                      "pretrain.hidden_dims": (32, 32, 32), "pretrain.n_updates": 50, "pretrain.batch_size": 64,
                      "pretrain.ema_start": 10, "pretrain.denoising_steps": 10},
    },
    "small": {
        # the tiny toy tasks: seconds on a CPU, enough for every algorithm to show learning
        "toy": {"env.n_envs": 10, "train.n_iterations": 15, "train.n_steps": 10, "train.checkpoint_every": 5,
                 "eval.every": 5, "eval.n_episodes": 50, "eval.n_envs": 25, "data.n_transitions": 10_000,
                 "pretrain.hidden_dims": (64, 64, 64), "pretrain.n_updates": 2_000, "pretrain.batch_size": 256,
                 "pretrain.ema_start": 200, "pretrain.denoising_steps": 10},
        "gym": {"env.n_envs": 10, "train.n_iterations": 60, "train.n_steps": 125, "eval.every": 10,
                "eval.n_episodes": 10, "eval.n_envs": 10, "data.n_transitions": 200_000,
                "pretrain.hidden_dims": (256, 256, 256), "pretrain.n_updates": 20_000,
                "pretrain.batch_size": 256},
        # CPU-sized (2 cores): one Lift episode per env per iteration, 3000 env steps
        "robomimic": {"env.n_envs": 10, "train.n_iterations": 40, "train.n_steps": 75, "eval.every": 10,
                      "eval.n_episodes": 20, "eval.n_envs": 10, "data.n_demos": 100,
                      "pretrain.hidden_dims": (256, 256, 256), "pretrain.n_updates": 5_000,
                      "pretrain.ema_start": 500},
        # Imperfect starts, like the paper's early checkpoints (deterministic success, seed 0): Lift is at 80%
        # after 5k updates (20 episodes), 56% after 3k (50 episodes) and 0% after 2k; Can at 0% after 5k and
        # 40% after 50k. Lift, the main job, evaluates 50 episodes (as the paper): with 20 the evaluation
        # noise (~0.1) was as large as the gain.
        "lift": {"pretrain.n_updates": 3_000, "train.n_iterations": 50, "eval.every": 25, "eval.n_episodes": 50},
        "can": {"pretrain.n_updates": 50_000},
        # Square: 5k updates at batch 256 gave 0% (and 50k: 0%). 60k updates at batch 512, lr 3e-4 (1 torch
        # thread, ~25 min on 2 shared cores) reach 0.15-0.20 over 20 episodes (0 at 10k, 0.05 at 20k, 0.10 at
        # 30k-40k); 100 "ph" demos were no better (0.10 at 20k-40k). One 400-step episode per env per iteration.
        "square": {"pretrain.n_updates": 60_000, "pretrain.batch_size": 512, "pretrain.lr": 3e-4,
                   "pretrain.ema_start": 1000, "train.n_steps": 100, "train.n_iterations": 30, "eval.every": 15,
                   "eval.n_episodes": 50},
        # CPU-sized (2 cores): one 700-step episode per env per iteration (7040 env steps), 50 mh demos.
        # Pre-trained one_leg succeeds in 0 of 10 episodes at 50k updates (256x3; with the expert's first
        # version also at 10k, with 200 demos, with "ph" demos, and 512x3 at 100k updates): behaviour cloning
        # this long a task needs the paper's budget, so this preset measures the pipeline, not a gain.
        "furniture": {"env.n_envs": 10, "train.n_iterations": 30, "train.n_steps": 88, "eval.every": 10,
                      "eval.n_episodes": 20, "eval.n_envs": 10, "pretrain.hidden_dims": (256, 256, 256),
                      "pretrain.n_updates": 50_000, "pretrain.ema_start": 500},
    },
    "paper": {
        "gym": {"env.n_envs": 40, "train.n_iterations": 1000, "train.n_steps": 500, "eval.every": 10,
                "eval.n_episodes": 40, "eval.n_envs": 40, "data.n_transitions": 1_000_000,
                "pretrain.hidden_dims": (512, 512, 512), "pretrain.n_updates": 3000 * 1_000_000 // 128,
                "pretrain.batch_size": 128, "pretrain.ema_start": 10 * 1_000_000 // 128},
        "robomimic": {"env.n_envs": 50, "eval.every": 10, "eval.n_episodes": 50, "eval.n_envs": 50,
                      "data.n_demos": 300, "data.demo_quality": "mh", "pretrain.hidden_dims": (512, 512, 512),
                      "pretrain.time_dim": 16, "pretrain.batch_size": 256, "pretrain.ema_every": 10},
        # method.md section 4, MLP variant (Tp = Ta = 8); 1000 evaluation episodes; pre-training as robomimic
        # (8000 epochs of batch 256 over 50 demos of ~400 steps)
        "furniture": {"env.n_envs": 1000, "train.n_steps": 88, "train.n_iterations": 1000, "eval.every": 10,
                      "eval.n_episodes": 1000, "eval.n_envs": 1000, "pretrain.hidden_dims": (512, 512, 512),
                      "pretrain.n_updates": 8000 * 79, "pretrain.ema_start": 20 * 79, "pretrain.ema_every": 10},
        **{task: _robomimic_paper(*args) for task, args in {
            "lift": (300, 81, 5000, 104), "can": (300, 151, 5000, 209),
            "square": (400, 201, 8000, 269, True), "transport": (400, 201, 8000, 653, True)}.items()},
    },
}


# ---------------------------------------------------------------------------------------------------
# Algorithms

_DIPO_SMOKE = {"algo.batch_size": 16, "algo.replay_ratio": 4, "algo.n_critic_warmup_itr": 1, "algo.lr_warmup_itr": 0,
               "algo.critic_hidden": (32, 32, 32)}

_IDQL_SMOKE = {"algo.batch_size": 16, "algo.replay_ratio": 2.0, "algo.n_candidates": 4, "algo.n_critic_warmup_itr": 1,
               "algo.lr_warmup_itr": 0}

# small: CPU-sized (about 3 CPU minutes on hopper); off-policy needs far fewer env steps than DPPO's small.
# With ~100x fewer gradient steps than the original, the target rate is raised so values propagate. On
# point_reach (5 chunks per episode, "toy" below) gamma 0.8 matches the horizon.
_IDQL_SMALL = {"algo.n_candidates": 10, "algo.batch_size": 256, "algo.replay_ratio": 24.0, "algo.buffer_size": 100_000,
               "algo.target_tau": 0.05, "algo.n_critic_warmup_itr": 3, "algo.lr_warmup_itr": 0}

_DQL_SMOKE = {"algo.batch_size": 16, "algo.replay_ratio": 1.0, "algo.n_critic_warmup_itr": 1, "algo.lr_warmup_itr": 0}

# small: CPU-sized (about 3 CPU minutes on hopper). With ~100x fewer critic steps than the original, an
# immature critic's action gradient wrecks the policy within an iteration: the critic gets a longer
# warm-up and a faster target, and the actor a 10x smaller step; small batches buy more steps. On
# point_reach (5 chunks per episode, "toy" below) gamma 0.8 matches the horizon.
_DQL_SMALL = {"algo.batch_size": 64, "algo.replay_ratio": 8.0, "algo.buffer_size": 100_000, "algo.target_tau": 0.05,
              "algo.n_critic_warmup_itr": 10, "algo.actor_lr": 1e-5, "algo.actor_lr_min": 1e-5,
              "algo.lr_warmup_itr": 0}

_QSM_SMOKE = {"algo.batch_size": 16, "algo.replay_ratio": 4, "algo.n_critic_warmup_itr": 1, "algo.lr_warmup_itr": 0,
              "algo.critic_hidden": (32, 32, 32)}

# Gym: the original's from-scratch Gaussian PPO values (cfg/gym/finetune/*/ppo_gaussian_mlp.yaml; there is no
# gym fine-tuning config)
_GAUSSIAN_PPO_GYM = {"algo.gamma": 0.99, "algo.clip": 0.1, "algo.n_critic_warmup_itr": 0, "algo.actor_lr": 1e-4,
                     "algo.actor_lr_min": 1e-4, "algo.batch_size": 1000, "algo.update_epochs": 10}

# Presets per suite (and per task where the original configs differ), shared by Gaussian and GMM PPO
_GAUSSIAN_PPO_PRESETS = {
    "smoke": {"gym": {"algo.batch_size": 8, "algo.update_epochs": 1, "algo.lr_warmup_itr": 0},
              "robomimic": {"algo.batch_size": 8, "algo.update_epochs": 1, "algo.lr_warmup_itr": 0,
                            "algo.n_critic_warmup_itr": 0},
              "toy": {"algo.batch_size": 5, "algo.update_epochs": 1, "algo.lr_warmup_itr": 0,
                       "algo.n_critic_warmup_itr": 0}},
    "small": {
        # gym: 1250 chunks per iteration (the harness small preset) in minibatches of 250
        "gym": {"algo.batch_size": 250, "algo.update_epochs": 10, "algo.lr_warmup_itr": 2},
        # robomimic: 750 chunks per iteration
        "robomimic": {"algo.batch_size": 250, "algo.lr_warmup_itr": 2},
        # point_reach: 100 chunks per iteration, 15 iterations; a larger actor lr to learn in seconds
        "toy": {"algo.batch_size": 50, "algo.update_epochs": 10, "algo.lr_warmup_itr": 0, "algo.actor_lr": 1e-3,
                 "algo.actor_lr_min": 1e-3, "algo.gamma": 0.99, "algo.n_critic_warmup_itr": 0},
    },
    # The Config and suite defaults are the original values (robomimic: Lift and Can); the original Gaussian
    # and GMM configs run longer than DPPO's and differ on Square and Transport.
    "paper": {"gym": {}, "robomimic": {},
              "lift": {"train.n_iterations": 300}, "can": {"train.n_iterations": 300},
              "square": {"train.n_iterations": 1000, "algo.batch_size": 10_000},
              "transport": {"train.n_iterations": 1000, "algo.batch_size": 10_000, "algo.update_epochs": 8,
                            "algo.actor_lr_min": 1e-6, "algo.std_init": 0.08}},
}

# Per algorithm: dotted overrides per suite (or task), applied after the suite defaults.
ALGORITHM_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "dppo": {
        # cfg/gym/finetune/*/ft_ppo_diffusion_mlp.yaml: PPO's epochs stop early past an approximate KL of 1
        "gym": {"algo.target_kl": 1.0},
        "robomimic": {"algo.gamma": 0.999, "algo.clip_base": 0.001, "algo.n_critic_warmup_itr": 2,
                      "algo.actor_lr": 1e-4, "algo.actor_lr_min": 1e-4, "algo.update_epochs": 10,
                      "algo.batch_size": 7500},
        # method.md section 4: K = 100 fine-tuned through 5 DDIM steps, std floor 0.04 for sampling
        "furniture": {"algo.gamma": 0.999, "algo.clip": 0.001, "algo.clip_base": 0.001, "algo.n_critic_warmup_itr": 1,
                      "algo.actor_lr": 1e-5, "algo.actor_lr_min": 1e-6, "algo.update_epochs": 5,
                      "algo.batch_size": 8800, "algo.gamma_denoising": 0.9, "algo.min_sampling_std": 0.04,
                      "algo.use_ddim": True, "algo.ddim_steps": 5, "algo.ft_denoising_steps": 5},
        # tiny toy tasks (learning checks): larger steps than the paper's, to learn in seconds
        "toy": {"algo.clip": 0.2, "algo.actor_lr": 1e-3, "algo.actor_lr_min": 1e-3, "algo.lr_warmup_itr": 0,
                 "algo.batch_size": 500, "algo.update_epochs": 10},
    },
    "drwr": {
        "robomimic": {"algo.gamma": 0.999, "algo.lr": 1e-5, "algo.lr_min": 1e-5, "algo.weight_decay": 1e-6},
    },
    "dawr": {
        "robomimic": {"algo.gamma": 0.999, "algo.actor_lr": 1e-5, "algo.actor_lr_min": 1e-5,
                      "algo.reward_scale": 1.0, "algo.buffer_steps": 3000, "algo.n_critic_warmup_itr": 2},
    },
    "dipo": {
        # cfg/robomimic/finetune/*/ft_dipo_diffusion_mlp.yaml (n_critic_warmup_itr is 5 on Lift, 2 elsewhere)
        "robomimic": {"algo.gamma": 0.999, "algo.reward_scale": 1.0, "algo.replay_ratio": 16,
                      "algo.actor_lr": 1e-5, "algo.actor_lr_min": 1e-5, "algo.n_critic_warmup_itr": 2},
    },
    "idql": {
        "robomimic": {"algo.n_candidates": 10, "algo.gamma": 0.999, "algo.reward_scale": 1.0,
                      "algo.buffer_size": 250_000, "algo.actor_lr": 1e-5, "algo.actor_lr_min": 1e-5},
    },
    "dql": {
        "robomimic": {"algo.gamma": 0.999, "algo.reward_scale": 1.0, "algo.actor_lr": 1e-5,
                      "algo.actor_lr_min": 1e-5},
    },
    "qsm": {
        # cfg/robomimic/finetune/*/ft_qsm_diffusion_mlp.yaml
        "robomimic": {"algo.gamma": 0.999, "algo.reward_scale": 1.0, "algo.buffer_size": 5000,
                      "algo.actor_lr": 1e-5, "algo.actor_lr_min": 1e-5},
    },
    "gaussian_ppo": {"gym": _GAUSSIAN_PPO_GYM},
    "gmm_ppo": {"gym": {**_GAUSSIAN_PPO_GYM, "algo.clip": 0.01}},
}

# Per algorithm: preset -> suite (or task) -> dotted overrides, applied after the harness preset.
ALGORITHM_PRESETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "dppo": {
        "smoke": {"gym": {"algo.batch_size": 64, "algo.update_epochs": 1, "algo.ft_denoising_steps": 5,
                          "algo.lr_warmup_itr": 0},
                  "robomimic": {"algo.batch_size": 64, "algo.update_epochs": 1, "algo.ft_denoising_steps": 5,
                                "algo.lr_warmup_itr": 0, "algo.n_critic_warmup_itr": 1},
                  "furniture": {"algo.batch_size": 64, "algo.update_epochs": 1, "algo.lr_warmup_itr": 0,
                                "algo.ddim_steps": 5}},
        "small": {"gym": {"algo.batch_size": 2500, "algo.update_epochs": 5, "algo.lr_warmup_itr": 2},
                  "robomimic": {"algo.batch_size": 2500, "algo.update_epochs": 10, "algo.lr_warmup_itr": 2},
                  # the paper's Square minibatch: all 10,000 pairs of an iteration. With 2500 (40 steps per
                  # iteration) the first actor update clipped 46% of the pairs and training success fell from
                  # 0.1-0.3 to 0 (seed 0: 0.12 -> 0.04 at iteration 15, 50 episodes)
                  "square": {"algo.batch_size": 10_000},
                  "furniture": {"algo.batch_size": 2200, "algo.lr_warmup_itr": 2},
                  "toy": {"train.n_steps": 20}},
        # robomimic: method.md section 4; Transport's sampling-std floor 0.08 as in DPPO's transport config
        "paper": {"gym": {"algo.batch_size": 50_000, "algo.update_epochs": 5},
                  "robomimic": {"algo.batch_size": 7500, "algo.update_epochs": 10},
                  "furniture": {"algo.batch_size": 8800, "algo.update_epochs": 5},
                  "square": {"algo.batch_size": 10_000},
                  "transport": {"algo.batch_size": 10_000, "algo.update_epochs": 5, "algo.min_sampling_std": 0.08}},
    },
    "drwr": {
        "smoke": {"gym": {"algo.batch_size": 64, "algo.update_epochs": 1, "algo.lr_warmup_itr": 0},
                  "toy": {"algo.batch_size": 32, "algo.update_epochs": 1, "algo.lr_warmup_itr": 0}},
        "small": {"gym": {"algo.batch_size": 1000, "algo.update_epochs": 16},
                  "toy": {"algo.batch_size": 100, "algo.update_epochs": 16, "algo.lr_warmup_itr": 0,
                           "algo.lr": 1e-3, "algo.lr_min": 1e-3, "train.n_steps": 20}},
        "paper": {"gym": {"algo.batch_size": 1000, "algo.update_epochs": 16},
                  "robomimic": {"algo.batch_size": 1000, "algo.update_epochs": 16}},
    },
    "dawr": {
        "smoke": {"gym": {"algo.batch_size": 64, "algo.replay_ratio": 16, "algo.buffer_steps": 16,
                          "algo.lr_warmup_itr": 0},
                  "toy": {"algo.batch_size": 32, "algo.replay_ratio": 8, "algo.buffer_steps": 10,
                           "algo.lr_warmup_itr": 0}},
        "small": {"gym": {"algo.batch_size": 1000, "algo.replay_ratio": 16, "algo.buffer_steps": 1250},
                  "toy": {"algo.batch_size": 100, "algo.replay_ratio": 64, "algo.buffer_steps": 50,
                           "algo.reward_scale": 1.0, "algo.actor_lr": 1e-3, "algo.actor_lr_min": 1e-3,
                           "algo.lr_warmup_itr": 0}},
        "paper": {"gym": {"algo.batch_size": 1000, "algo.replay_ratio": 64, "algo.buffer_steps": 5000},
                  "robomimic": {"algo.batch_size": 1000, "algo.replay_ratio": 64, "algo.buffer_steps": 3000}},
    },
    "dipo": {
        "smoke": {"gym": _DIPO_SMOKE, "robomimic": _DIPO_SMOKE, "toy": _DIPO_SMOKE},
        # gym: under 4 minutes on one CPU thread (201 s CPU on hopper; the updates dominate: 11 per
        # iteration of 256 samples, each with 10 action-gradient steps; 60k env steps); the other
        # algorithm values are the paper's
        "small": {"gym": {"train.n_steps": 25, "algo.batch_size": 256, "algo.replay_ratio": 12,
                          "algo.lr_warmup_itr": 0},
                  "robomimic": {"algo.batch_size": 256, "algo.lr_warmup_itr": 0},
                  # point_reach in seconds: 375 critic-only steps first (the critic's action gradient is
                  # anti-correlated with the true one early on: fast actions go with far goals), then a
                  # short, strong action ascent (5 steps of 3e-2) cloned at lr 1e-3
                  "toy": {"train.n_iterations": 6, "train.n_steps": 40, "algo.n_critic_warmup_itr": 3,
                           "algo.batch_size": 128, "algo.replay_ratio": 40, "algo.buffer_size": 1600,
                           "algo.action_lr": 3e-2, "algo.action_gradient_steps": 5, "algo.lr_warmup_itr": 0,
                           "algo.critic_hidden": (64, 64, 64), "algo.gamma": 0.9, "algo.reward_scale": 0.1,
                           "algo.actor_lr": 1e-3, "algo.actor_lr_min": 1e-3},
                  # on top of "toy": the narrow reward needs the paper's critic width, reward scale 1 and
                  # all the data (the critic's action gradient agrees with the true one after ~1000 steps on
                  # 1600+ transitions; 64 units or a 1600-row buffer stay near chance); improvements kept in
                  # their own column compound without corrupting Q (write-back into the executed actions:
                  # 8.6 -> 16.7; discarding them: no gain); the fast-moving actor acts (its Polyak average
                  # lags a 3e-3 learning rate)
                  "bimodal_bandit": {"train.n_iterations": 7, "algo.replay_ratio": 80, "algo.buffer_size": 1_000_000,
                                     "algo.critic_hidden": (256, 256, 256), "algo.reward_scale": 1.0,
                                     "algo.write_back": "separate", "algo.act_with_target_actor": False,
                                     "algo.actor_lr": 3e-3, "algo.actor_lr_min": 3e-3}},
        # The Config and suite defaults are the original's; the harness's paper preset has the Gym budget
        # (40 envs x 500 chunks x 1000 iterations) and the robomimic n_steps. The original DIPO ran 300
        # iterations on robomimic (1000 on Transport, with its own sampling std and lr floor).
        "paper": {"gym": {}, "robomimic": {"train.n_iterations": 300},
                  "lift": {"algo.n_critic_warmup_itr": 5},
                  "transport": {"train.n_iterations": 1000, "algo.min_sampling_std": 0.08, "algo.actor_lr_min": 1e-6}},
    },
    "idql": {
        "smoke": {"gym": _IDQL_SMOKE, "robomimic": _IDQL_SMOKE, "toy": _IDQL_SMOKE},
        "small": {"gym": {**_IDQL_SMALL, "train.n_iterations": 40, "train.n_steps": 40}, "robomimic": _IDQL_SMALL,
                  "toy": {"train.n_iterations": 10, "algo.batch_size": 50, "algo.replay_ratio": 32.0,
                           "algo.reward_scale": 1.0, "algo.gamma": 0.8, "algo.target_tau": 0.05,
                           "algo.n_critic_warmup_itr": 3, "algo.lr_warmup_itr": 0,
                           "algo.actor_lr": 3e-4, "algo.actor_lr_min": 3e-4}},
        # paper: the Config defaults and suite defaults are the original's; the harness's paper preset has
        # its Gym budget (40 envs x 500 chunks x 1000 iterations) and robomimic n_steps; these runs
        # were 300 iterations on robomimic (1000 on Transport, with its own sampling std and lr floor).
        "paper": {"gym": {}, "robomimic": {"train.n_iterations": 300},
                  "transport": {"train.n_iterations": 1000, "algo.min_sampling_std": 0.08,
                                "algo.actor_lr_min": 1e-6}},
    },
    "dql": {
        "smoke": {"gym": _DQL_SMOKE, "robomimic": _DQL_SMOKE, "toy": _DQL_SMOKE},
        "small": {"gym": {**_DQL_SMALL, "train.n_iterations": 40, "train.n_steps": 40}, "robomimic": _DQL_SMALL,
                  "toy": {"train.n_iterations": 10, "algo.batch_size": 50, "algo.replay_ratio": 32.0,
                           "algo.reward_scale": 1.0, "algo.gamma": 0.8, "algo.target_tau": 0.05,
                           "algo.lr_warmup_itr": 0},
                  # on top of "toy": the one-step bandit's critic is good enough after 2 iterations; with
                  # the 5-iteration warm-up the actor gets only half the run (8.6 -> 17.6; with 2: 54.0)
                  "bimodal_bandit": {"algo.n_critic_warmup_itr": 2}},
        # paper: the Config defaults and suite defaults are the original's; the harness's paper preset has
        # its Gym budget (40 envs x 500 chunks x 1000 iterations) and robomimic n_steps; these runs
        # were 300 iterations on robomimic (1000 on Transport, with its own sampling std, lr floor, warm-up).
        "paper": {"gym": {}, "robomimic": {"train.n_iterations": 300},
                  "transport": {"train.n_iterations": 1000, "algo.min_sampling_std": 0.08,
                                "algo.actor_lr_min": 1e-6, "algo.n_critic_warmup_itr": 2}},
    },
    "qsm": {
        "smoke": {"gym": _QSM_SMOKE, "robomimic": _QSM_SMOKE, "toy": _QSM_SMOKE},
        # gym: under 4 minutes on one CPU thread (151 s CPU on hopper; 18 updates of 256 samples per
        # iteration, 96k env steps); the other algorithm values are the paper's
        "small": {"gym": {"train.n_steps": 40, "algo.batch_size": 256, "algo.replay_ratio": 12,
                          "algo.lr_warmup_itr": 0},
                  "robomimic": {"algo.batch_size": 256, "algo.lr_warmup_itr": 0},
                  # point_reach in seconds: 375 critic-only steps first, then score matching at 3e-4
                  "toy": {"train.n_iterations": 8, "train.n_steps": 40, "algo.n_critic_warmup_itr": 3,
                           "algo.batch_size": 128, "algo.replay_ratio": 40, "algo.lr_warmup_itr": 0,
                           "algo.critic_hidden": (64, 64, 64), "algo.gamma": 0.9, "algo.reward_scale": 0.1,
                           "algo.actor_lr": 3e-4, "algo.actor_lr_min": 3e-4},
                  # on top of "toy": grad Q at the denoised action (the original target, at x_t, gains about
                  # +25 here with the rest of this entry, this one about +90); alpha * reward_scale = 10 so
                  # exp(alpha Q) concentrates on the narrow modes (0.1 is too flat), the paper's critic width
                  # (64 units fit the peaked reward too slowly for the 375 warm-up steps), a faster actor
                  "bimodal_bandit": {"algo.q_grad_at": "denoised", "algo.reward_scale": 1.0,
                                     "algo.critic_hidden": (256, 256, 256), "algo.actor_lr": 1e-3,
                                     "algo.actor_lr_min": 1e-3}},
        # The Config and suite defaults are the original's; the harness's paper preset has the Gym budget
        # (40 envs x 500 chunks x 1000 iterations) and the robomimic n_steps. The original QSM ran 300
        # iterations on robomimic (1000 on Transport, with its own sampling std and lr floor).
        "paper": {"gym": {}, "robomimic": {"train.n_iterations": 300},
                  "transport": {"train.n_iterations": 1000, "algo.min_sampling_std": 0.08, "algo.actor_lr_min": 1e-6}},
    },
    # On the bimodal bandit the pre-trained unimodal Gaussian sits between the two modes, where the reward
    # is ~0: with clip 0.01 and std 0.1 the learning check's outcome was noise (final score -7 -> -7..23
    # over seeds and thread counts); the gym clip 0.1 and the widest std 0.2 reach 48-93 on seeds 0-3.
    "gaussian_ppo": {**_GAUSSIAN_PPO_PRESETS, "small": {**_GAUSSIAN_PPO_PRESETS["small"], "bimodal_bandit": {"algo.clip": 0.1, "algo.std_init": 0.2}}},
    "gmm_ppo": _GAUSSIAN_PPO_PRESETS,
}


def preset_names() -> list[str]:
    return list(HARNESS_PRESETS)


def _algorithm_table(algorithm: str, algo_cls: type, attribute: str, table: dict) -> dict:
    """The algorithm's layer as class attributes are inherited: its own table entry or class attribute,
    else the nearest base class's (a plugin subclassing DPPO gets DPPO's presets unless it has its own)."""
    if algorithm in table:
        return table[algorithm]
    for klass in algo_cls.__mro__:
        if attribute in vars(klass):
            return vars(klass)[attribute]
        if vars(klass).get("name") in table:
            return table[vars(klass)["name"]]
    return {}


def preset_layers(task: str, suite: str, algorithm: str, algo_cls: type, preset: str) -> list[tuple[str, dict[str, Any]]]:
    """Layers 2-5 above, in order, each as (source named in error messages, dotted overrides)."""
    from envs.tasks import get_suite

    plugin_suite = get_suite(suite)
    defaults = _algorithm_table(algorithm, algo_cls, "suite_defaults", ALGORITHM_DEFAULTS)
    presets = _algorithm_table(algorithm, algo_cls, "presets", ALGORITHM_PRESETS).get(preset, {})
    return [
        ("suite defaults", SUITE_DEFAULTS.get(suite, plugin_suite.defaults)),
        (f"{algorithm} defaults", defaults.get(suite, {})),
        (f"preset {preset}", HARNESS_PRESETS[preset].get(suite, plugin_suite.presets.get(preset, {}))),
        (f"preset {preset} for {task}", HARNESS_PRESETS[preset].get(task, {})),
        (f"{algorithm} preset {preset}", presets.get(suite, {})),
        (f"{algorithm} preset {preset} for {task}", presets.get(task, {})),
    ]
