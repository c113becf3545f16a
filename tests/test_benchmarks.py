"""The benchmarks' own measuring helpers: what they report is what the measured command did."""
import importlib.util
import os
import re
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in kB and vfork: Linux")
def test_measure_process_reports_the_commands_peak_not_the_parents():
    """benchmarks/apply.py's measure_process: a child's ru_maxrss read directly carries the
    parent's own peak across exec; through the launcher the command's peak is its own (here
    the test holds 400 MB, the command allocates and touches 60 MB)."""
    bench = load_benchmark("apply")
    held = np.ones(400 * 2**20 // 8)  # noqa: F841 - this process's own peak, which must not show
    outputs = []
    wall, peak_mb, pss, cpu = bench.measure_process(
        [sys.executable, "-c", "import numpy as np; a = np.ones(60 * 2**20 // 8); print(a.sum() > 0)"], outputs=outputs)
    assert 60 < peak_mb < 250, peak_mb
    assert outputs == ["True\n"] and wall > 0 and cpu > 0 and np.isnan(pss)
    with pytest.raises(RuntimeError, match=r"failed \(3\)"):
        bench.measure_process([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_the_machine_line_names_the_cpu_and_three_load_averages():
    """utils/machine.py: what every benchmark prints beside its figures."""
    from utils.machine import cpu_model, load_averages, status_line
    assert cpu_model().strip() and "\n" not in cpu_model()
    assert re.fullmatch(r"\d+\.\d\d \d+\.\d\d \d+\.\d\d", load_averages())
    assert re.fullmatch(r"\d\d:\d\d:\d\d UTC, load averages \d+\.\d\d \d+\.\d\d \d+\.\d\d", status_line())
