"""The link between the checker (holds the tests, decides the verdict) and the program's process.

Why two processes: code that runs in a process can rewrite anything in it (frames, builtins,
memory through ctypes), so no verdict computed *beside* the program can be trusted, however
well it is hidden. Here the program runs in its own process, forked before the checker has
read a byte of the tests, and the checker reaches the program's functions only through this
link: every call, attribute access or iteration the tests make on a program object is a
request over a pipe, and every answer comes back as *data*. Data is JSON that the checker
decodes into exact built-in types (``int``, ``str``, ``tuple``, ``dict``, ``Fraction``...):
an object whose ``__eq__`` always answers True cannot cross, only its value can, and the
comparisons then run the checker's own code. What the program can still do is answer each
question; answering every question right is computing the answers.

Values that are not data (a program's class instance, a generator, a numpy array) stay in
the program's process and cross as a handle: the checker can call them, read attributes,
iterate, take ``len``/``bool``/``str`` (each answer again data), pass them back as arguments,
and compare them only by identity. Numeric scalars of C extensions (numpy) and subclasses of
the built-in types are converted to their plain value on the program's side.

Wire format: a 4-byte little-endian length, then UTF-8 JSON. A JSON list is a ``list``, every
JSON object is a tagged value ``{"$": tag, "v": payload}``, so no dict of the program can pose
as a tag.
"""

from __future__ import annotations

import builtins
import collections
import decimal
import fractions
import importlib
import json
import operator
import os
import sys
from collections.abc import Callable

_BIG = 1 << 63  # ints beyond travel as hex: decimal text of huge ints is capped (int_max_str_digits)
_HEADER = 4
Encoder = Callable[[object], object]


class ProgramGone(RuntimeError):
    """The program's process ended (or broke the protocol) while the checks needed it."""


class ProgramError(Exception):
    """An exception raised in the program's process whose type is not a built-in one."""


def encode(value: object, other: Encoder, path: set[int] | None = None) -> object:
    """``value`` as JSON-able data; ``other`` handles anything that is not plain data.

    ``path``: the containers being encoded around ``value``. A container met again inside
    itself raises ValueError at once: without it a cyclic global (``scope = globals()``) is
    walked once per level of the recursion limit, which LeetCode preludes raise to 50,000.
    """
    kind = type(value)
    if kind is str or kind is bool or kind is float or value is None:
        return value
    if kind is int:
        return value if -_BIG < value < _BIG else {"$": "i", "v": hex(value)}  # type: ignore[operator]
    if kind is list or kind in _SEQUENCE_TAGS or kind in _MAPPING_TAGS:
        return _container(value, kind, other, set() if path is None else path)
    if kind is bytes or kind is bytearray:
        return {"$": "b" if kind is bytes else "ba", "v": value.hex()}  # type: ignore[attr-defined]
    if kind is complex:
        return {"$": "c", "v": [value.real, value.imag]}  # type: ignore[attr-defined]
    if kind is range:
        return {"$": "r", "v": [value.start, value.stop, value.step]}  # type: ignore[attr-defined]
    if kind is fractions.Fraction:
        return {"$": "q", "v": [encode(value.numerator, other), encode(value.denominator, other)]}  # type: ignore[attr-defined]
    if kind is decimal.Decimal:
        return {"$": "dec", "v": str(value)}
    if kind is type or kind is _BUILTIN_FUNCTION:
        name = value.__name__  # type: ignore[attr-defined]
        if getattr(builtins, name, None) is value:
            return {"$": "bi", "v": name}  # int, len, ValueError...: the same object on both sides
    return other(value)


def _container(value: object, kind: type, other: Encoder, path: set[int]) -> object:
    key = id(value)
    if key in path:
        raise ValueError("a value that contains itself is not data")
    path.add(key)
    try:
        if kind is list:
            return [encode(v, other, path) for v in value]  # type: ignore[attr-defined]
        tag = _SEQUENCE_TAGS.get(kind)
        if tag is not None:
            return {"$": tag, "v": [encode(v, other, path) for v in value]}  # type: ignore[attr-defined]
        return {"$": _MAPPING_TAGS[kind],
                "v": [[encode(k, other, path), encode(v, other, path)] for k, v in value.items()]}  # type: ignore[attr-defined]
    finally:
        path.discard(key)


_BUILTIN_FUNCTION = type(len)
_SEQUENCE_TAGS = {tuple: "t", set: "s", frozenset: "f", collections.deque: "dq"}
_MAPPING_TAGS = {dict: "d", collections.Counter: "ctr", collections.OrderedDict: "od",
                 collections.defaultdict: "dd"}
