"""Declarative Linux host tuning: profiles, plan/apply/verify/rollback/persist, journal.

The logic behind ``sysconfig/`` (the provisioning scripts) and ``appliance sysconfig``.
Everything reads and writes under an injectable root and changes the machine only through
a :class:`Runner`, so tests run against captured /proc and /sys trees.
"""

from appliance.tuning.cpulist import (
    format_cpulist,
    format_cpumask,
    parse_cpulist,
    parse_cpumask,
)
from appliance.tuning.cpusets import eval_cpuset, resolve_cpusets
from appliance.tuning.engine import (
    EXIT_DRIFT,
    EXIT_OK,
    EXIT_PENDING_REBOOT,
    ApplyReport,
    Plan,
    PlanEntry,
    RollbackReport,
    VerifyReport,
    apply,
    plan,
    rollback,
    verify,
)
from appliance.tuning.host import Host
from appliance.tuning.items import ItemError, build_items
from appliance.tuning.journal import JOURNAL_DIR, Journal, JournalBusy
from appliance.tuning.persist import PersistReport, persist
from appliance.tuning.profile import (
    Profile,
    ProfileError,
    default_profile_dirs,
    list_profiles,
    load_profile,
)
from appliance.tuning.runner import CommandError, Runner, SystemRunner
from appliance.tuning.startup import TuningDriftError, startup_check

__all__ = [
    "ApplyReport",
    "CommandError",
    "EXIT_DRIFT",
    "EXIT_OK",
    "EXIT_PENDING_REBOOT",
    "Host",
    "ItemError",
    "JOURNAL_DIR",
    "Journal",
    "JournalBusy",
    "PersistReport",
    "Plan",
    "PlanEntry",
    "Profile",
    "ProfileError",
    "RollbackReport",
    "Runner",
    "SystemRunner",
    "TuningDriftError",
    "VerifyReport",
    "apply",
    "build_items",
    "default_profile_dirs",
    "eval_cpuset",
    "format_cpulist",
    "format_cpumask",
    "list_profiles",
    "load_profile",
    "parse_cpulist",
    "parse_cpumask",
    "persist",
    "plan",
    "resolve_cpusets",
    "rollback",
    "startup_check",
    "verify",
]
