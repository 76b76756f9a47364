"""The run report of a real run, rendered in headless Chromium (Debian's ``chromium``, which
scripts/system-deps installs): every plot is an image the browser decodes, with something
drawn on it, and the page logs no console error, exception or failed load.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes, commands on fd 3, replies and events on fd 4), so nothing
listens on a port and the browser's own log is not parsed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.pipeline import Supervisor
from appliance.report import write_report
from tests.runs import small_run_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not on PATH: install Debian's chromium (scripts/system-deps does, as root)"
)
#: what the report of a complete synthetic run draws (tests/appliance/test_report.py)
FIGURES = {"throughput", "occupancy", "latency", "latency-time", "intensity", "errors", "pf"}
TIMEOUT_S = 60.0

# Per figure: the image decoded (natural size) and drawn on a canvas, the share of its
# pixels that differ from the top-left one (a blank image has none).
_INSPECT = """(() => {
  const out = {};
  for (const fig of document.querySelectorAll('figure')) {
    const img = fig.querySelector('img');
    const r = {img: !!img, complete: false, width: 0, height: 0, drawn: 0};
    if (img) {
      r.complete = img.complete; r.width = img.naturalWidth; r.height = img.naturalHeight;
      if (r.width && r.height) {
        const c = document.createElement('canvas');
        c.width = r.width; c.height = r.height;
        const g = c.getContext('2d');
        g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, r.width, r.height).data;
        let differ = 0;
        for (let i = 0; i < d.length; i += 4)
          if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) differ++;
        r.drawn = differ / (d.length / 4);
      }
    }
    out[fig.id] = r;
  }
  return JSON.stringify(out);
})()"""


class _DevTools:
    """A DevTools protocol client over Chromium's pipe: ``call`` sends a command and returns
    its result; every event received meanwhile is kept in ``events``."""

    def __init__(self, profile: Path) -> None:
        import fcntl

        r, self._cmd_w = os.pipe()
        self._ev_r, w = os.pipe()
        # copies above fd 9, so that moving them to 3 and 4 in the child cannot clobber one
        cmd_r, ev_w = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(r)
        os.close(w)
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}", "about:blank"]
        # the browser reads commands on fd 3 and writes on fd 4: a Python trampoline moves the
        # pipes there (sh cannot name fds above 9) and execs the browser
        move = f"import os, sys; os.dup2({cmd_r}, 3); os.dup2({ev_w}, 4); os.close({cmd_r}); os.close({ev_w}); os.execv(sys.argv[1], sys.argv[1:])"
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", move, *args], pass_fds=(cmd_r, ev_w),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            os.close(cmd_r)
            os.close(ev_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict] = []

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            m = self._read(deadline)
            if m.get("id") == self._next:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_event(self, method: str, deadline: float) -> dict:
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ev_r], [], [], left)[0]:
                raise TimeoutError(f"chromium sent nothing for {TIMEOUT_S} s")
            chunk = os.read(self._ev_r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the DevTools pipe (exit status {self.proc.poll()})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.call("Browser.close")
                except (RuntimeError, TimeoutError, OSError):
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            os.close(self._cmd_w)
            os.close(self._ev_r)


def render(page: Path, profile: Path) -> tuple[dict, list[str]]:
    """Load ``page`` in headless Chromium: (the figures as ``_INSPECT`` sees them, the
    console errors, exceptions and failed loads)."""
    dt = _DevTools(profile)
    try:
        target = dt.call("Target.createTarget", url="about:blank")["targetId"]
        session = dt.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.call(f"{domain}.enable", session)
        dt.call("Page.navigate", session, url=page.as_uri())
        dt.wait_event("Page.loadEventFired", time.monotonic() + TIMEOUT_S)
        figures = json.loads(dt.call("Runtime.evaluate", session, expression=_INSPECT, returnByValue=True)["result"]["value"])
        dt.call("Runtime.evaluate", session, expression="0")  # a round trip: events sent so far have arrived
        errors = []
        for e in dt.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
            elif m == "Runtime.exceptionThrown":
                errors.append(f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception', {}).get('description', '')}")
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                errors.append(f"log: {p['entry'].get('text')} ({p['entry'].get('url', '')})")
            elif m == "Network.loadingFailed":
                errors.append(f"load failed: {p.get('errorText')}")
        return figures, errors
    finally:
        dt.close()


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    sup = Supervisor(small_run_config(root, "control.enabled=false"), run_id="BROWSER")
    summary = sup.run()
    (sup.state_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))  # as `appliance run` does
    return write_report(sup.run_dir)


def test_report_renders_in_chromium_with_every_plot_drawn_and_no_console_errors(report_page, tmp_path):
    figures, errors = render(report_page, tmp_path / "profile")
    assert errors == []
    assert FIGURES <= {f.removeprefix("fig-") for f in figures}, figures.keys()
    for ident, f in figures.items():
        assert f["img"] and f["complete"], f"{ident}: no image, or it did not load: {f}"
        assert f["width"] > 100 and f["height"] > 100, f"{ident}: the browser could not decode the plot: {f}"
        assert f["drawn"] > 0.01, f"{ident}: the plot is blank ({f['drawn']:.2%} of its pixels drawn)"


def test_a_broken_plot_and_a_script_error_are_seen(report_page, tmp_path):
    """The check itself: a plot whose image does not decode, and a script that throws, fail it."""
    text = report_page.read_text()
    start = text.index('src="data:image/png;base64,') + len('src="data:image/png;base64,')
    broken = text[:start] + "AAAA" + text[start + 4:]  # the first plot's PNG signature destroyed
    broken = broken.replace("</body>", "<script>console.error('boom'); undefined_name();</script></body>")
    page = tmp_path / "broken.html"
    page.write_text(broken)
    figures, errors = render(page, tmp_path / "profile")
    assert any("boom" in e for e in errors) and any("undefined_name" in e for e in errors), errors
    first = next(iter(figures.values()))
    assert first["width"] == 0  # not decoded: the first check above would fail on it
    assert sum(f["width"] > 100 for f in figures.values()) == len(figures) - 1
