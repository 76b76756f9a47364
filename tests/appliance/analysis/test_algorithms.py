"""The algorithm registry: persistence, channels, validation, concurrent writers, and the
real-time pipeline using the promoted algorithm for its next run."""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pytest

from appliance.analysis.algorithms import BUILTIN, AlgorithmError, AlgorithmRegistry, read_run_record
from appliance.runfolder import RunFolder
from tests.appliance.analysis.conftest import make_run


def test_builtin_is_production_until_a_promotion(tmp_path):
    reg = AlgorithmRegistry(tmp_path)
    assert reg.production() == BUILTIN and reg.candidate() is None
    assert [a.key for a in reg.ls()] == ["chain@1"]
    assert not (tmp_path / ".offload").exists()  # reading creates nothing


def test_register_candidate_promote_rollback_persist(tmp_path):
    reg = AlgorithmRegistry(tmp_path)
    a = reg.register("chain", "2", {"chain": {"background_percentile": 25.0}, "basecall": {"lag": 1}})
    assert a.key == "chain@2" and a.basecall_kwargs() == {"lag": 1}
    assert a.chain_config(psf_sigma=1.3).background_percentile == 25.0 and a.chain_config(psf_sigma=1.3).psf_sigma == 1.3
    assert reg.register("chain", "2", {"basecall": {"lag": 1}, "chain": {"background_percentile": 25.0}}) == a  # idempotent
    with pytest.raises(AlgorithmError, match="versions never change"):
        reg.register("chain", "2", {"chain": {"background_percentile": 20.0}})
    reg.set_candidate("chain", "2")
    again = AlgorithmRegistry(tmp_path)  # a new instance reads the file
    assert again.candidate() == a and again.production() == BUILTIN
    assert again.promote() == a
    assert AlgorithmRegistry(tmp_path).production() == a and AlgorithmRegistry(tmp_path).candidate() is None
    reg.register("chain", "3", {"chain": {"registration": "dft"}})
    reg.set_candidate("chain", "3")
    assert reg.rollback() == {"dropped_candidate": "chain@3", "production": "chain@2"}
    assert reg.rollback() == {"dropped_candidate": None, "production": "chain@1"}
    with pytest.raises(AlgorithmError, match="nothing to roll back"):
        reg.rollback()
    events = [(h["event"], h["algorithm"]) for h in reg.history()]
    assert events == [("register", "chain@2"), ("candidate", "chain@2"), ("promote", "chain@2"), ("register", "chain@3"),
                      ("candidate", "chain@3"), ("drop-candidate", "chain@3"), ("rollback", "chain@1")]
    assert json.loads((tmp_path / ".offload" / "algorithms.json").read_text())["production"] == "chain@1"


def test_validation_names_the_allowed_keys(tmp_path):
    reg = AlgorithmRegistry(tmp_path)
    with pytest.raises(AlgorithmError, match=r"unknown chain parameter\(s\) psf.*allowed: psf_sigma, n_channels"):
        reg.register("x", "1", {"chain": {"psf": 1.0}})
    with pytest.raises(AlgorithmError, match="unknown parameter section 'kernel'; allowed: chain, basecall"):
        reg.register("x", "1", {"kernel": {}})
    with pytest.raises(AlgorithmError, match="psf_sigma=9.0 is invalid; allowed: 0.5 to 5.0"):
        reg.register("x", "1", {"chain": {"psf_sigma": 9.0}})
    with pytest.raises(AlgorithmError, match="estimation_cycles=2 is invalid"):
        reg.register("x", "1", {"basecall": {"estimation_cycles": 2}})
    with pytest.raises(AlgorithmError, match="'module:function'"):
        reg.register("x", "1", {}, entry="nocolon")
    with pytest.raises(AlgorithmError, match="no algorithm x@9; known: chain@1"):
        reg.set_candidate("x", "9")
    with pytest.raises(AlgorithmError, match="no candidate to promote"):
        reg.promote()
    with pytest.raises(AlgorithmError, match="production already"):
        reg.set_candidate("chain", "1")
    assert [a.key for a in reg.ls()] == ["chain@1"]


def test_corrupt_registry_file_is_a_clear_error(tmp_path):
    (tmp_path / ".offload").mkdir()
    (tmp_path / ".offload" / "algorithms.json").write_text("{not json")
    with pytest.raises(AlgorithmError, match="not a readable algorithm registry.*restore it"):
        AlgorithmRegistry(tmp_path).production()


def _register_many(root: str, prefix: str, n: int) -> None:
    reg = AlgorithmRegistry(root)
    for i in range(n):
        reg.register(prefix, str(i), {"basecall": {"lag": i % 3}})


def test_concurrent_register_from_two_processes_loses_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(str(tmp_path), p, 15)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    keys = {a.key for a in AlgorithmRegistry(tmp_path).ls()}
    assert keys == {"chain@1"} | {f"{p}@{i}" for p in "ab" for i in range(15)}


def test_the_next_run_uses_the_promoted_algorithm(analysis_run, tmp_path):
    """A promoted candidate's parameters are what the real-time kernel and basecall stages use
    for the next run, recorded in the run's state folder and stage summaries."""
    reg = AlgorithmRegistry(tmp_path)
    reg.register("chain", "2", {"chain": {"background_percentile": 10.0}, "basecall": {"window": 1}})
    reg.set_candidate("chain", "2")
    reg.promote()
    run = make_run(tmp_path)
    alg, settings = read_run_record(tmp_path / ".state" / run.run_id / "algorithm.json")
    assert alg.key == "chain@2" and settings["chain_base"] == {"psf_sigma": 1.2}
    assert run.summary["stages"]["kernel-0"]["algorithm"] == "chain@2"
    assert run.summary["stages"]["basecall-0"]["algorithm"] == "chain@2"
    assert analysis_run.summary["stages"]["kernel-0"]["algorithm"] == "chain@1"
    a, b = RunFolder(analysis_run.path), RunFolder(run.path)
    assert np.array_equal(a.read_locs(1101), b.read_locs(1101))  # same frames, same clusters ...
    assert not np.array_equal(a.read_intensities(1101, 5), b.read_intensities(1101, 5))  # ... other background
