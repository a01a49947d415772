"""What this CPU reports it supports, read once from /proc/cpuinfo: the one seam every CPU-dependent choice goes
through (``fusionrt tune``'s BF16 candidates, the paper peak's VNNI factor, the machine fingerprint), so tests
can hand in any CPU (AVX2-only, AVX-512 VNNI + BF16, AMX) and drive each branch on whatever machine runs them."""

from __future__ import annotations

import dataclasses
import functools
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
MAX_FREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
# Features that decide which precision is fastest (BF16 and INT8 dot-product instructions), as the kernel names them.
DECISIVE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


@dataclass(frozen=True)
class CpuInfo:
    """Model name, feature flags and clock (GHz, None when unknown)."""

    name: str
    flags: frozenset[str]
    clock_ghz: float | None = None
    clock_source: str = "unknown"

    @property
    def bf16(self) -> bool:
        """BF16 matrix instructions (AVX-512 BF16 or AMX BF16): where OpenVINO's bf16 hint can be taken."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def vnni(self) -> bool:
        """INT8 dot products (vpdpbusd: AVX-512 VNNI or AVX-VNNI)."""
        return bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & self.flags)

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags

    @property
    def decisive_flags(self) -> list[str]:
        return [f for f in DECISIVE_FLAGS if f in self.flags]

    def describe(self) -> str:
        """``AMD EPYC 9B14: avx2 avx512f avx512_vnni avx512_bf16`` (the flags that matter here)."""
        return f"{self.name}: {' '.join(self.decisive_flags) or 'none of ' + ', '.join(DECISIVE_FLAGS)}"


def parse_cpuinfo(text: str, max_freq_khz: int | None = None) -> CpuInfo:
    """The first processor's model name and flags; the clock from cpufreq's maximum, else the highest cpu MHz."""
    name, flags, mhz = "", frozenset(), []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        elif key == "cpu MHz":
            mhz.append(float(value))
    if max_freq_khz:
        return CpuInfo(name or "unknown", flags, max_freq_khz / 1e6, "cpuinfo_max_freq")
    return CpuInfo(name or "unknown", flags, max(mhz) / 1e3 if mhz else None, "cpu MHz in /proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def this_cpu() -> CpuInfo:
    """This machine's CPU (not Linux: the name from ``platform``, no flags)."""
    if not CPUINFO.exists():
        return CpuInfo(platform.processor() or platform.machine(), frozenset())
    max_freq = int(MAX_FREQ.read_text()) if MAX_FREQ.exists() else None
    info = parse_cpuinfo(CPUINFO.read_text(), max_freq)
    if info.name == "unknown":  # e.g. Arm kernels print no model name
        info = dataclasses.replace(info, name=platform.processor() or platform.machine())
    return info
