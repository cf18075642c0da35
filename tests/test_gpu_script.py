"""bench/gpu.sh, the GPU checks of issue 19, runs end to end without a GPU: every section on
the CPU at tiny sizes (fp16 and nccl skipped, saying why), so the script cannot rot between
the rare runs on a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

from durable_helpers import MNIST_NPZ, REPO

SECTIONS = ("device", "events", "workloads", "resnet18", "resume", "torchrun", "compile")


def test_gpu_script_runs_every_section_on_the_cpu_and_prints_the_table():
    r = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--device", "cpu", "--npz", str(MNIST_NPZ)],
        env={**os.environ, "PYTHON": sys.executable, "MPT_GPU_QUICK": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in SECTIONS:
        assert f"== {name} (" in r.stdout, name
    summary = r.stdout.split("== summary: ", 1)[1]
    assert summary.startswith("CPU")  # the device's name heads the table
    assert "ERROR" not in summary
    assert "skipped: fp16 autocast + GradScaler is for CUDA" in summary
    assert "skipped: nccl needs CUDA" in summary
    for row in ("resnet18 fp32 mpt / floor", "resnet18 bf16 mpt / floor", "bit for bit",
                "torchrun --nproc_per_node 1 mpt run", "mlp compiled / eager"):  # fmt: skip
        assert row in summary, row


def test_a_failing_section_prints_its_error_and_the_next_ones_still_run(tmp_path):
    missing = tmp_path / "no-such.npz"
    r = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--device", "cpu", "--npz", str(missing),
         "--sections", "workloads", "device"],
        env={**os.environ, "PYTHON": sys.executable, "MPT_GPU_QUICK": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip

    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{missing}: not found" in r.stdout
    summary = r.stdout.split("== summary: ", 1)[1]
    assert "ERROR workloads" in summary  # the failure, one row
    assert "device" in summary.split("ERROR workloads", 1)[1]  # and the section after it ran
