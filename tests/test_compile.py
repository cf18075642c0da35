"""`train.compile = true` trains on the CPU through torch.compile (inductor, which builds
C++ kernels: it needs a C++ compiler)."""

from __future__ import annotations

import pytest
from conftest import BASE, merge, run_profile


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on the CPU, or None where there is none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # noqa: BLE001 - inductor raises its own error when it finds none
        return None


@pytest.mark.skipif(
    cpp_compiler() is None, reason="no C++ compiler (g++, c++ or $CXX): inductor cannot build"
)
def test_a_compiled_run_trains_on_the_cpu():
    # Few steps: the first compiles (forward, backward, then the eval graph), which is slow.
    compiled = {
        "run": {"max_steps": 15},
        "optim": {"name": "adam", "lr": 0.05},
        "train": {"compile": True, "log_every": 5},
    }
    done = run_profile(merge(BASE, compiled))
    assert done.reason == "completed"
    losses = [e.loss for e in done.of("step")]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0], losses
    assert done.last_epoch.val_acc > 0.5  # validation ran through the compiled model too
