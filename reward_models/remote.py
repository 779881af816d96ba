"""A reward served over HTTP: a verifier or a reward model on another process or machine.

The protocol is one POST per batch, in the spirit of OpenRLHF's ``--remote_rm_url``::

    POST <url>   {"prompts": [...], "completions": [...], "columns": {"answer": [...], ...}}
    200          {"rewards": [1.0, 0.0, null, ...]}      (or a bare JSON list)

one float, or ``null`` for "does not apply", per completion. Prompts and completions are
sent as they are (strings, or chat message lists). ``recipes/reward_server.py`` serves any
reward function (``math_correctness``, a learned reward model) this way.

Failures: connection errors, timeouts, HTTP 429 and 5xx are retried ``retries`` times with
exponential backoff; anything else (a 4xx, a body that is not one reward per completion)
fails at once. Either way a ``RewardError`` says what happened. Every attempt has a connect
and a read timeout, so a call never hangs: it takes at most about
``(retries + 1) * (connect + read timeout) + the backoff sleeps``. The read timeout bounds
each wait for data, not a response trickled byte by byte; the trainer's ``reward_timeout``
bounds the whole call.

Needs ``requests`` (``pip install 'llm-rl[remote]'``), imported when a ``RemoteReward`` is made.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence

from reward_models.combine import RewardError

RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})


def _json_value(value):
    """``json.dumps``'s fallback: numpy/torch scalars and arrays as Python numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


class RemoteReward:
    """``RemoteReward(url, timeout=30.0, retries=3)``: a reward function that POSTs each batch to ``url``.

    Args:
        url: the scoring endpoint, e.g. ``http://127.0.0.1:8000/score``.
        timeout: seconds to wait for the server's response (read timeout); the connect
            timeout is ``min(timeout, connect_timeout)``.
        retries: attempts after the first on connection errors, timeouts, 429 and 5xx.
        backoff: seconds before the first retry, doubled each time (at most ``max_backoff``).
        headers: extra HTTP headers (e.g. ``{"Authorization": "Bearer ..."}``).
        name: the name the reward is logged under (``reward/<name>``).
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        connect_timeout: float = 5.0,
        headers: dict | None = None,
        name: str = "remote_reward",
    ):
        try:
            import requests
        except ImportError as error:  # the client is optional: llm_rl itself never needs the network
            raise ImportError("RemoteReward needs requests: pip install 'llm-rl[remote]' (or pip install requests)") from error
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"RemoteReward url must start with http:// or https://, got {url!r}")
        if not (timeout > 0 and connect_timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout and connect_timeout must be finite numbers of seconds > 0, got {timeout}, {connect_timeout}")
        if not (isinstance(retries, int) and retries >= 0):
            raise ValueError(f"retries must be an integer >= 0 (attempts after the first), got {retries!r}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError(f"backoff and max_backoff must be >= 0 seconds, got {backoff}, {max_backoff}")
        self._requests = requests
        self.url, self.timeout, self.retries = url, float(timeout), retries
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.connect_timeout = min(float(connect_timeout), self.timeout)
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.__name__ = name
        self._local = threading.local()  # one keep-alive session per thread (reward_num_workers)

    def __repr__(self) -> str:
        return f"RemoteReward({self.url!r}, timeout={self.timeout}, retries={self.retries})"

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._requests.Session()
        return session

    def _body(self, prompts: Sequence, completions: Sequence, columns: dict) -> bytes:
        payload = {"prompts": list(prompts), "completions": list(completions), "columns": {k: list(v) for k, v in columns.items()}}
        try:
            return json.dumps(payload, default=_json_value, allow_nan=False).encode()
        except (TypeError, ValueError) as error:
            raise RewardError(
                f"RemoteReward could not send the batch as JSON ({error}); prompts, completions and dataset columns "
                f"must be JSON values (strings, numbers, lists, dicts, null): convert or drop the offending column."
            ) from error

    def _post(self, body: bytes):
        """The server's response, after retries; a ``RewardError`` once they are used up."""
        requests = self._requests
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            try:
                response = self._session().post(
                    self.url, data=body, headers=self.headers, timeout=(self.connect_timeout, self.timeout)
                )
            except requests.Timeout as error:
                problem = f"timed out ({type(error).__name__}: connect {self.connect_timeout} s, read {self.timeout} s)"
                continue
            except requests.ConnectionError as error:
                problem = f"could not connect ({type(error).__name__}: {error})"
                continue
            if response.status_code in RETRIED_STATUS:
                problem = f"answered HTTP {response.status_code}: {response.text[:200]!r}"
                continue
            if response.status_code != 200:
                raise RewardError(
                    f"Reward server {self.url} answered HTTP {response.status_code}: {response.text[:300]!r}. A 4xx is not "
                    f"retried: check the URL and that the server accepts {{prompts, completions, columns}} as JSON."
                )
            return response
        raise RewardError(
            f"Reward server {self.url} gave no rewards after {self.retries + 1} attempts ({self.retries} retries with "
            f"backoff): the last one {problem}. Check that the server is running and reachable (curl {self.url}), or "
            f"raise retries/timeout; to continue a run that stopped here, restart the server and pass "
            f"--resume_from_checkpoint latest (with --save_steps set)."
        )

    def _rewards(self, response, count: int) -> list[float | None]:
        try:
            data = response.json()
        except ValueError as error:
            raise RewardError(f"Reward server {self.url} answered with a body that is not JSON: {response.text[:200]!r}") from error
        rewards = data.get("rewards") if isinstance(data, dict) else data
        if not isinstance(rewards, list) or len(rewards) != count:
            got = f"{len(rewards)} rewards" if isinstance(rewards, list) else repr(data)[:200]
            raise RewardError(
                f"Reward server {self.url} answered {got} for {count} completions; it must answer "
                f'{{"rewards": [one float or null per completion]}}.'
            )
        for i, value in enumerate(rewards):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise RewardError(f"Reward server {self.url} answered {value!r} for sample {i}; rewards must be numbers or null.")
        return [None if r is None else float(r) for r in rewards]

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float | None]:
        columns = {k: v for k, v in kwargs.items() if k not in ("completion_ids", "trainer_state")}
        if not completions:
            return []
        return self._rewards(self._post(self._body(prompts, completions, columns)), len(completions))
