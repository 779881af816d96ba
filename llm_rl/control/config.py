"""Settings of `PPO` and `GRPO` on gymnasium environments, one documented dataclass each.

The fields are the keyword arguments of `PPO(...)` / `GRPO(...)` (Stable-Baselines3's names), so
`HfArgumentParser(PPOConfig)` builds a command line from them (`recipes/ppo_cartpole.py`).

llm_rl's PPO defaults differ from Stable-Baselines3's (one environment, n_steps 2048, batch 64,
10 epochs, lr 3e-4 constant): 8 environments x 256 steps per rollout (the same 2,048), minibatches
of 256, 10 epochs, lr 1e-3 annealed linearly to 0. That is one batched policy call per 8
environment steps and a quarter of the optimizer steps, each on 4x the samples; on a tiny MLP
both costs are per call, not per sample. On CartPole-v1 it reaches the solved line within 50,000
steps (README, "Classic control"). Pass SB3's values (and vf_coef=1.0: SB3's value loss is the
MSE, llm_rl.core's is 0.5 * MSE) to run SB3's algorithm.
"""

from dataclasses import asdict, dataclass, field
from typing import Literal

ACTIVATIONS = ("tanh", "relu", "elu", "leaky_relu", "gelu", "silu")
LR_SCHEDULES = ("constant", "linear")


