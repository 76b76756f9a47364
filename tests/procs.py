"""Starting the appliance's CLI as a real subprocess in tests, without leaking it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cli_process(args: list[str], **kwargs) -> Iterator[subprocess.Popen]:
    """``Popen(args)`` in its own session. On the way out, whatever of it still runs (the
    process and the stage processes that share its pipes) is SIGKILLed as a group, and its
    pipes are closed: a failing or timed-out test leaves no process or open file behind."""
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
