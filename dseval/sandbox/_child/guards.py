"""Fallback network refusal when no network namespace is available.

An audit hook cannot be removed once added, so every socket creation, connect, bind and
name lookup in this interpreter raises. It does not cover a new interpreter started by the
program, so process spawning is refused too unless the caller allowed it. Known gap: code that
calls libc directly through ctypes bypasses both; only namespace mode closes that.
"""

from __future__ import annotations

import sys

_NET_EVENTS = frozenset(
    {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
     "socket.sendto", "socket.sendmsg"}
)
_SPAWN_EVENTS = frozenset({"os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "pty.spawn"})


def install(allow_spawn: bool) -> None:
    blocked = _NET_EVENTS if allow_spawn else _NET_EVENTS | _SPAWN_EVENTS

    def hook(event: str, args: object) -> None:
        if event in blocked:
            raise PermissionError(f"dseval sandbox: {event} refused (no network namespace available)")

    sys.addaudithook(hook)
