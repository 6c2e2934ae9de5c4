"""The built-in model backends, by ``--model`` spec prefix.

The ``dseval.backends`` entry points in pyproject.toml declare the same names (a test keeps the
two equal); this list lets a source checkout find them without being reinstalled. Targets are
``module:Class`` strings, imported only when a spec names them, so ``replay:`` runs and
``dseval tasks`` never pay torch's start-up cost.
"""

BACKENDS = {
    "engine": "dseval.backends.engine:EngineBackend",
    "openai": "dseval.backends.openai_api:OpenAIBackend",
    "openai-chat": "dseval.backends.openai_chat:OpenAIChatBackend",
    "replay": "dseval.backends.replay:ReplayBackend",
}
