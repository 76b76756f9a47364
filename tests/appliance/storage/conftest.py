"""Shared fixtures: one real, complete run folder written by the real pipeline (per test
package, it takes a few seconds), copied into a fresh hot tier for each test that changes it."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.storage import StorageManager, load_policy
from tests.runs import small_run_config

RUN = "RUN1"


@pytest.fixture(scope="package")
def pristine_root(tmp_path_factory) -> Path:
    """A data root holding RUN1: 2 tiles, 5 cycles, Raw/ kept for every tile, .state/ with the
    supervisor's summaries and time series, and a committed Analysis/RUN1/align-qc/ output."""
    from appliance.pipeline import Supervisor

    root = tmp_path_factory.mktemp("pristine")
    cfg = small_run_config(root, "run.cycles=5", "output.keep_raw_every=1", "control.enabled=false")
    summary = Supervisor(cfg, run_id=RUN).run()
    assert Path(summary["output"]).name == RUN
    kind = root / "Analysis" / RUN / "align-qc"
    kind.mkdir(parents=True)
    (kind / "qc.json").write_text(json.dumps({"aligned_fraction": 0.97}))
    (kind / "_SUCCESS.json").write_text(json.dumps({"ok": True}))
    return root


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path (the catalog in .storage/ aside)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.relative_to(root).as_posix().startswith(".storage/")}


def write_policy(path: Path, warm: str = "", cold: str = "", *, copies: int = 2, bandwidth: float = 0,
                 ages: dict | None = None, extra: str = "") -> Path:
    """A policy file: every class copies to warm and cold at age 0 unless ``ages`` says
    otherwise (class -> {key: value}); raw is deleted from hot once it has ``copies`` copies."""
    base = {cls: {"when": "complete", "warm": 0, "cold": 0} for cls in ("raw", "basecalls", "intensities", "reports", "logs")}
    base["analysis"] = {"when": "analysed", "warm": 0, "cold": 0}
    base["raw"]["hot_delete"] = 0
    for cls, over in (ages or {}).items():
        base[cls].update(over)
    lines = ["[tiers]", f'warm = "{warm}"', f'cold = "{cold}"', "[copies]", f"verified = {copies}",
             "[mover]", f"bandwidth_mb_s = {bandwidth}", "interval_s = 0.2", "[scrub]", 'interval = "never"', "sample = 1000"]
    for cls, rule in base.items():
        lines.append(f"[rules.{cls}]")
        for k, v in rule.items():
            lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@pytest.fixture
def tiers(tmp_path, pristine_root):
    """(hot root with a copy of the run, warm dir, cold dir, policy path)."""
    hot = tmp_path / "hot"
    shutil.copytree(pristine_root, hot)
    shutil.rmtree(hot / ".state" / "recorder", ignore_errors=True)
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    policy = write_policy(tmp_path / "policy.toml", str(warm), str(cold))
    return hot, warm, cold, policy


def manager(hot: Path, policy_path: Path, **kw) -> StorageManager:
    policy = load_policy(policy_path)
    if "policy" in kw:
        policy = replace(policy, **kw.pop("policy"))
    return StorageManager(hot, policy, **kw)


def temps(*dirs: Path) -> list[Path]:
    return [p for d in dirs if d.exists() for p in d.rglob("*") if ".tmp." in p.name]


def bagit_tool() -> str:
    tool = Path(sys.executable).parent / "bagit.py"
    return str(tool) if tool.exists() else shutil.which("bagit.py")


def flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    if not data:  # an empty file (a marker) is corrupted by growing it
        data.append(0)
    data[min(offset, len(data) - 1)] ^= 0xFF
    path.write_bytes(bytes(data))
