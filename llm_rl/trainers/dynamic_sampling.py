"""Dynamic sampling (DAPO, Yu et al. 2025, arXiv 2503.14476, section 3.2): train on groups whose rewards differ.

A group whose G rewards are all equal has advantage 0 under a group baseline: it gives no
policy gradient, yet costs a full update. With dynamic sampling a step drops such groups
and draws further rounds of prompts from the stream until it has as many informative
groups as a step trains on (at most ``max_sampling_rounds`` rounds; then it trains on the
informative groups it found, the batch filled up with dropped groups masked out of the loss).

Process invariance: every round's groups are gathered from all processes in stream order,
the choice is made on that global list (the same on every process), and process ``p`` then
trains on the ``p``-th slice of the chosen groups. So N processes draw, choose and train on
exactly the groups one process would. A round always draws a whole global batch, whatever
the number of processes, so the stream's cursor (the resume state) moves the same way too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from llm_rl.rollout import Rollout


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """`(N * G,)` rewards -> `(N,)` bool: True where the group's rewards are not all equal (std > 0).

    Exact equality, not a mean in a range: with non-binary rewards a group of equal partial
    scores gives no gradient either. NaN (a reward that did not apply) counts as different.
    """
    grouped = rewards.view(-1, group_size)  # (N, G)
    return ~(grouped == grouped[:, :1]).all(dim=1)


def choose_groups(informative: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of the drawn groups a step trains on: `(indices (target,), filler (target,) bool)`.

    The first ``target`` informative groups in draw order; when fewer were drawn, the batch is
    filled up with the earliest uninformative ones, marked ``filler`` (they carry no gradient
    and are masked out of the loss, so every process still gets whole, equal micro-batches).
    """
    if informative.numel() < target:
        raise ValueError(f"{informative.numel()} groups drawn, fewer than the {target} a step trains on")
    order = torch.arange(informative.numel(), device=informative.device)
    found = order[informative][:target]
    fill = order[~informative][: target - found.numel()]
    filler = torch.cat([torch.zeros(found.numel(), dtype=torch.bool), torch.ones(fill.numel(), dtype=torch.bool)])
    return torch.cat([found, fill]), filler.to(informative.device)


@dataclass
class Groups:
    """Scored groups: rows ``[i*G:(i+1)*G]`` of ``rollout`` and the rewards belong to group ``i``."""

    rollout: Rollout
    rewards: torch.Tensor  # (B,) total reward
    per_func: dict[str, torch.Tensor]  # name -> (B,)
    trainable: torch.Tensor = field(default=None)  # (B,) bool; False on dynamic sampling's filler rows

    def __post_init__(self) -> None:
        if self.trainable is None:
            self.trainable = torch.ones_like(self.rewards, dtype=torch.bool)

    def select(self, groups: torch.Tensor, group_size: int) -> Groups:
        """The groups at indices ``groups``, in that order."""
        rows = (groups[:, None] * group_size + torch.arange(group_size, device=groups.device)).reshape(-1)  # (len * G,)
        rollout = Rollout(**{name: getattr(self.rollout, name)[rows] for name in _ROLLOUT_FIELDS})
        return Groups(rollout, self.rewards[rows], {k: v[rows] for k, v in self.per_func.items()}, self.trainable[rows])


_ROLLOUT_FIELDS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "sampling_logprobs", "truncated")


def _padded(rollout: Rollout, prompt_width: int, completion_width: int, pad_token_id: int) -> Rollout:
    """``rollout`` with prompts left-padded and completions right-padded to the given widths."""
    left, right = prompt_width - rollout.prompt_ids.shape[1], completion_width - rollout.completion_ids.shape[1]
    return replace(
        rollout,
        prompt_ids=F.pad(rollout.prompt_ids, (left, 0), value=pad_token_id),
        prompt_mask=F.pad(rollout.prompt_mask, (left, 0), value=0),
        completion_ids=F.pad(rollout.completion_ids, (0, right), value=pad_token_id),
        completion_mask=F.pad(rollout.completion_mask, (0, right), value=0),
        sampling_logprobs=F.pad(rollout.sampling_logprobs, (0, right), value=0.0),
    )


def concat_groups(parts: list[Groups], pad_token_id: int) -> Groups:
    """One ``Groups`` holding ``parts`` one after another (padded to common widths)."""
    prompt_width = max(p.rollout.prompt_ids.shape[1] for p in parts)
    completion_width = max(p.rollout.completion_ids.shape[1] for p in parts)
    rollouts = [_padded(p.rollout, prompt_width, completion_width, pad_token_id) for p in parts]
    rollout = Rollout(**{name: torch.cat([getattr(r, name) for r in rollouts]) for name in _ROLLOUT_FIELDS})
    per_func = {k: torch.cat([p.per_func[k] for p in parts]) for k in parts[0].per_func}
    return Groups(rollout, torch.cat([p.rewards for p in parts]), per_func, torch.cat([p.trainable for p in parts]))


def gather_groups(accelerator, groups: Groups, pad_token_id: int) -> Groups:
    """Every process's ``groups``, concatenated in process order (= stream order), on every process."""
    if accelerator.num_processes == 1:
        return groups
    r = groups.rollout

    def gather(tensor: torch.Tensor, pad_index=0, pad_first=False) -> torch.Tensor:
        if tensor.dim() > 1:
            tensor = accelerator.pad_across_processes(tensor.contiguous(), dim=1, pad_index=pad_index, pad_first=pad_first)
        return accelerator.gather(tensor.contiguous())

    rollout = Rollout(
        prompt_ids=gather(r.prompt_ids, pad_token_id, pad_first=True),
        prompt_mask=gather(r.prompt_mask, 0, pad_first=True),
        completion_ids=gather(r.completion_ids, pad_token_id),
        completion_mask=gather(r.completion_mask),
        sampling_logprobs=gather(r.sampling_logprobs),
        truncated=gather(r.truncated.long()).bool(),  # gloo gathers no bool tensors
    )
    per_func = {k: gather(v) for k, v in groups.per_func.items()}
    return Groups(rollout, gather(groups.rewards), per_func, gather(groups.trainable.long()).bool())
