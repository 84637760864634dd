"""GPU energy from NVML's counter, for joules per step in the stats and the benchmarks."""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger("deepum")


class Energy:
    """Joules the GPU used since the session began, from NVML's energy counter."""

    def __init__(self, nvml, handle) -> None:
        self.nvml, self.handle = nvml, handle
        self.start = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        self.read_at = time.perf_counter()
        self.last = 0.0

    @classmethod
    def open(cls, device: torch.device) -> Energy | None:
        if device.type != "cuda":
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            # NVML numbers devices as the driver does; under CUDA_VISIBLE_DEVICES
            # CUDA's index may differ, so match by PCI address where torch has it.
            props = torch.cuda.get_device_properties(device)
            if hasattr(props, "pci_bus_id"):
                address = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
                handle = pynvml.nvmlDeviceGetHandleByPciBusId(address)
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            return cls(pynvml, handle)
        except Exception as e:  # no NVML, no permission, no energy counter
            log.debug("GPU energy not available: %s", e)
            return None

    def joules(self, max_age_s: float = 0.0) -> float:
        """Joules since the session began; a reading younger than ``max_age_s`` is reused
        (Thresholds.energy_read_s: the query is slow on some drivers)."""
        now = time.perf_counter()
        if now - self.read_at >= max_age_s:
            self.last = (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self.start) / 1000.0
            self.read_at = now
        return self.last

