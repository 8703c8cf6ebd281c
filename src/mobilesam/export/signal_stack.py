"""Keep the calling thread's alternate signal stack across calls into native runtimes that replace it.

OpenVINO 2026.4's CPU plugin installs an alternate signal stack on the thread that compiles or runs a model,
and frees that memory with the compiled model while it is still installed. Python runs every signal handler
on the alternate stack (``SA_ONSTACK``), so the next signal the thread handles (Ctrl-C, the SIGCHLD of a
DataLoader worker, ...) is written to freed memory and the process dies of SIGSEGV, with no traceback. A call
wrapped here leaves the thread with the signal stack it had before; the runtime keeps its own stack while the
call runs.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc_sigaltstack() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None  # the leak was seen on Linux; elsewhere the calls run as they are
    try:
        return ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):
        return None


_sigaltstack = _libc_sigaltstack()


def current_signal_stack() -> tuple[int, int, int] | None:
    """This thread's alternate signal stack as (address, flags, size); None where it cannot be read."""
    if _sigaltstack is None:
        return None
    now = _StackT()
    if _sigaltstack(None, ctypes.byref(now)) != 0:
        return None
    return now.ss_sp or 0, now.ss_flags, now.ss_size


def keeps_signal_stack(fn: F) -> F:
    """``fn`` run so that the calling thread ends with the alternate signal stack it started with."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _sigaltstack is None:
            return fn(*args, **kwargs)
        before = _StackT()
        saved = _sigaltstack(None, ctypes.byref(before)) == 0
        try:
            return fn(*args, **kwargs)
        finally:
            if saved:
                _sigaltstack(ctypes.byref(before), None)

    return wrapper  # type: ignore[return-value]
