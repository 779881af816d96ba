"""Serve a reward function over HTTP for ``reward_models.RemoteReward`` (FastAPI + uvicorn).

    pip install 'llm-rl[serve]'
    python recipes/reward_server.py --port 8000                                   # math_correctness
    python recipes/reward_server.py --port 8000 --reward_model outputs/reward_model/final
    python recipes/grpo_math.py ...   # with reward_funcs=[RemoteReward("http://127.0.0.1:8000/score")]

Protocol (see reward_models/remote.py):

    POST /score   {"prompts": [...], "completions": [...], "columns": {"answer": [...]}}
          200     {"rewards": [1.0, 0.0, null, ...]}     one float or null per completion
          400     the batch is inconsistent or the reward function rejected it (not retried)
          500     the reward function failed (retried by the client)
    GET  /health  {"status": "ok", "reward": "<name>"}

It listens on 127.0.0.1 unless told otherwise: put it behind your own authentication before
opening it to a network. Completions are model output: the rule rewards parse them as text
and never execute them.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from reward_models import LearnedReward, RewardError, reward_name
from reward_models.math import math_correctness

try:
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
except ImportError as error:  # pragma: no cover - the message is the point
    raise SystemExit("recipes/reward_server.py needs FastAPI and uvicorn: pip install 'llm-rl[serve]'") from error


class ScoreRequest(BaseModel):
    prompts: list[Any]
    completions: list[Any]
    columns: dict[str, list[Any]] = {}


def make_app(reward_fn) -> FastAPI:
    """A FastAPI app serving ``reward_fn(prompts, completions, **columns) -> list[float | None]`` at ``/score``."""
    name = reward_name(reward_fn)
    app = FastAPI(title=f"llm_rl reward server: {name}")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "reward": name}

    @app.post("/score")
    def score(request: ScoreRequest) -> dict:  # a plain def: FastAPI runs it on its thread pool
        n = len(request.completions)
        bad = {k: len(v) for k, v in request.columns.items() if len(v) != n}
        if len(request.prompts) != n or bad:
            raise HTTPException(400, f"need one prompt and one entry of every column per completion: got {n} completions, "
                                     f"{len(request.prompts)} prompts, column lengths {bad}")
        try:
            rewards = list(reward_fn(prompts=request.prompts, completions=request.completions, **request.columns))
        except (TypeError, ValueError, KeyError, RewardError) as error:  # the request does not fit the reward
            raise HTTPException(400, f"{name} rejected the batch: {type(error).__name__}: {error}") from error
        if len(rewards) != n or any(r is not None and not math.isfinite(float(r)) for r in rewards):
            raise HTTPException(500, f"{name} returned {len(rewards)} rewards (or a non-finite one) for {n} completions")
        return {"rewards": [None if r is None else float(r) for r in rewards]}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--reward_model", default=None, help="serve this learned reward model folder instead of math_correctness")
    args = parser.parse_args(argv)
    reward_fn = LearnedReward(args.reward_model) if args.reward_model else math_correctness
    uvicorn.run(make_app(reward_fn), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
