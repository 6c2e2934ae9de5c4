"""Built-in task plugins. Importing this package registers them; third-party packages add
theirs through the ``dseval.tasks`` entry-point group."""

from dseval.tasks import mmlu  # noqa: F401
from dseval.tasks import math500  # noqa: F401
from dseval.tasks import humaneval  # noqa: F401
from dseval.tasks import mbpp  # noqa: F401
from dseval.tasks import drop  # noqa: F401
from dseval.tasks import niah  # noqa: F401
