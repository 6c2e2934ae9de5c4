"""``openai-chat:URL[#MODEL]``: an OpenAI-compatible chat-completions server.

For chat tasks and judges against servers that only expose ``/v1/chat/completions`` (or whose
chat template should be theirs): each :class:`~dseval.requests.ChatRequest` is sent as its list
of messages, with the request's sampling settings. Without ``#MODEL`` the server's first model
in ``/v1/models`` is used. Loglikelihood and plain-prompt requests need ``openai:`` instead.
Connection handling (``--concurrency``, ``--timeout``, ``--max-retries``, stopping on a fatal
error or Ctrl-C, the API key from ``$OPENAI_API_KEY``) is the completions backend's.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Sequence

from dseval.backends.base import BackendOptions, OnResult
from dseval.backends.openai_api import OpenAIBackend
from dseval.errors import UserError
from dseval.requests import GenerateRequest, GenerateResult, LoglikelihoodRequest, LoglikelihoodResult


class OpenAIChatBackend(OpenAIBackend):
    spec_help = "an OpenAI-compatible chat endpoint (chat tasks, judges): openai-chat:URL[#MODEL]"

    def __init__(self, base_url: str, model: str, concurrency: int, api_key: str | None = None,
                 timeout: float = 600.0, max_retries: int = 5) -> None:
        super().__init__(base_url, model, concurrency, api_key, timeout, max_retries)
        self.description = f"OpenAI-compatible chat endpoint {base_url} ({model})"

    @classmethod
    def from_spec(cls, arg: str, options: BackendOptions) -> OpenAIChatBackend:
        url, _, model = arg.partition("#")
        if not url.startswith(("http://", "https://")):
            raise UserError(f"openai-chat spec needs URL[#MODEL], e.g. openai-chat:http://127.0.0.1:8000/v1; got {arg!r}")
        key = os.environ.get("OPENAI_API_KEY")
        return cls(url, model or first_model(url, key), options.in_flight(), key,
                   options.timeout or 600.0, options.max_retries)

    def generate(self, requests: Sequence[GenerateRequest], on_result: OnResult[GenerateResult] | None = None) -> list[GenerateResult]:
        raise UserError("openai-chat: answers chat requests only; run the task with --chat, or use openai:URL#MODEL")

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], on_result: OnResult[LoglikelihoodResult] | None = None
    ) -> list[LoglikelihoodResult]:
        raise UserError("openai-chat: a chat endpoint gives no prompt log-probabilities; use openai:URL#MODEL")


def first_model(base_url: str, api_key: str | None) -> str:
    """The first model a server lists, for specs that name none."""
    request = urllib.request.Request(base_url.rstrip("/") + "/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["data"][0]["id"]
    except (OSError, ValueError, KeyError, IndexError) as err:
        raise UserError(f"openai-chat: no model named in the spec and {base_url}/models did not list one ({err}); "
                        "add #MODEL") from None
