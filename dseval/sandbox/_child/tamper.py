"""Tamper evidence: what a program did that an honest solution has no need for.

Three detectors, each reporting ``TAMPER <reason>`` lines on the control channel the moment
it sees something (an audit hook runs *before* the audited operation, so a program cannot
reach the completion proof and then suppress the report):

* an audit hook for introspection that can reach the checks or the proof: frames
  (``sys._getframe``, ``sys._current_frames``, a traceback's or generator's frame), tracing
  and profiling hooks, ``gc`` object walks, raw memory through ``ctypes`` or ``/proc/*/mem``;
  the standard library's own harmless uses (``namedtuple`` and ``TypeVar`` asking for their
  caller's module name) are recognised by code object and let through;
* a value check wrapped around every call result, comparison operand and ``assert`` in the
  test code: a value that is not made only of plain built-in types (an object whose
  ``__eq__`` always answers True, say) is reported. Types implemented in C (numpy scalars)
  and classes of modules loaded before the program ran (``random.Random``, ``re.Match``)
  count as plain, their attributes walked; a constructor call in the test code (MBPP builds
  the solution's ``Pair`` objects) is the test's own object and is not checked;
* a snapshot of the modules the tests use: a program that rebinds ``math.isclose`` and the
  like is reported, and the originals are put back before the tests run.

Why report instead of block: the official checkers let all of this pass, so blocking would
break parity; the harness counts flagged passes and ``strict`` scoring fails them.
"""

from __future__ import annotations

import ast
import collections
import decimal
import fractions
import sys
import typing
from collections.abc import Callable

Report = Callable[[str], None]
RECORDER = "__dseval_value__"
CALL_RECORDER = "__dseval_call__"
#: Modules the HumanEval/MBPP checks call into; imported before the program so they can be snapshotted.
GUARDED = ("math", "cmath", "random", "copy", "string", "re", "collections", "itertools", "functools",
           "operator", "heapq", "bisect")
_EVENTS = {"sys._getframe": "frame access", "sys._current_frames": "frame access", "sys.settrace": "tracing",
           "sys.setprofile": "profiling", "gc.get_objects": "gc walk", "gc.get_referrers": "gc walk",
           "gc.get_referents": "gc walk", "ctypes.string_at": "ctypes memory read",
           "ctypes.wstring_at": "ctypes memory read", "ctypes.cdata": "ctypes memory access",
           "ctypes.cdata/buffer": "ctypes memory access", "ctypes.dlsym": "ctypes foreign call",
           "ctypes.PyObj_FromPtr": "ctypes object access"}
_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
_SCALARS = frozenset({int, float, complex, bool, str, bytes, type(None), range})
_CONTAINERS = frozenset({list, tuple, set, frozenset, collections.deque})
_MAPPINGS = frozenset({dict, collections.Counter, collections.OrderedDict, collections.defaultdict})
_NUMBERS = frozenset({decimal.Decimal, fractions.Fraction})
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set on every class made by a class statement or type()
# Membership by id and flags read through type's own descriptor: a program's metaclass can
# override __eq__, __hash__ and __flags__ of its classes, never these.
_SCALAR_IDS = frozenset(map(id, _SCALARS | _NUMBERS))
_SEQUENCE_IDS = frozenset(map(id, _CONTAINERS))
_MAPPING_IDS = frozenset(map(id, _MAPPINGS))
_flags = type.__dict__["__flags__"].__get__


def audit_hook(report: Report) -> tuple[Callable[[str, tuple], None], Callable[[], None]]:
    """(hook, disarm); ``report`` is called once per kind of event. ``disarm`` is for the
    runner's own failure traceback, which walks frames after the verdict is already a failure."""
    seen: set[str] = set()
    benign = {collections.namedtuple.__code__, typing._caller.__code__}  # type: ignore[attr-defined]
    getframe, busy = sys._getframe, [False]

    def flag(why: str) -> None:
        if why not in seen:
            seen.add(why)
            report(why)

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        why = _EVENTS.get(event)
        if why == "frame access":
            busy[0] = True
            try:
                if getframe(1).f_code in benign:
                    return
            finally:
                busy[0] = False
        elif event == "object.__getattr__" and args[1] in _FRAME_ATTRS:
            why = "frame access"
        elif event == "open" and isinstance(args[0], str) and args[0].startswith("/proc/") \
                and args[0].rsplit("/", 1)[-1] in ("mem", "maps", "pagemap"):
            why = "process memory read"
        if why:
            flag(f"{why} ({event})")

    def disarm() -> None:
        busy[0] = True

    return hook, disarm


