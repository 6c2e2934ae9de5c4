"""dseval: an evaluation harness with its own inference engine for DeepSeek-V3-class models.

Data flows one way: task -> requests -> model backend -> responses -> scorer -> results store
-> reports. The harness core lives here; the engine, tasks and kernels are the sub-packages
``dseval.engine``, ``dseval.tasks`` and ``dseval.kernels``.
"""

__version__ = "0.1.0"
