"""GPU utilisation, temperature and power from NVML (nvidia-ml-py), where the system has it.

torch.cuda.utilization / temperature / power_draw ask NVML for the device torch calls
`device` (they map CUDA_VISIBLE_DEVICES themselves). Without nvidia-ml-py, without a
driver, or on the CPU, the figures are silently absent: the first failure turns the
probe off for the rest of the run.
"""

from __future__ import annotations

import time

import torch

MIN_INTERVAL = 1.0  # seconds: NVML is asked at most once a second


class GpuStats:
    def __init__(self, device: torch.device):
        self.device = device
        self.available = device.type == "cuda"
        self._last: dict[str, float | int] = {}
        self._at = float("-inf")

    def read(self) -> dict[str, float | int]:
        """{'gpu_util': %, 'gpu_temp': degrees C, 'gpu_power': W}, or {} where unknown."""
        if not self.available:
            return {}
        now = time.monotonic()
        if now - self._at < MIN_INTERVAL:
            return self._last
        self._at = now
        try:
            self._last = {
                "gpu_util": int(torch.cuda.utilization(self.device)),
                "gpu_temp": int(torch.cuda.temperature(self.device)),
                "gpu_power": torch.cuda.power_draw(self.device) / 1000.0,  # mW -> W
            }
        except Exception:  # noqa: BLE001 - no nvidia-ml-py, no driver, no NVML: say nothing
            self.available, self._last = False, {}
        return self._last

    def figures(self) -> dict[str, float | int]:
        """A step event's GPU figures: memory allocated, reserved, peak and total, and
        NVML's (`read`); {} off CUDA."""
        if self.device.type != "cuda":
            return {}
        dev = self.device
        return dict(
            gpu_mem_allocated=torch.cuda.memory_allocated(dev),
            gpu_mem_reserved=torch.cuda.memory_reserved(dev),
            gpu_mem_peak=torch.cuda.max_memory_allocated(dev),
            gpu_mem_total=torch.cuda.get_device_properties(dev).total_memory,
            **self.read(),
        )
