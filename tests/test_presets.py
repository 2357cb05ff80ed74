"""The `paper` preset is the original DPPO Gym fine-tuning config (method.md section 4)."""

import pytest

from bench.config import build_run_config


@pytest.mark.parametrize("task", ["hopper", "walker2d", "halfcheetah"])
def test_paper_preset_matches_the_original_gym_hyperparameters(task):
    c = build_run_config(task, "dppo", 0, "paper")
    a = c.algo
    assert (c.env.n_envs, c.train.n_steps, c.train.n_iterations) == (40, 500, 1000)
    assert (c.env.horizon_steps or 4, c.env.act_steps or 4) == (4, 4)
    assert (c.pretrain.denoising_steps, a.ft_denoising_steps, a.use_ddim) == (20, 10, False)
    assert (a.gamma, a.gae_lambda, a.gamma_denoising) == (0.99, 0.95, 0.99)
    assert (a.actor_lr, a.critic_lr, a.batch_size, a.update_epochs, a.n_critic_warmup_itr) == (1e-4, 1e-3, 50_000, 5, 0)
    assert (a.clip, a.clip_base, a.clip_rate) == (0.01, 0.01, 3.0)
    assert (a.min_sampling_std, a.min_logprob_std, a.randn_clip) == (0.1, 0.1, 3.0)
    assert (a.logprob_min, a.logprob_max, a.logprob_reduction) == (-5.0, 2.0, "mean")
    assert a.reward_scale_running and a.vf_coef == 0.5 and a.target_kl == 1.0 and a.bc_coef == 0.0
    assert a.critic_hidden == (256, 256, 256) and a.critic_activation == "Mish" and a.critic_residual
    assert (c.eval.every, c.eval.n_episodes) == (10, 40)
    p = c.pretrain
    assert (p.hidden_dims, p.time_dim, p.activation, p.residual) == ((512, 512, 512), 16, "ReLU", True)
    assert (p.batch_size, p.lr, p.lr_min, p.weight_decay, p.ema_decay) == (128, 1e-3, 1e-4, 1e-6, 0.995)
    assert c.data.n_transitions == 1_000_000
    # env steps per iteration: n_envs * n_steps * Ta = 80k, as in the paper
    assert c.env.n_envs * c.train.n_steps * 4 == 80_000


def test_small_preset_fits_a_laptop_and_smoke_is_tiny():
    small = build_run_config("hopper", "dppo", 0, "small")
    smoke = build_run_config("hopper", "dppo", 0, "smoke")
    steps = lambda c: c.env.n_envs * c.train.n_steps * 4 * c.train.n_iterations  # noqa: E731
    assert steps(small) == 300_000 and steps(smoke) < 200
