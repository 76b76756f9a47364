"""Which tuning changes are risky, and why, in one line each (a pure lookup).

``plan`` marks each item that a risky change would set (``PlanEntry.risk``), so an operator
reads what they trade away before ``apply`` or ``persist``: the throughput and latency gains
of the instrument profile come from settings a general-purpose host would not use.
"""

from __future__ import annotations

__all__ = ["RISKS", "risk_of"]

#: (item key, desired value or None for any value) -> the one-line why. Keys are the plan's
#: item keys (``sysctl:NAME``, ``cmdline:NAME``, ``thp:NAME``, ...).
RISKS: dict[tuple[str, str | None], str] = {
    ("sysctl:kernel.sched_rt_runtime_us", "-1"): "RT throttling off: a runaway real-time thread can take its CPU for good and starve kernel work there (hung tasks, a host that stops answering)",
    ("cmdline:processor.max_cstate", None): "CPUs never enter deep idle states: idle power and heat rise a lot, and a hot chassis may throttle the clock instead",
    ("cmdline:intel_idle.max_cstate", None): "CPUs never enter deep idle states: idle power and heat rise a lot, and a hot chassis may throttle the clock instead",
    ("cmdline:isolcpus", None): "isolated CPUs get no load balancing: only threads pinned there run there; with a wrong CPU set cores sit idle or one is overloaded",
    ("cmdline:nohz_full", None): "no scheduler tick on these CPUs: a second runnable thread on one of them brings the tick back, and time accounting there is coarser",
    ("cmdline:mitigations", "mitigations=off"): "CPU vulnerability mitigations off (Spectre, Meltdown, ...): only on a host that runs no untrusted code",
    ("cmdline:transparent_hugepage", "transparent_hugepage=always"): "THP for every process: memory use grows (bloat) and khugepaged compaction adds latency spikes",
    ("sysctl:kernel.nmi_watchdog", "0"): "the hard-lockup detector is off: a CPU that locks up is no longer reported",
    ("sysctl:vm.overcommit_memory", "2"): "strict overcommit: allocations fail once the commit limit is reached, even with free memory",
}


def risk_of(key: str, desired: str) -> str:
    """The one-line why when setting ``key`` to ``desired`` is risky, else ``""``."""
    return RISKS.get((key, desired)) or RISKS.get((key, None)) or ""
