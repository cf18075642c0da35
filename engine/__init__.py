"""mpt's training engine. No Textual here, and no torch at import time.

The public API: `load_profile`, `Profile`, `Run`, the events in `engine.events`,
and the error types in `engine.errors`.
"""

from engine.errors import DataError, ModelError, MptError, ProfileError
from engine.profile import FIELDS, Profile, load_profile, profile_from_dict, profile_from_toml
from engine.run import Run

__all__ = [
    "FIELDS",
    "DataError",
    "ModelError",
    "MptError",
    "Profile",
    "ProfileError",
    "Run",
    "load_profile",
    "profile_from_dict",
    "profile_from_toml",
]
