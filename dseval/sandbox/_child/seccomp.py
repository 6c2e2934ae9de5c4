"""A seccomp filter for the program: no new user namespaces, no kernel keyring, no ptrace.

Why: inside a new user namespace an unprivileged program becomes "root" there and may mount
a tmpfs whose pages no limit of ours sees; keys added to the kernel keyring outlive the run
and are visible to the next program of the same uid; ptrace and process_vm_readv would let a
child read the runner's memory (where the completion proof lives). ``clone3`` passes its
flags in memory a filter cannot read, so it answers ENOSYS and libc falls back to ``clone``,
whose flags are checked. Calls from another ABI (x32, i386 on x86_64) are refused outright,
so the same numbers cannot be reached through a second syscall table.

The filter is a classic BPF program handed to prctl(PR_SET_SECCOMP); no library needed.
"""

from __future__ import annotations

import ctypes
import errno
import os

from . import linux

_CLONE_NEWUSER = 0x10000000
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_X32_BIT = 0x40000000

# AUDIT_ARCH value and the syscall numbers we filter, per machine.
_TABLES = {
    "x86_64": (0xC000003E, {"unshare": 272, "clone": 56, "clone3": 435, "add_key": 248, "request_key": 249,
                            "keyctl": 250, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311}),
    "aarch64": (0xC00000B7, {"unshare": 97, "clone": 220, "clone3": 435, "add_key": 217, "request_key": 218,
                             "keyctl": 219, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271}),
}
_DENIED = ("add_key", "request_key", "keyctl", "ptrace", "process_vm_readv", "process_vm_writev")


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn))]


def _assemble(lines: list[tuple]) -> list[tuple[int, int, int, int]]:
    """(op, k, jump-if-true label, jump-if-false label) or a label string -> BPF tuples."""
    labels, pc = {}, 0
    for line in lines:
        if isinstance(line, str):
            labels[line] = pc
        else:
            pc += 1
    out, pc = [], 0
    for line in lines:
        if isinstance(line, str):
            continue
        op, k, jt, jf = (*line, None, None)[:4]
        rel = lambda label: 0 if label is None else labels[label] - pc - 1  # noqa: E731
        out.append((op, rel(jt), rel(jf), k))
        pc += 1
    return out


def program(machine: str) -> list[tuple[int, int, int, int]]:
    arch, nr = _TABLES[machine]
    lines: list[tuple | str] = [(_LD_ABS, 4), (_JEQ, arch, None, "deny"), (_LD_ABS, 0)]
    if machine == "x86_64":
        lines.append((_JGE, _X32_BIT, "deny", None))
    lines += [(_JEQ, nr["unshare"], "flags"), (_JEQ, nr["clone"], "flags"), (_JEQ, nr["clone3"], "enosys")]
    lines += [(_JEQ, nr[name], "deny") for name in _DENIED]
    lines += [(_RET, _RET_ALLOW),
              "flags", (_LD_ABS, 16), (_JSET, _CLONE_NEWUSER, "deny"), (_RET, _RET_ALLOW),
              "enosys", (_RET, _RET_ERRNO | errno.ENOSYS),
              "deny", (_RET, _RET_ERRNO | errno.EPERM)]
    return _assemble(lines)


def install() -> None:
    """Install the filter on the calling thread's process (needs no_new_privs already set)."""
    machine = os.uname().machine
    if machine not in _TABLES:
        raise OSError(0, f"seccomp: no syscall table for {machine}")
    insns = program(machine)
    arr = (_Insn * len(insns))(*[_Insn(c, t, f, k) for c, t, f, k in insns])
    prog = _Prog(len(insns), arr)
    ret = linux.libc().prctl(ctypes.c_int(_PR_SET_SECCOMP), ctypes.c_ulong(_SECCOMP_MODE_FILTER),
                             ctypes.byref(prog), 0, 0)
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: {os.strerror(err)}")
