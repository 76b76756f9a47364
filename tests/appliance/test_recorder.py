from __future__ import annotations

from appliance.recorder import FlightRecorder, read_records


def test_records_round_trip_in_order_with_filters(tmp_path):
    with FlightRecorder(tmp_path / "fr", max_bytes=1 << 20, segment_bytes=1 << 16) as rec:
        for i in range(100):
            rec.record("stats", {"t": float(i), "i": i})
            if i % 10 == 0:
                rec.record("alert", {"t": float(i), "message": f"a{i}"})
    got = list(read_records(tmp_path / "fr"))
    assert [r["body"]["i"] for r in got if r["topic"] == "stats"] == list(range(100))
    assert [r["body"]["message"] for r in read_records(tmp_path / "fr", topics=("alert",))] == [f"a{i}" for i in range(0, 100, 10)]
    assert [r["t"] for r in read_records(tmp_path / "fr", since=95)] == [95.0, 96.0, 97.0, 98.0, 99.0]


def test_store_is_bounded_and_keeps_the_newest(tmp_path):
    folder = tmp_path / "fr"
    with FlightRecorder(folder, max_bytes=40_000, segment_bytes=10_000) as rec:
        for i in range(2000):
            rec.record("stats", {"t": float(i), "pad": "x" * 50})
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total <= 40_000 + 10_000  # the bound, plus the segment being written
    ts = [r["t"] for r in read_records(folder)]
    assert ts == sorted(ts) and ts[-1] == 1999.0 and ts[0] > 0


def test_reopen_appends_and_a_torn_line_is_skipped(tmp_path):
    folder = tmp_path / "fr"
    with FlightRecorder(folder) as rec:
        rec.record("event", {"t": 1.0})
    with next(folder.iterdir()).open("a") as f:
        f.write('{"topic": "ev')  # a crash mid-line
    with FlightRecorder(folder) as rec:
        rec.record("event", {"t": 2.0})
    assert [r["t"] for r in read_records(folder)] == [1.0, 2.0]  # the torn line alone is lost
