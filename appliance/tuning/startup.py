"""The start-up check ``appliance run`` makes: is the host tuned as its profile says?"""

from __future__ import annotations

import logging
from pathlib import Path

from appliance.tuning.engine import EXIT_OK, verify

__all__ = ["startup_check", "TuningDriftError"]

log = logging.getLogger(__name__)


class TuningDriftError(RuntimeError):
    """The host does not match its tuning profile and ``--strict`` forbids running anyway."""

    def __init__(self, profile: str, problems: list[str]) -> None:
        super().__init__(
            f"host tuning differs from profile {profile!r} ({len(problems)} problems; first: "
            f"{problems[0] if problems else '?'}); run `appliance sysconfig apply --profile "
            f"{profile}` (and reboot if a reboot is pending), or start without --strict"
        )
        self.profile = profile
        self.problems = problems


def startup_check(
    profile: str,
    strict: bool = False,
    root: Path = Path("/"),
    profile_dirs: list[Path] | None = None,
) -> list[str]:
    """Verify ``profile`` and return one warning per problem (empty when the host matches).

    Each problem is also logged as a warning. With ``strict`` any problem (drift, a missing
    object, or a pending reboot) raises :class:`TuningDriftError` instead. A bad profile
    raises :class:`~appliance.tuning.profile.ProfileError` either way.
    """
    report = verify(profile, root, profile_dirs)
    if report.exit_code == EXIT_OK:
        return []
    problems = report.problems()
    if strict:
        raise TuningDriftError(report.profile, problems)
    for p in problems:
        log.warning("sysconfig %s: %s", report.profile, p)
    return problems
