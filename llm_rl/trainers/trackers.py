"""The experiment trackers ``report_to`` names, through accelerate (``Accelerator(log_with=...)``).

``init_trackers`` starts every tracker with the run's config and the versions of llm_rl,
torch and transformers, so they sit beside the first step's metrics. accelerate's own
defaults apply, except that a wandb run folder goes under ``output_dir`` (unless
``WANDB_DIR`` says otherwise) like the rest of the run; wandb also honours
``WANDB_MODE=offline``, mlflow ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers


def run_config(args, **extra) -> dict:
    """The config's fields, ``extra`` and versions, as values every tracker takes (tensorboard's hparams: scalars only)."""
    import llm_rl  # here, not at module level: llm_rl/__init__ imports the trainers

    values = {**vars(args), **extra, "llm_rl_version": llm_rl.__version__, "torch_version": torch.__version__,
              "transformers_version": transformers.__version__}  # fmt: skip
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}


def init_trackers(accelerator, args, model=None) -> None:
    """Start the trackers of ``args.report_to`` (none: nothing), named after ``output_dir``; ``model``: the policy."""
    if not args.report_to:
        return
    name_or_path = getattr(getattr(model, "config", None), "name_or_path", None)
    config = run_config(args, model=name_or_path, num_processes=accelerator.num_processes)
    init_kwargs = {} if "WANDB_DIR" in os.environ else {"wandb": {"dir": str(args.output_dir)}}
    accelerator.init_trackers(Path(args.output_dir).name, config=config, init_kwargs=init_kwargs)
