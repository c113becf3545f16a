"""What the benchmarks print about the machine they ran on (the CPU changes between machines,
and figures are only read beside it). No torch: benchmarks measure the memory of processes that
import this."""
import os
import platform
import time


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's ``model name``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_averages() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them: '1.84 1.60 1.09'."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not available on this system
        return "unknown"


def status_line() -> str:
    """The time (UTC) and the load averages: what a benchmark prints before and after a run."""
    return f"{time.strftime('%H:%M:%S', time.gmtime())} UTC, load averages {load_averages()}"