_BUILD = {
    "i": lambda v: int(v, 16), "t": tuple, "s": set, "f": frozenset, "dq": collections.deque,
    "d": dict, "ctr": lambda v: collections.Counter(dict(v)), "od": collections.OrderedDict,
    "dd": lambda v: collections.defaultdict(None, v),
    "b": bytes.fromhex, "ba": bytearray.fromhex, "c": lambda v: complex(*v), "r": lambda v: range(*v),
    "q": lambda v: fractions.Fraction(*v), "dec": decimal.Decimal, "bi": lambda v: getattr(builtins, v),
}


def decoder(handle: Callable[[dict], object]) -> Callable[[bytes], object]:
    """A ``loads`` for the wire: tagged objects become their types, handles go to ``handle``."""
    def hook(obj: dict) -> object:
        tag = obj.get("$")
        build = _BUILD.get(tag)  # type: ignore[arg-type]
        if build is not None:
            return build(obj["v"])
        if tag in ("h", "m"):
            return handle(obj)
        raise ValueError(f"unknown tag {str(tag)[:20]!r} on the program link")

    decode = json.JSONDecoder(object_hook=hook).decode
    return lambda raw: decode(raw.decode("utf-8"))


def send(fd: int, message: object, other: Encoder) -> None:
    write_encoded(fd, encode(message, other))


def write_encoded(fd: int, encoded: object) -> None:
    data = json.dumps(encoded, separators=(",", ":")).encode()
    view = memoryview(len(data).to_bytes(_HEADER, "little") + data)
    while view:
        view = view[os.write(fd, view):]


def read_exact(fd: int, n: int, cut: str = "the program's process ended during the checks") -> bytes:
    """``n`` bytes from ``fd``; ProgramGone(``cut``) when it ends before."""
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ProgramGone(cut)
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int, loads: Callable[[bytes], object]) -> object:
    return loads(read_exact(fd, int.from_bytes(read_exact(fd, _HEADER), "little")))


# ---------------------------------------------------------------- the program's side

_OPS: dict[str, Callable[..., object]] = {
    "call": lambda target, *args, **kwargs: target(*args, **kwargs),
    "getattr": getattr, "setattr": setattr, "list": list, "len": len, "bool": bool, "str": str, "repr": repr,
    "float": float, "int": int, "index": operator.index, "getitem": operator.getitem,
    "contains": lambda target, item: item in target,
}


def _as_plain(value: object) -> object:
    """The plain value behind a numpy scalar or a subclass of a built-in type, else ``value``."""
    kind = type(value)
    if getattr(kind, "__module__", "") == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()  # type: ignore[attr-defined]
    for base in (bool, int, float, complex, str, bytes):
        if isinstance(value, base):
            return base(value)  # the program's own claim of its value
    for base in (tuple, list, frozenset, set):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, dict):
        return dict(value.items())
    return value


def serve(names: dict, req_fd: int, resp_fd: int) -> None:
    """Answer the checker's requests about ``names`` (the program's globals) until it hangs up.

    Runs in the program's process: nothing here is trusted, it only shapes the answers.
    """
    objects: list[object] = []

    def other(value: object) -> object:
        plain = _as_plain(value)
        if plain is not value:
            return encode(plain, other)
        if type(value).__name__ == "module" and isinstance(getattr(value, "__name__", None), str):
            return {"$": "m", "v": value.__name__}  # type: ignore[attr-defined]
        return handle(value)

    def handle(value: object) -> object:
        objects.append(value)
        return {"$": "h", "v": len(objects) - 1, "n": type(value).__qualname__[:80]}

    def name(value: object) -> object:
        """A global as data when it encodes (a cyclic or too deep one stays a handle)."""
        try:
            return encode(value, other)
        except (RecursionError, ValueError, TypeError):
            return handle(value)

    loads = decoder(lambda obj: objects[obj["v"]])
    write_encoded(resp_fd, {"$": "d", "v": [[k, name(v)] for k, v in names.items() if k != "__builtins__"]})
    while True:
        try:
            op, target, args, kwargs = receive(req_fd, loads)  # type: ignore[misc]
        except ProgramGone:
            return  # the checks are over
        try:
            answer = {"ok": _OPS[op](target, *args, **kwargs)}
            send(resp_fd, answer, other)
        except BaseException as exc:  # noqa: BLE001 - every failure is an answer the checker judges
            kind = type(exc)
            send(resp_fd, {"exc": [kind.__module__, kind.__qualname__, str(exc)[:1000]]}, repr)


