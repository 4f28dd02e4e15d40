"""What CPU this is, in one line: its model and the vector features that change how fast
(and, for int8 products without VNNI, how exactly) a model runs. Printed beside every
speed figure."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_info() -> dict:
    """``{"model", "cores", "flags": {flag: bool}}`` from /proc/cpuinfo (Linux), else what
    :mod:`platform` knows."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.processor(), platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in FLAGS}}


def vnni() -> bool:
    """True where the CPU has VNNI (AVX-512 or AVX): exact u8s8 int8 products in onnxruntime."""
    f = cpu_info()["flags"]
    return f["avx512_vnni"] or f["avx_vnni"]


def cpu_line() -> str:
    """E.g. ``CPU: Intel(R) Xeon(R) Processor, 2 cores, AVX-512 yes, VNNI yes (avx512_vnni avx_vnni)``."""
    info = cpu_info()
    f = info["flags"]
    have = " ".join(k for k, v in f.items() if v and "vnni" in k)
    return (f"CPU: {info['model']}, {info['cores']} cores, AVX2 {'yes' if f['avx2'] else 'no'}, "
            f"AVX-512 {'yes' if f['avx512f'] else 'no'}, VNNI {'yes (' + have + ')' if have else 'no'}")
