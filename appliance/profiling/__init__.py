"""bpftrace scripts for ``appliance profile --bpftrace NAME`` (package data: NAME.bt).

Each script is plain bpftrace with placeholders that :func:`appliance.profile.render_bpftrace`
fills in before it runs: ``{{WATCH}}`` (one ``@stage[TID] = "kernel-0";`` per thread of the
stages profiled), ``{{DURATION}}`` (seconds) and, in ringfaults.bt, ``{{RING_CHECKS}}`` (one
address-range test per ring segment mapped into each stage). The rendered script is kept
beside its output in the run's profiles folder, so what ran is on record.
"""
