"""Which prompts each process trains on at each step, and the seed each prompt samples with.

The stream walks seeded epoch permutations of the dataset; step ``s`` takes the next
``global_prompts`` indices and process ``p`` keeps the ``p``-th contiguous slice. So the
global batch is the same whatever the number of processes, a group of completions is
always generated whole on one process, and every prompt's sampling seed depends on
``(seed, step, position in the global batch)`` only. The cursor is the resume state.

Dynamic sampling draws a step's prompts in rounds: each further call of ``next_step`` for
the same step takes the next ``global_prompts`` indices (the cursor moves by what was
drawn, so a resumed run continues exactly) with seeds of their own round.
"""

from __future__ import annotations

import torch


class PromptStream:
    def __init__(self, dataset_size: int, global_prompts: int, num_processes: int, process_index: int, seed: int):
        if dataset_size == 0:
            raise ValueError("the prompt dataset is empty: give a dataset with at least one prompt")
        if global_prompts % num_processes:
            raise ValueError(
                f"{global_prompts} prompts per step cannot be split evenly over {num_processes} processes"
            )
        self.dataset_size, self.global_prompts = dataset_size, global_prompts
        self.num_processes, self.process_index, self.seed = num_processes, process_index, seed
        self.cursor = 0  # prompts consumed so far, over all processes
        self._step, self._round = -1, 0  # the step drawn last, and how many rounds it has drawn before
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.dataset_size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.dataset_size, generator=generator)
        return int(self._order[offset])

    def next_step(self, step: int) -> tuple[list[int], list[int]]:
        """Dataset indices and sampling seeds of this process's prompts for ``step`` (its next round, if called again)."""
        self._round = self._round + 1 if step == self._step else 0
        self._step = step
        per_process = self.global_prompts // self.num_processes
        first = self.cursor + self.process_index * per_process
        positions = range(first, first + per_process)
        self.cursor += self.global_prompts
        indices = [self._index(p) for p in positions]
        slot0 = self.process_index * per_process
        # round 0 keeps the seeds runs have always had; a later round's differ by multiples of 2**32
        offset = self.seed * 1_000_003 + step * 10_007 + self._round * 2**32 + slot0
        seeds = [(offset + i) % 2**63 for i in range(per_process)]
        return indices, seeds

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])