class ConfigError(ValueError):
    """A setting of the wrong type or out of range; the message names the field and the fix."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(f"Invalid config: {message}")


@dataclass
class _Common:
    """Settings PPO and GRPO share."""

    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate (eps 1e-5, as SB3 and CleanRL)."})
    lr_schedule: Literal["constant", "linear"] = field(
        default="linear",
        metadata={"help": "'linear' anneals the rate to 0 at total_timesteps (CleanRL's anneal_lr); 'constant' as SB3."},
    )
    n_epochs: int = field(default=4, metadata={"help": "Passes over each rollout."})
    clip_range: float = field(
        default=0.2, metadata={"help": "PPO clip: ratio kept in [1 - clip_range, 1 + clip_range] (arXiv 1707.06347)."}
    )
    ent_coef: float = field(default=0.0, metadata={"help": "Entropy bonus coefficient."})
    max_grad_norm: float = field(default=0.5, metadata={"help": "Clip the global gradient norm to this."})
    net_arch: str = field(
        default="64,64", metadata={"help": "Hidden layer widths of the actor (and of the critic), comma-separated."}
    )
    activation_fn: Literal["tanh", "relu", "elu", "leaky_relu", "gelu", "silu"] = field(
        default="tanh", metadata={"help": "Hidden activation (tanh, as in the PPO paper's implementations)."}
    )
    log_std_init: float = field(default=0.0, metadata={"help": "Box actions: initial log standard deviation of the Gaussian."})
    seed: int | None = field(default=None, metadata={"help": "Seeds torch, the sampler and the environments (None: random)."})
    verbose: int = field(default=0, metadata={"help": "1 prints a table of metrics after every update, like Stable-Baselines3."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA if available, else CPU), 'cpu', 'cuda', ..."})

    def _check_common(self) -> None:
        _check(
            isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0,
            f"learning_rate must be > 0, got {self.learning_rate!r}",
        )
        _check(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        _check(isinstance(self.n_epochs, int) and self.n_epochs >= 1, f"n_epochs must be an int >= 1, got {self.n_epochs!r}")
        _check(self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}")
        _check(self.ent_coef >= 0, f"ent_coef must be >= 0, got {self.ent_coef}")
        _check(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        _check(self.activation_fn in ACTIVATIONS, f"activation_fn must be one of {ACTIVATIONS}, got {self.activation_fn!r}")
        widths = self.hidden_sizes()
        _check(all(w >= 1 for w in widths), f"net_arch must be positive widths like '64,64', got {self.net_arch!r}")
        _check(self.verbose in (0, 1), f"verbose must be 0 or 1, got {self.verbose!r}")

    def hidden_sizes(self) -> list[int]:
        """`net_arch` as a list of ints ('' means no hidden layer: a linear policy)."""
        try:
            return [int(w) for w in str(self.net_arch).replace(" ", "").split(",") if w]
        except ValueError:
            raise ConfigError(
                f"Invalid config: net_arch must be comma-separated ints like '64,64', got {self.net_arch!r}"
            ) from None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PPOConfig(_Common):
    """PPO (Schulman et al. 2017, arXiv 1707.06347) with a separate critic, GAE and clipping."""

    n_steps: int = field(default=256, metadata={"help": "Steps per environment per rollout (rollout size: n_steps * n_envs)."})
    n_envs: int = field(default=8, metadata={"help": "Environments stepped together (gymnasium's SyncVectorEnv)."})
    batch_size: int = field(default=256, metadata={"help": "Minibatch size; must divide n_steps * n_envs."})
    n_epochs: int = field(default=10, metadata={"help": "Passes over each rollout."})
    gamma: float = field(default=0.99, metadata={"help": "Discount factor."})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda (arXiv 1506.02438)."})
    clip_range_vf: float | None = field(
        default=None, metadata={"help": "Clip the value around the rollout's (None: no clipping, SB3's default)."}
    )
    vf_coef: float = field(
        default=0.5, metadata={"help": "Value loss weight; the value loss is 0.5 * MSE (CleanRL's), SB3's is MSE."}
    )
    normalize_advantage: bool = field(default=True, metadata={"help": "Whiten advantages per minibatch (SB3, CleanRL)."})

    def __post_init__(self):
        self._check_common()
        _check(isinstance(self.n_steps, int) and self.n_steps >= 1, f"n_steps must be an int >= 1, got {self.n_steps!r}")
        _check(isinstance(self.n_envs, int) and self.n_envs >= 1, f"n_envs must be an int >= 1, got {self.n_envs!r}")
        _check(
            isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be an int >= 1, got {self.batch_size!r}"
        )
        rollout = self.n_steps * self.n_envs
        _check(
            rollout % self.batch_size == 0,
            f"batch_size={self.batch_size} does not divide n_steps * n_envs = {self.n_steps} * {self.n_envs} = {rollout}; "
            f"pick a divisor of {rollout} (or change n_steps / n_envs)",
        )
        _check(self.normalize_advantage is False or self.batch_size >= 2, "normalize_advantage needs batch_size >= 2")
        _check(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}")
        _check(0 <= self.gae_lambda <= 1, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        _check(
            self.clip_range_vf is None or self.clip_range_vf > 0, f"clip_range_vf must be > 0 or None, got {self.clip_range_vf}"
        )
        _check(self.vf_coef >= 0, f"vf_coef must be >= 0, got {self.vf_coef}")


@dataclass
class GRPOConfig(_Common):
    """GRPO (Shao et al. 2024, arXiv 2402.03300) on an environment: groups of episodes from one start state, no critic."""

    group_size: int = field(
        default=8, metadata={"help": "G: episodes run from the same start state (env.reset(seed=s) on G envs)."}
    )
    n_groups: int = field(default=4, metadata={"help": "Start states per update (n_groups * group_size environments)."})
    batch_size: int = field(
        default=512, metadata={"help": "Minibatch size in steps (the last minibatch of an update may be smaller)."}
    )
    advantage_scale: Literal["group", "batch", "none"] = field(
        default="group",
        metadata={"help": "Divide by the group's std (GRPO), the batch's, or not at all (Dr. GRPO, arXiv 2503.20783)."},
    )
    beta: float = field(
        default=0.0, metadata={"help": "KL coefficient to a frozen copy of the initial policy (0: no reference)."}
    )
    kl_estimator: Literal["k1", "k2", "k3"] = field(
        default="k3", metadata={"help": "KL estimator (Schulman, 'Approximating KL divergence')."}
    )

    def __post_init__(self):
        self._check_common()
        _check(
            isinstance(self.group_size, int) and self.group_size >= 2,
            f"group_size must be an int >= 2 to compare episodes, got {self.group_size!r}",
        )
        _check(isinstance(self.n_groups, int) and self.n_groups >= 1, f"n_groups must be an int >= 1, got {self.n_groups!r}")
        _check(
            isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be an int >= 1, got {self.batch_size!r}"
        )
        _check(
            self.advantage_scale in ("group", "batch", "none"),
            f"advantage_scale must be group, batch or none, got {self.advantage_scale!r}",
        )
        _check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        _check(self.kl_estimator in ("k1", "k2", "k3"), f"kl_estimator must be k1, k2 or k3, got {self.kl_estimator!r}")
