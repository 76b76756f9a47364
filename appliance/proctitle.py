"""Process titles: ``ps``/``top`` show what each appliance process is.

Every stage process is ``appliance: STAGE-N RUN_ID`` (``appliance: kernel-0 260101_SIM_0001_FC``),
an offload worker ``appliance: offload-worker-N``. Without a title all of them would read
``python -B -c from multiprocessing.spawn ...``.
"""

from __future__ import annotations

__all__ = ["set_title", "title_of"]


def title_of(role: str, run_id: str | None = None) -> str:
    """The title for a process of ``role`` (``kernel-0``, ``offload-worker-2``) in run ``run_id``."""
    return f"appliance: {role} {run_id}" if run_id else f"appliance: {role}"


def set_title(role: str, run_id: str | None = None) -> str:
    """Set this process's title (``/proc/self/cmdline`` and the ``comm`` name); returns it."""
    import setproctitle

    title = title_of(role, run_id)
    setproctitle.setproctitle(title)
    # comm (``ps -o comm``, ``top``) holds 15 bytes: the role, which tells processes apart
    setproctitle.setthreadtitle(role[:15])
    return title
