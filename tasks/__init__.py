"""Built-in task plugins. Importing this package registers them; third-party packages add
theirs through the ``dseval.tasks`` entry-point group."""

from dseval.tasks import mmlu  # noqa: F401
