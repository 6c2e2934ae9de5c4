"""dseval: an evaluation harness with its own inference engine for DeepSeek-V3-class models.

Data flows one way: task -> requests -> model backend -> responses -> scorer -> results store
-> reports. The harness core lives here; the engine, tasks and kernels are the sub-packages
``dseval.engine``, ``dseval.tasks`` and ``dseval.kernels``.

In the wheel those sub-packages sit inside this folder. In a source checkout they are the
top-level folders ``engine/``, ``tasks/`` and ``kernels/`` beside it, which have no
``__init__.py`` so that none of them can shadow an installed package of the same name (PyPI has
a ``kernels``) when the checkout's root is on ``sys.path``. Searching the checkout's root for
this package's sub-modules maps them the same way the wheel does, whether the checkout is
installed in editable mode or only on ``sys.path`` (``python -m pytest``, ``python -m dseval``).
"""

from pathlib import Path

__version__ = "0.1.0"

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "engine").is_dir():
    __path__.append(str(_checkout))  # noqa: F821 (every package has __path__)
