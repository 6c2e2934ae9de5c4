"""Scoring helpers shared by the generation tasks.

Each benchmark file in :mod:`dseval.tasks` keeps only what is specific to it (prompt, data,
per-sample wiring). Everything two tasks could otherwise copy from each other lives here once:
math answer extraction and equivalence (:mod:`.math_answers`), the DROP EM/F1 definition
(:mod:`.drop_f1`), code extraction, program execution and pass@k (:mod:`.code_exec`), and the
per-sample request fan-out for ``--samples N`` (:mod:`.sampling`).
"""
