"""The user's own code, named in a profile as "package.module:function" (a dataset, a
model, a loss): imported and called so that whatever it does wrong becomes one sentence
naming the profile key, never a traceback."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any


def import_callable(path: str, key: str, error: type[Exception]) -> Callable[..., Any]:
    """The callable `path` names; `error(...)` naming `key` when it cannot be had."""
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        # The `mpt` console script, unlike `python -m`, leaves the working directory off
        # sys.path; a module beside the profile must import, as relative data paths resolve.
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise error(f"{key} {path!r}: cannot import module {module_name!r} ({e})") from None
    except Exception as e:  # noqa: BLE001 - user code failing at import
        raise error(
            f"{key} {path!r}: importing {module_name!r} raised {type(e).__name__}: {e}"
        ) from None
    found = getattr(module, attr, None)
    if not callable(found):
        raise error(f"{key} {path!r}: module {module_name!r} has no callable {attr!r}")
    return found


def where_raised(e: BaseException) -> str:
    """file:line of the innermost frame of `e`'s traceback (the user's code, usually)."""
    frames = traceback.extract_tb(e.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def call_user(fn: Callable[..., Any], key: str, path: str, error: type[Exception], **kwargs):
    """fn(**kwargs); an exception from it becomes `error` naming `key`, with file:line.
    Out of memory and SystemExit/KeyboardInterrupt pass through (the run reports those)."""
    try:
        return fn(**kwargs)
    except TypeError as e:
        if e.__traceback__ is not None and e.__traceback__.tb_next is None:
            # raised by the call itself: the keyword arguments do not fit its signature
            raise error(f"{key} {path!r}: cannot be called with {sorted(kwargs)} ({e})") from None
        raise error(f"{key} {path!r} raised TypeError: {e} ({where_raised(e)})") from None
    except Exception as e:  # noqa: BLE001 - user code
        from engine.memory import is_out_of_memory

        if is_out_of_memory(e):
            raise
        raise error(f"{key} {path!r} raised {type(e).__name__}: {e} ({where_raised(e)})") from None