def plain_type_violation(value: object, trusted: frozenset[int] = frozenset(), _type: type = type,
                         _id: Callable = id, _set: type = set, _getattr: Callable = getattr,
                         _dict_items: Callable = dict.items) -> str:
    """'' when ``value`` is built only from plain built-in types, else the offending type.

    ``trusted``: ids of further types that count as plain (see ``trusted_types``). The
    built-ins it needs are bound as defaults when this module is imported, before any program
    runs, so a program thread that rebinds ``builtins.type`` cannot blind it.
    """
    stack, seen = [value], _set()
    while stack:
        item = stack.pop()
        kind = _type(item)
        key = _id(kind)
        if key in _SCALAR_IDS:
            continue
        if key in _SEQUENCE_IDS or key in _MAPPING_IDS:
            if _id(item) in seen:
                continue
            seen.add(_id(item))
            stack.extend(_dict_items(item) if key in _MAPPING_IDS else item)  # type: ignore[arg-type]
            continue
        if key in trusted or not _flags(kind) & _HEAPTYPE:  # made by trusted code, or in C
            attrs = _getattr(item, "__dict__", None)
            if _type(attrs) is dict and _id(item) not in seen:
                seen.add(_id(item))
                stack.extend(attrs.values())  # a UserList's data, say
            continue
        return f"{kind.__module__}.{kind.__qualname__}"
    return ""


def recorders(report: Report, trusted: frozenset[int]) -> dict[str, Callable[..., object]]:
    """The functions the instrumented tests call: on each compared value (returned unchanged),
    and around each call (a constructor's result is the test's own object, not checked)."""
    def record(value: object) -> object:
        bad = plain_type_violation(value, trusted)
        if bad:
            report(f"compared value of type {bad[:80]}")
        return value

    def call(func: Callable[..., object], /, *args: object, **kwargs: object) -> object:
        result = func(*args, **kwargs)
        return result if isinstance(func, type) else record(result)

    return {RECORDER: record, CALL_RECORDER: call}


def trusted_types() -> tuple[list[type], frozenset[int]]:
    """Classes of every module loaded before the program runs, and their ids: instances of
    these were made by code the program did not write (``random.Random``, ``re.Match``), so
    they count as plain (their attributes are still checked). The list keeps them alive, so
    no id can be reused by a class the program makes."""
    found = [value for module in list(sys.modules.values())
             for value in list(getattr(module, "__dict__", {}).values()) if isinstance(value, type)]
    return found, frozenset(map(id, found))


class _Instrument(ast.NodeTransformer):
    """Every call's result, comparison operand, ``not`` operand, and/or value and assert
    condition goes through the recorder: a forged object is caught where it first appears,
    before ``abs(x - y)`` or ``not x`` turn it into a plain value."""

    def _wrap(self, node: ast.expr) -> ast.expr:
        return ast.Call(func=ast.Name(id=RECORDER, ctx=ast.Load()), args=[node], keywords=[])

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "super":
            return node  # zero-argument super() needs its own frame
        return ast.Call(func=ast.Name(id=CALL_RECORDER, ctx=ast.Load()), args=[node.func, *node.args],
                        keywords=node.keywords)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            node.operand = self._wrap(node.operand)
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        node.values = [self._wrap(v) for v in node.values]
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        node.left = self._wrap(node.left)
        node.comparators = [self._wrap(c) for c in node.comparators]
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        self.generic_visit(node)
        node.test = self._wrap(node.test)
        return node


def compile_tests(source: str, filename: str) -> object:
    """The test code with every call result, compared value and assert condition passed
    through the recorders."""
    tree = _Instrument().visit(ast.parse(source, filename))
    return compile(ast.fix_missing_locations(tree), filename, "exec")


def threads_running(report: Report) -> None:
    """Report program threads still running while the checks run (they could patch things)."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        report("program thread running during the checks")


def snapshot_modules() -> dict[str, tuple[object, dict[str, object]]]:
    return {name: (sys.modules[name], dict(sys.modules[name].__dict__)) for name in GUARDED if name in sys.modules}


def restore_modules(snap: dict[str, tuple[object, dict[str, object]]], report: Report) -> None:
    """Put back any replaced guarded module or rebound attribute of one, reporting the first few."""
    for name, (module, before) in snap.items():
        if sys.modules.get(name) is not module:
            report(f"replaced module {name}")
            sys.modules[name] = module  # type: ignore[assignment]
        attrs = module.__dict__
        changed = [k for k, v in before.items() if k not in attrs or attrs[k] is not v]
        for key in changed[:3]:
            report(f"patched {name}.{key}")
        if changed:
            attrs.update(before)
