"""Policy kinds: the pre-trained policies algorithms start from (an algorithm names one in `policy_kind`).

A kind is a `PolicyKind` subclass registered with `@register_policy_kind("name")`. It carries
- `Config`: its architecture dataclass, which becomes the config section `pretrain.<name>` (None: the
  kind is configured by pretrain's top-level fields, as the diffusion policy);
- `architecture(pretrain)`: its resolved architecture as a dict (what the pre-training cache key hashes);
- `check(pretrain)`: one-line `BenchError`s for settings no run can use (called before any work);
- `build(obs_dim, act_dim, horizon_steps, pretrain)`: the untrained policy, an `nn.Module` with
  `loss(action_chunks, obs, generator=...)` (its behaviour-cloning loss) and `horizon_steps`/`act_dim`;
- `check_horizon(pretrain, horizon_steps)`: optional, a one-line `BenchError` for a chunk length Tp the
  architecture cannot take (its `build` should refuse such a Tp too);
- `provides`: optional, the kind an algorithm names whose policy this kind's is a drop-in for (the same
  class with another network, e.g. `diffusion_unet` provides `diffusion`); a run's `policy_kind` may name
  such a kind (`policy_kind_of_run`, `run_policy_kind` check the fit).
`pretrain` is the run's resolved `pretrain` section (optimisation fields, the top-level MLP fields and
every kind's section). Built-in kinds are below; third-party kinds register through the entry-point
group `dppo_bench.policy_kinds` (`name = "package.module:KindClass"`), or by importing the module that
defines them (e.g. from the plugin algorithm's module); a module of this package that registers a kind
is found without any other edit. docs/adding-a-policy-kind.md has an example.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch.nn as nn

from algorithms.diffusion import DiffusionPolicy
from algorithms.gaussian import GaussianPolicy, GaussianPolicyConfig, GMMPolicy, GMMPolicyConfig
from algorithms.networks import DenoisingMLP, check_residual_mlp
from algorithms.unet import DenoisingUNet1D, UNetConfig, check_unet, check_unet_horizon
from core.errors import BenchError
from core.registry import Registry

ENTRY_POINT_GROUP = "dppo_bench.policy_kinds"
# pretrain's top-level architecture fields: the diffusion policy's, and the MLP other kinds default to
DIFFUSION_FIELDS = ("denoising_steps", "hidden_dims", "time_dim", "activation", "residual", "denoised_clip")


class PolicyKind:
    name: ClassVar[str] = ""
    Config: ClassVar[type | None] = None
    provides: ClassVar[str | None] = None  # None: only algorithms naming this kind itself

    @classmethod
    def section(cls, pretrain):
        """The kind's `pretrain.<name>` section; its defaults where `pretrain` was built without it."""
        section = getattr(pretrain, cls.name, None)
        return section if section is not None else cls.Config()

    @classmethod
    def architecture(cls, pretrain) -> dict[str, Any]:
        return dataclasses.asdict(cls.section(pretrain))

    @classmethod
    def check(cls, pretrain) -> None:
        """Raise a one-line BenchError for architecture values no run can use."""

    @classmethod
    def check_horizon(cls, pretrain, horizon_steps: int) -> None:
        """Raise a one-line BenchError for a chunk length Tp this architecture cannot take."""

    @classmethod
    def build(cls, obs_dim: int, act_dim: int, horizon_steps: int, pretrain) -> nn.Module:
        raise NotImplementedError


def _check_kind(name: str, cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, PolicyKind)):
        raise BenchError(f"cannot load policy kind {name!r}: {cls!r} is not an algorithms.policies.PolicyKind")


def _import_builtins() -> None:
    from algorithms.registry import import_builtin_modules

    import_builtin_modules()


REGISTRY = Registry("policy kind", ENTRY_POINT_GROUP, import_builtins=_import_builtins, check=_check_kind)
register_policy_kind = REGISTRY.register
list_policy_kinds = REGISTRY.names
get_policy_kind = REGISTRY.get


def provided_kind(kind: str) -> str:
    """The kind an algorithm names (`policy_kind`) that `kind`'s policies serve: its `provides`, else itself."""
    cls = get_policy_kind(kind)
    return cls.provides or cls.name


def run_policy_kind(algorithm_kind: str, requested: str | None = None, algorithm: str = "the algorithm") -> str:
    """The kind a run pre-trains and fine-tunes: `requested` (the run's choice, e.g. `diffusion_unet` for a
    DPPO run) when given, else the algorithm's own `policy_kind`. A requested kind must provide what the
    algorithm starts from: a one-line BenchError naming the kinds that do otherwise."""
    if requested is None or requested == algorithm_kind:
        return algorithm_kind
    if provided_kind(requested) != algorithm_kind:
        fits = [k for k in list_policy_kinds() if k in REGISTRY.entries and provided_kind(k) == algorithm_kind]
        raise BenchError(f"policy kind {requested!r} builds a {provided_kind(requested)} policy, but {algorithm} "
                         f"starts from a {algorithm_kind} policy; kinds that fit: {', '.join(fits)}")
    return requested


def policy_kind_of_run(cfg) -> str:
    """The kind a run config pre-trains: its `policy_kind` when set (configs without the key: None), else
    its algorithm's `policy_kind`; a kind that does not fit the algorithm is a one-line BenchError."""
    from algorithms.registry import get_algorithm

    return run_policy_kind(get_algorithm(cfg.algorithm).policy_kind, getattr(cfg, "policy_kind", None),
                           f"algorithm {cfg.algorithm!r}")


