"""The user's own code, named in a profile as "package.module:function" (a dataset, a
model, a loss): imported and called so that whatever it does wrong becomes one sentence
naming the profile key, never a traceback."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.profile import BUILTIN_ARCHS, DATASETS
from engine.task_spec import LOSSES


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


# model.arch prefixes that name a library's model zoo, not the user's code.
ZOO_PREFIXES = ("torchvision:", "timm:")


CODE_KEYS = ("model.arch", "data.dataset", "task.loss")


def imported_code(profile: dict[str, Any], keys: tuple[str, ...] = CODE_KEYS) -> str | None:
    """The first "package.module:function" a profile dict makes mpt import (a model
    factory, a dataset factory, a loss: those of `keys`), or None. Zoo models are library
    code."""
    if not isinstance(profile, dict):
        return None
    builtin = {
        ("model", "arch"): BUILTIN_ARCHS,
        ("data", "dataset"): DATASETS,
        ("task", "loss"): ("auto", *LOSSES),
    }
    for (section, key), names in builtin.items():
        if f"{section}.{key}" not in keys:
            continue
        table = profile.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str) and value not in names and not value.startswith(ZOO_PREFIXES):
            return value
    return None


def code_problem(path: str, key: str) -> str | None:
    """Why `path` ("package.module:function", named by `key`) cannot be had, found without
    running any of the user's code: the module's file is looked up as the import would
    find it, and read, not executed, for a top-level definition of the name. None when it
    is there, or when only running the module could tell (a star import, a module
    __getattr__, a compiled module). `mpt validate` uses it; `mpt run` imports for real."""
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as import_callable does
    where, spec = None, None
    for i, part in enumerate(module_name.split(".")):
        spec = (
            None if i and where is None else importlib.machinery.PathFinder.find_spec(part, where)
        )
        if spec is None:
            if module_name.partition(".")[0] in sys.builtin_module_names:
                return None
            return (
                f"{key} {path!r}: cannot find module {module_name!r} in {os.getcwd()} or on "
                "the Python path; run mpt from the folder that holds it, or install it"
            )
        where = spec.submodule_search_locations
    origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(origin).read_bytes(), origin)
    except (OSError, SyntaxError, ValueError) as e:
        return f"{key} {path!r}: cannot read {origin} ({e})"
    names = _top_level_names(tree.body)
    if names is None:
        return None
    if attr in names or "__getattr__" in names:
        return None
    return f"{key} {path!r}: {origin} defines no {attr!r}"


def _top_level_names(body: list[ast.stmt]) -> set[str] | None:
    """The names a module's statements define at its top level (inside top-level if, try,
    with and for blocks too), or None where a star import makes them unknowable."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(a.name == "*" for a in node.names):
                return None
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        else:
            for child in ast.walk(node):  # assignments, for/with targets, walrus, ...
                if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                    names.add(child.id)
            for block in ("body", "orelse", "finalbody"):
                inner = _top_level_names(getattr(node, block, None) or [])
                if inner is None:
                    return None
                names |= inner
            for handler in getattr(node, "handlers", None) or []:
                inner = _top_level_names(handler.body)
                if inner is None:
                    return None
                names |= inner
    return names
