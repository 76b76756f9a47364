"""Golden-file tests of ``plan`` for every profile on every captured host tree.

The golden files are tests/data/golden/plan-<host>-<profile>.json. After an intended change
to profiles, items or captures, regenerate them and review the diff:

    APPLIANCE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/appliance/tuning/test_tuning_plan_golden.py
"""

from __future__ import annotations

import json
import os

import pytest
from tuning_helpers import GOLDEN, HOST_NAMES, PROFILES, copy_host, tree_digest

from appliance.tuning import plan

UPDATE = os.environ.get("APPLIANCE_UPDATE_GOLDEN") == "1"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("host", HOST_NAMES)
def test_plan_matches_golden(host, profile, tmp_path):
    root = copy_host(host, tmp_path)
    before = tree_digest(root)
    result = plan(profile, root).to_dict()
    result["root"] = f"<{host}>"
    text = json.dumps(result, indent=2) + "\n"
    golden = GOLDEN / f"plan-{host}-{profile}.json"
    if UPDATE:
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing: regenerate with APPLIANCE_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"plan differs from {golden} (see module docstring)"
    assert tree_digest(root) == before, "plan must not write anything"
    assert not (root / "var").exists(), "plan must not create the journal"


def test_plan_text_lists_every_item(tmp_path):
    root = copy_host("dual-socket-gpu", tmp_path)
    p = plan("instrument", root)
    text = p.to_text()
    for entry in p.entries:
        assert entry.key in text
    assert "bls /boot/loader/entries/" in text
