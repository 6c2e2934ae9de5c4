"""Final answers of competition-math solutions: extraction, normalization, equivalence.

Used by MATH and MATH-500 (and any later math task). Three steps:

1. **Extract** the model's final answer: the content of the last ``\\boxed{...}`` (braces
   nested to any depth, ``\\fbox`` too) or the Minerva sentence "Final Answer: The final answer
   is X. I hope it is correct.", whichever comes last in the text, so a chat answer ending in
   ``\\boxed{}`` and a Minerva-style answer ending in the sentence are both read correctly.
2. **Normalize** with the rules of Minerva (Lewkowycz et al., 2022, appendix D): keep the right
   side of an equation, drop units and filler words, unwrap ``\\text``/``\\boxed``/``$``, expand
   ``\\fracab`` shorthand, drop thousands separators.
3. **Compare** with ``math-verify`` (gold first: its ``verify`` is not symmetric), falling back to
   equality of the normalized strings, which also rescues answers it cannot parse (words,
   intervals written oddly, multiple-choice letters).

``math-verify`` bounds parsing and verification with ``SIGALRM``, which only works in the main
thread. :func:`answers_match` therefore runs in the caller when that is the main thread and
otherwise ships the whole batch to one worker process, so a runner that scores on a backend
thread gets the same verdicts and keeps the timeouts.
"""

from __future__ import annotations

import multiprocessing
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

#: Seconds math-verify may spend parsing one answer and comparing one pair.
VERIFY_TIMEOUT_S = 5

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_FINAL_ANSWER = re.compile(r"final answer is[:\s]*(.*)", re.IGNORECASE)
_HOPE = re.compile(r"\.?\s*I hope it is correct\.?", re.IGNORECASE)


def last_boxed(text: str) -> tuple[int, str] | None:
    """Position and content of the last ``\\boxed{...}``/``\\fbox{...}`` (or ``\\boxed 5``).

    Braces are matched by depth, so ``\\boxed{\\frac{1}{2}}`` yields ``\\frac{1}{2}``. An
    unclosed box (output cut by the token limit) yields None rather than half an answer.
    """
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    after = start + len(command)
    i = after
    while text.startswith(" ", i):
        i += 1
    if not text.startswith("{", i):
        if i == after:  # "\boxeds" or a bare "\boxed" at the end: no argument
            return None
        # "\boxed 5": the argument runs to the next "$" or end of line.
        return start, re.split(r"[$\n]", text[i:], maxsplit=1)[0].strip()
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return start, text[i + 1 : j]
    return None


def final_answer_sentence(text: str) -> tuple[int, str] | None:
    """Position and answer of the last "final answer is X" sentence (Minerva's format).

    The answer runs to "I hope it is correct" or the end of its line; a final period is
    dropped. More lenient than the reference regex, which needs the "I hope" clause.
    """
    matches = list(_FINAL_ANSWER.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    answer = _HOPE.split(last.group(1), maxsplit=1)[0].strip().removesuffix(".").strip()
    if re.fullmatch(r"\$[^$]*\$", answer):  # "$[2,5)$" -> "[2,5)"
        answer = answer[1:-1].strip()
    return last.start(), answer


def extract_answer(text: str) -> str | None:
    """The final answer of a solution (raw, not normalized), or None when it states none."""
    found = [f for f in (last_boxed(text), final_answer_sentence(text)) if f is not None and f[1]]
    if not found:
        return None
    _, answer = max(found, key=lambda f: f[0])
    inner = last_boxed(answer)  # "The final answer is $\boxed{5}$"
    return inner[1] if inner else answer


# Minerva appendix D, in order: replacements, then deletions (units and filler words).
SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
)
REMOVED_EXPRESSIONS: tuple[str, ...] = (
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
    "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
    "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}",
    "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots",
)
_UNWRAP = (
    (re.compile(r"(.*?)\$(.*?)\$(.*)"), r"$\2$"),
    (re.compile(r"\\text\{(.*?)\}"), r"\1"),
    (re.compile(r"\\textbf\{(.*?)\}"), r"\1"),
    (re.compile(r"\\overline\{(.*?)\}"), r"\1"),
    (re.compile(r"\\boxed\{(.*)\}"), r"\1"),
)


def normalize_answer(answer: str) -> str:
    """Minerva's normalization of a final answer, for string comparison."""
    answer = answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expression in REMOVED_EXPRESSIONS:
        answer = answer.replace(expression, "")
    for pattern, replacement in _UNWRAP:
        answer = pattern.sub(replacement, answer)
    answer = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", answer)  # \frac12 -> \frac{1}{2}
    answer = re.sub(r"(sqrt)([^{])", r"sqrt{\2}", answer)  # \sqrt2 -> \sqrt{2}
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


def _verify_pair(gold: str, predicted: str) -> bool:
    """math-verify's verdict on two raw answers; False when either does not parse."""
    from math_verify import parse, verify  # deferred: importing sympy takes a second

    gold_parsed = parse(f"${gold}$", parsing_timeout=VERIFY_TIMEOUT_S)
    predicted_parsed = parse(f"${predicted}$", parsing_timeout=VERIFY_TIMEOUT_S)
    if not gold_parsed or not predicted_parsed:
        return False
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=VERIFY_TIMEOUT_S))


def _match_batch(pairs: Sequence[tuple[str, str | None]]) -> list[bool]:
    out = []
    for gold, predicted in pairs:
        if predicted is None or not predicted.strip():
            out.append(False)
            continue
        normalized = normalize_answer(predicted)
        out.append((normalized != "" and normalized == normalize_answer(gold)) or _verify_pair(gold, predicted))
    return out


_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _worker_pool() -> ProcessPoolExecutor:
    """One spawned worker, created on first use off the main thread (spawn: forking a
    threaded process can deadlock)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _POOL


def answers_match(pairs: Sequence[tuple[str, str | None]]) -> list[bool]:
    """For each (gold, predicted) pair, whether the predicted answer equals the gold one.

    A missing prediction (None) never matches. Runs in this process on the main thread,
    otherwise in a worker process (see the module docstring for why).
    """
    if not pairs:
        return []
    if threading.current_thread() is threading.main_thread():
        return _match_batch(pairs)
    return _worker_pool().submit(_match_batch, list(pairs)).result()
