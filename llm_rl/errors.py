"""Errors a user fixes (bad input, settings, paths), told apart from bugs.

Every such error derives from ``UserError``, so the recipes (``llm_rl.recipe_utils.run``)
end it with its one-paragraph message and exit status 2, as argparse does, and leave the
traceback for anything else. Each class also keeps the built-in type it had before
(``ValueError``, ``FileNotFoundError``, ...), so existing ``except`` clauses still catch it.
The library's other user errors live beside the code that raises them and derive from
``UserError`` too: ``ConfigError`` (trainers.config), ``PromptDataError`` (data.prompts).
``reward_models`` cannot import llm_rl (llm_rl's own imports load it first), so its
``RewardError`` is a user error by being listed in ``USER_ERRORS``, the one tuple to catch.

This module imports nothing from llm_rl, so every llm_rl module can import it.
"""

from __future__ import annotations

from reward_models.combine import RewardError


class UserError(Exception):
    """An error in what the user passed; the message says what is wrong and what to change."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """A local model folder (policy, reference, reward model) that does not exist or is not a model."""


class ModelLoadError(UserError, OSError):
    """A model or tokenizer that could not be loaded: not in the local cache while offline, not a model, ..."""


class OutputDirError(UserError, FileExistsError):
    """An ``output_dir`` that already holds another run."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """``resume_from_checkpoint`` names no complete checkpoint."""


# What llm_rl.cli.run ends with a one-paragraph message; a new kind of user error derives from UserError.
USER_ERRORS: tuple[type[Exception], ...] = (UserError, RewardError)