# ---------------------------------------------------------------- the checker's side

class Link:
    """The checker's end: requests go out as data, answers come back as data or handles."""

    def __init__(self, req_fd: int, resp_fd: int, note: Callable[[str], None]) -> None:
        self._req, self._resp, self.note = req_fd, resp_fd, note
        self._loads = decoder(self._handle)
        #: A question is out and its answer not read: true after checks that stopped waiting
        #: (a time limit raised in the middle of a request); the link is then out of step.
        self.busy = False

    def _handle(self, obj: dict) -> object:
        if obj["$"] == "m":
            return LazyModule(str(obj["v"]))
        return Remote(self, int(obj["v"]), str(obj.get("n", "object")))

    def _other(self, value: object) -> object:
        if type(value) is Remote:
            return {"$": "h", "v": object.__getattribute__(value, "_ref")}
        if type(value) is LazyModule:
            return {"$": "m", "v": object.__getattribute__(value, "_name")}
        raise TypeError(f"a {type(value).__name__} of the tests cannot be passed to the program")

    def names(self) -> dict:
        """The program's globals, as data and handles (sent once, when the program has run)."""
        names = receive(self._resp, self._loads)
        if type(names) is not dict:
            raise ProgramGone("the program's process did not send its names")
        return names

    def request(self, op: str, target: Remote, *args: object, **kwargs: object) -> object:
        self.busy = True
        send(self._req, [op, target, list(args), kwargs], self._other)
        answer = receive(self._resp, self._loads)
        self.busy = False
        if type(answer) is dict and "ok" in answer:
            return answer["ok"]
        if type(answer) is dict and type(answer.get("exc")) is list and len(answer["exc"]) == 3:
            raise _exception(*map(str, answer["exc"]))
        raise ProgramGone("the program's process broke the link protocol")


def _exception(module: str, name: str, message: str) -> BaseException:
    """A built-in exception type stays itself (tests may catch ValueError); anything else,
    and exits, become ProgramError."""
    kind = getattr(builtins, name, None) if module == "builtins" else None
    if isinstance(kind, type) and issubclass(kind, Exception):
        return kind(message)
    return ProgramError(f"{name}: {message}" if message else name)


class Remote:
    """A program object the tests hold by reference; every use is a question to the program."""

    __slots__ = ("_link", "_ref", "_name")

    def __init__(self, link: Link, ref: int, name: str) -> None:
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_name", name)

    def _ask(self, op: str, *args: object, **kwargs: object) -> object:
        return object.__getattribute__(self, "_link").request(op, self, *args, **kwargs)

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self._ask("call", *args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return self._ask("getattr", name)

    def __setattr__(self, name: str, value: object) -> None:
        self._ask("setattr", name, value)

    def __iter__(self):  # noqa: ANN204
        return iter(self._ask("list"))  # type: ignore[call-overload]

    def __len__(self) -> int:
        return operator.index(self._ask("len"))  # type: ignore[arg-type]

    def __bool__(self) -> bool:
        return self._ask("bool") is True

    def __getitem__(self, key: object) -> object:
        return self._ask("getitem", key)

    def __contains__(self, item: object) -> bool:
        return self._ask("contains", item) is True

    def __str__(self) -> str:
        return str(self._ask("str"))

    def __repr__(self) -> str:
        return str(self._ask("repr"))

    def __float__(self) -> float:
        return float(self._ask("float"))  # type: ignore[arg-type]

    def __int__(self) -> int:
        return int(self._ask("int"))  # type: ignore[call-overload]

    def __index__(self) -> int:
        return operator.index(self._ask("index"))  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        object.__getattribute__(self, "_link").note(
            f"compared value of type {object.__getattribute__(self, '_name')} (not plain data: compared by identity)")
        return False

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = object.__hash__


class LazyModule:
    """A module the program imported, imported again on the checker's side when the tests use it
    (the checker's own copy: a module the program patched stays patched only in its process).
    Only standard-library modules and ones the checker already has: the name comes from the
    program, and importing runs a module's code in the checker."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str) -> object:
        name = object.__getattribute__(self, "_name")
        module = sys.modules.get(name)
        if module is None:
            if name.partition(".")[0] not in sys.stdlib_module_names:
                raise ImportError(f"the checks may use the program's module {name!r} only if they import it")
            module = importlib.import_module(name)
        return getattr(module, attr)