def policy_kind_sections() -> list[tuple[str, type]]:
    """(section name, Config class) of every registered kind with a Config, in registration order."""
    return [(name, cls.Config) for name, cls in REGISTRY.entries.items() if cls.Config is not None]


# ---------------------------------------------------------------------------------------------------
# Built-in kinds

@register_policy_kind("diffusion")
class DiffusionKind(PolicyKind):
    """The DDPM diffusion policy (algorithms/diffusion.py) with the denoising MLP; pretrain's top-level fields."""

    @classmethod
    def architecture(cls, pretrain) -> dict[str, Any]:
        arch = {k: getattr(pretrain, k) for k in DIFFUSION_FIELDS}
        arch["hidden_dims"] = tuple(arch["hidden_dims"])
        return arch

    @classmethod
    def check(cls, pretrain) -> None:
        check_residual_mlp(tuple(pretrain.hidden_dims), pretrain.residual, "pretrain.residual", "pretrain.hidden_dims")

    @classmethod
    def build(cls, obs_dim, act_dim, horizon_steps, pretrain) -> DiffusionPolicy:
        net = DenoisingMLP(obs_dim, horizon_steps, act_dim, tuple(pretrain.hidden_dims), pretrain.time_dim,
                           pretrain.activation, pretrain.residual)
        return DiffusionPolicy(net, pretrain.denoising_steps, pretrain.denoised_clip)


@register_policy_kind("diffusion_unet")
class DiffusionUNetKind(PolicyKind):
    """The same DDPM diffusion policy with the temporal UNet denoiser (algorithms/unet.py), as DPPO runs
    Furniture-Bench and Transport: its section `pretrain.diffusion_unet`; the chain (denoising_steps,
    denoised_clip) is pretrain's top-level. A DiffusionPolicy, so it serves every `diffusion` algorithm."""

    Config = UNetConfig
    provides = "diffusion"

    @classmethod
    def architecture(cls, pretrain) -> dict[str, Any]:
        arch = dataclasses.asdict(cls.section(pretrain))
        arch["dim_mults"] = tuple(arch["dim_mults"])
        return arch | {"denoising_steps": pretrain.denoising_steps, "denoised_clip": pretrain.denoised_clip}

    @classmethod
    def check(cls, pretrain) -> None:
        check_unet(cls.section(pretrain))

    @classmethod
    def check_horizon(cls, pretrain, horizon_steps: int) -> None:
        check_unet_horizon(cls.section(pretrain), horizon_steps)

    @classmethod
    def build(cls, obs_dim, act_dim, horizon_steps, pretrain) -> DiffusionPolicy:
        net = DenoisingUNet1D(obs_dim, horizon_steps, act_dim, cls.section(pretrain))
        return DiffusionPolicy(net, pretrain.denoising_steps, pretrain.denoised_clip)


class _ChunkMLPKind(PolicyKind):
    """Gaussian and GMM: an MLP whose widths, activation and residual blocks default (None) to the
    diffusion MLP's, so presets size every kind alike."""

    @classmethod
    def architecture(cls, pretrain) -> dict[str, Any]:
        arch = dataclasses.asdict(cls.section(pretrain))
        for name in ("hidden_dims", "activation", "residual"):
            if arch[name] is None:
                arch[name] = getattr(pretrain, name)
        arch["hidden_dims"] = tuple(arch["hidden_dims"])
        return arch

    @classmethod
    def check(cls, pretrain) -> None:
        arch = cls.architecture(pretrain)
        check_residual_mlp(arch["hidden_dims"], arch["residual"], f"pretrain.{cls.name}.residual",
                           f"pretrain.{cls.name}.hidden_dims")
        if arch["fixed_std"] <= 0:
            raise BenchError(f"pretrain.{cls.name}.fixed_std must be positive, got {arch['fixed_std']}")

    @classmethod
    def mlp_args(cls, obs_dim, act_dim, horizon_steps, arch) -> tuple:
        return obs_dim, horizon_steps, act_dim, arch["hidden_dims"], arch["activation"], arch["residual"]


@register_policy_kind("gaussian")
class GaussianKind(_ChunkMLPKind):
    Config = GaussianPolicyConfig

    @classmethod
    def check(cls, pretrain) -> None:
        super().check(pretrain)
        arch = cls.architecture(pretrain)
        if not 0 < arch["state_std_min"] <= arch["state_std_max"]:
            raise BenchError(f"need 0 < pretrain.gaussian.state_std_min <= state_std_max, got "
                             f"{arch['state_std_min']}, {arch['state_std_max']}")

    @classmethod
    def build(cls, obs_dim, act_dim, horizon_steps, pretrain) -> GaussianPolicy:
        a = cls.architecture(pretrain)
        return GaussianPolicy(*cls.mlp_args(obs_dim, act_dim, horizon_steps, a), a["std"], a["fixed_std"],
                              a["state_std_min"], a["state_std_max"])


@register_policy_kind("gmm")
class GMMKind(_ChunkMLPKind):
    Config = GMMPolicyConfig

    @classmethod
    def check(cls, pretrain) -> None:
        super().check(pretrain)
        n_modes = cls.section(pretrain).n_modes
        if n_modes < 1:
            raise BenchError(f"pretrain.gmm.n_modes must be at least 1, got {n_modes}")

    @classmethod
    def build(cls, obs_dim, act_dim, horizon_steps, pretrain) -> GMMPolicy:
        a = cls.architecture(pretrain)
        return GMMPolicy(*cls.mlp_args(obs_dim, act_dim, horizon_steps, a), a["n_modes"], a["fixed_std"])
