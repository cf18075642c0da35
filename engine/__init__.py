"""mpt's training engine. No Textual here, and no torch at import time.

The public API: `load_profile`, `Profile`, `Run`, the events in `engine.events`,
and the error types in `engine.errors`. They are imported on first use (PEP 562), so a
command that needs none of them (`mpt ls`, `mpt --help`) does not pay for the profile
schema and the run handle at start-up.
"""

from importlib import import_module

_WHERE = {
    "DataError": "engine.errors",
    "ModelError": "engine.errors",
    "MptError": "engine.errors",
    "ProfileError": "engine.errors",
    "FIELDS": "engine.profile",
    "Profile": "engine.profile",
    "load_profile": "engine.profile",
    "profile_from_dict": "engine.profile",
    "profile_from_toml": "engine.profile",
    "Run": "engine.run",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
