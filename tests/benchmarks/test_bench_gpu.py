"""``appliance bench gpu`` and ``scripts/bench-gpu`` end to end on the NumPy backend.

The device script must run here first (the GPU machine's time is short): the same code path
measures the CPU twin, and the GPU part reports why it did not run instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from appliance.benchmarks.gpu import format_table, run_all
from kernels.backend import cupy_available

REPO = Path(__file__).resolve().parents[2]
KERNELS = {"correct", "background", "registration", "bandpass", "detect", "extract", "wiener"}


def test_cpu_twin_measures_every_kernel_and_the_chain():
    doc = run_all([256], repeat=1, cycles=1, gpu=False)
    cpu = doc["cpu"]
    assert cpu["backend"] == "numpy" and cpu["copy_ceiling_gb_per_s"] > 0
    row = cpu["sizes"]["256"]
    assert {k["kernel"] for k in row["kernels"]} == KERNELS
    for k in row["kernels"]:
        assert k["ms_per_frame"] > 0 and math.isfinite(k["fraction_of_copy_ceiling"]) and k["fraction_of_copy_ceiling"] > 0
    assert row["chain"]["frames_per_s"] > 0 and row["chain"]["clusters"] > 100
    assert doc["gpu"] == {"available": False, "reason": "--no-gpu"}
    assert "256 px: chain" in format_table(doc) and "gpu: not measured (--no-gpu)" in format_table(doc)


def test_device_script_runs_end_to_end_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out))
    done = subprocess.run(["bash", str(REPO / "scripts" / "bench-gpu"), "--sizes", "256"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "bench-gpu.json").read_text())
    assert doc["sizes"] == [256] and doc["cpu"]["sizes"]["256"]["chain"]["frames_per_s"] > 0
    if not cupy_available()[0]:
        assert doc["gpu"]["available"] is False and doc["gpu"]["reason"]
        assert "gpu tests exit 0" in (out / "gpu-tests.txt").read_text()  # all skipped, none failed
    assert "online CPUs:" in (out / "topology.txt").read_text()
