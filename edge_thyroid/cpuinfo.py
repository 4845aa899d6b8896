"""Which CPU this is, from /proc/cpuinfo: the backend picker keys its measured decisions by the model name,
and training runs record family and model number beside it (a virtual CPU's name alone, "Intel(R) Xeon(R)
Processor", does not say which kind it is)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpuinfo_fields(cpuinfo: str | None = None) -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (or in ``cpuinfo``), keys lower-case ("model name",
    "cpu family", "model", "flags", ...); empty where there is no such file."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        except OSError:
            return {}
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU's model name (the backend picker's main key: the same bundle on another CPU is measured again)."""
    return cpuinfo_fields().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first processor's instruction-set flags ("avx2", "avx512_vnni", "amx_int8", ...); empty where
    /proc/cpuinfo is absent."""
    return set(cpuinfo_fields(cpuinfo).get("flags", "").split())
