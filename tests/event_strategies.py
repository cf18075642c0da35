"""Hypothesis strategies for what a line of events.jsonl may hold, shared by the reader's
fuzz tests (tests/test_trust_events.py) and the dashboard's (tests/tui)."""

from __future__ import annotations

from hypothesis import strategies as st

from engine import events as ev

# Any JSON value, NaN and Infinity included (Python's json writes them).
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
# Every field name some event has: lines that look like events, with values of any type.
FIELD_NAMES = sorted({n for cls in ev.EVENT_TYPES.values() for n in cls.__dataclass_fields__})
