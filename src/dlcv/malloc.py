"""glibc malloc settings for long CPU runs. glibc reads them only when a process starts, so the CLI
re-executes itself with them once, before torch is imported."""
from __future__ import annotations

import os
import platform
import sys

# Evidence (`bash benchmarks/cpu_malloc.sh`: p3_cpu's Lite2 model, 256 px, batch 16, 2-core Xeon): with
# glibc's defaults every freed tensor above the mmap threshold goes back to the OS and the next step maps
# and zeroes it again (207,000-294,000 minor page faults per step, a third of the time in the kernel); with
# these, freed memory is reused (5,000 per step), ~1.15x faster. The same values set in-process with
# mallopt(3) did not give the effect (measured), hence the re-exec. Cost: the heap keeps its peak size.
SETTINGS = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 << 30), "MALLOC_TOP_PAD_": str(1 << 30)}


def settings_in_effect() -> dict[str, str]:
    """The MALLOC_* variables this process started with (saved in every run's provenance)."""
    return {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")}


def restart_command(args: list[str]) -> list[str]:
    """`python -P -m dlcv ARGS`: -P keeps the working folder off sys.path, so a `dlcv.py` there is never
    run in place of the installed package."""
    return [sys.executable, "-P", "-m", "dlcv", *args]


def reexec_with_settings(args: list[str]) -> None:
    """Replace this process by restart_command(args) with SETTINGS added to its environment. Does nothing
    (returns) where the C library is not glibc, where any MALLOC_* variable is already set (the user's
    choice wins, and the re-executed process sees them, so it never loops), with DLCV_MALLOC=default, or
    on Python 3.10, which has no -P (no restart there rather than one that imports from the working folder)."""
    if platform.libc_ver()[0] != "glibc" or settings_in_effect() or os.environ.get("DLCV_MALLOC") == "default" \
            or not hasattr(sys.flags, "safe_path"):
        return
    argv = restart_command(args)
    os.execve(argv[0], argv, {**os.environ, **SETTINGS})
