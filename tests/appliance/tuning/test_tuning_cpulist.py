"""CPU-mask syntax (/proc/irq/*/smp_affinity), as the kernel prints and accepts it.

The cpulist parser is rt.topology's and is tested in tests/rt/test_topology.py.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from appliance.tuning.cpulist import format_cpumask, parse_cpumask


def test_masks_as_the_kernel_prints_them():
    assert format_cpumask({0, 1}, 2) == "3"
    assert format_cpumask(range(64), 64) == "ffffffff,ffffffff"
    assert format_cpumask({0}, 64) == "00000000,00000001"
    assert format_cpumask({33}, 40) == "02,00000000"
    assert parse_cpumask("ffffffff,00000001\n") == {0} | set(range(32, 64))
    assert parse_cpumask("3") == {0, 1}


@given(st.sets(st.integers(0, 300)))
def test_mask_round_trips(cpus):
    assert parse_cpumask(format_cpumask(cpus, 301)) == cpus
