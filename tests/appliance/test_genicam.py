"""The GenICam source against the GenICam reference virtual camera (no mocks).

The ``genicam`` wheel ships ``viky.cti``, a GenTL producer simulating three cameras (serials
0, 1, 2; 100..800 px square ROI; RGBa8 and Mono8; 1..200 frames/s; no exposure feature). The
tests drive it through harvesters exactly as a real camera's vendor producer would be driven,
and skip with the reason when the optional packages or the producer are not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from appliance.genicam import (
    GENTL_PATH_ENV,
    INSTALL_HINT,
    SUPPORTED_PIXEL_FORMATS,
    GenICamCamera,
    GenICamError,
    bundled_producer,
    find_producers,
    mono_to_uint16,
)

try:
    import genicam  # noqa: F401
    import harvesters  # noqa: F401

    _MISSING = None
except ImportError as exc:
    _MISSING = f"optional GenICam packages not installed ({exc}); {INSTALL_HINT}"

VIKY = bundled_producer()

needs_camera = pytest.mark.skipif(
    _MISSING is not None or VIKY is None,
    reason=_MISSING or "the genicam wheel ships no viky.cti (reference virtual camera) here",
)

# Mono8 is the only monochrome format the virtual camera offers; 200 frames/s is its maximum.
FAST = dict(pixel_format="Mono8", frame_rate_hz=200.0)


@pytest.fixture(autouse=True)
def _no_gentl_path(monkeypatch):
    """Tests choose their producer explicitly; a GENICAM_GENTL64_PATH of the machine's own
    (a vendor SDK installed here) must not change what they open."""
    monkeypatch.delenv(GENTL_PATH_ENV, raising=False)


# -- pixel conversion (pure NumPy) ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["Mono10", "Mono12", "Mono14", "Mono16"])
def test_16bit_formats_keep_values_and_drop_row_padding(fmt):
    rng = np.random.default_rng(1)
    bits = int(fmt[4:])
    h, w, pad = 5, 7, 3
    padded = rng.integers(0, 2**bits, size=(h, w + pad), dtype=np.uint16)
    raw = padded.astype("<u2").tobytes()  # PFNC: little-endian words
    out = mono_to_uint16(np.frombuffer(raw, np.uint8), w, h, fmt)
    assert out.dtype == np.uint16 and out.shape == (h, w) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, padded[:, :w])


def test_mono8_widens_without_rescaling_and_copies():
    src = np.arange(12, dtype=np.uint8).reshape(-1) * 20
    out = mono_to_uint16(src, 4, 3, "Mono8")
    np.testing.assert_array_equal(out, src.reshape(3, 4).astype(np.uint16))
    src[:] = 0  # the result is not a view of the (GenTL) buffer
    assert out.max() == 220


def test_conversion_rejects_unsupported_and_short_buffers():
    with pytest.raises(GenICamError, match="supported: Mono8, Mono10"):
        mono_to_uint16(np.zeros(16, np.uint8), 4, 4, "RGBa8")
    with pytest.raises(GenICamError, match="does not hold a 8 x 4 image"):
        mono_to_uint16(np.zeros(16, np.uint16), 8, 4, "Mono16")


# -- finding the producer -------------------------------------------------------------------


def test_explicit_cti_that_does_not_exist_names_the_path(tmp_path):
    missing = tmp_path / "vendor" / "producer.cti"
    with pytest.raises(GenICamError, match=str(missing)):
        find_producers(missing)


@needs_camera
def test_opening_a_missing_cti_names_the_path(tmp_path):
    missing = tmp_path / "vendor" / "producer.cti"
    with pytest.raises(GenICamError, match=str(missing)):
        GenICamCamera(cti=missing, pixel_format="Mono8").open()


@needs_camera
def test_search_order_env_directories_then_bundled(tmp_path):
    empty, vendor = tmp_path / "empty", tmp_path / "vendor"
    empty.mkdir()
    vendor.mkdir()
    copy = vendor / "vendor.cti"
    shutil.copyfile(VIKY, copy)
    env = {GENTL_PATH_ENV: f"{tmp_path / 'absent'}:{empty}:{vendor}"}
    assert find_producers(environ=env) == [copy]
    assert find_producers(tmp_path / "vendor" / "vendor.cti", environ={}) == [copy]
    # Nothing in the variable's directories: the genicam wheel's virtual camera.
    assert find_producers(environ={GENTL_PATH_ENV: str(empty)}) == [VIKY]
    assert find_producers(environ={}) == [VIKY]


@needs_camera
def test_producer_found_through_the_environment_variable_is_opened(tmp_path, monkeypatch):
    shutil.copyfile(VIKY, tmp_path / "vendor.cti")
    monkeypatch.setenv(GENTL_PATH_ENV, str(tmp_path))
    with GenICamCamera(serial="2", **FAST) as cam:
        assert cam.info().producer == str(tmp_path / "vendor.cti")
        assert len(list(cam.frames(2))) == 2


@needs_camera
def test_a_file_that_is_not_a_producer_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.cti"
    bogus.write_text("not a shared library\n")
    with pytest.raises(GenICamError, match=r"bogus\.cti.*cannot be loaded"):
        GenICamCamera(cti=bogus, pixel_format="Mono8").open()


# -- the virtual camera ---------------------------------------------------------------------


@needs_camera
def test_open_info_and_grab_ten_frames():
    with GenICamCamera(cti=VIKY, serial="1", width=256, height=128, num_buffers=4, **FAST) as cam:
        info = cam.info()
        assert (info.vendor, info.model, info.serial) == ("Machine Vision Games Ltd.", "Viky", "1")
        assert (info.width, info.height, info.pixel_format) == (256, 128, "Mono8")
        assert info.producer == str(VIKY) and info.num_buffers == 4
        frames = list(cam.frames(10, timeout_s=5.0))
        stats = cam.stats()
    assert len(frames) == 10
    for frame in frames:
        assert frame.shape == (128, 256) and frame.dtype == np.uint16 and frame.flags.owndata
        assert frame.max() <= 255  # Mono8 values kept, not rescaled
    # The virtual camera draws a moving ball: images have content and change over time.
    assert all(frame.min() < frame.max() for frame in frames)
    assert any(not np.array_equal(frames[0], f) for f in frames[1:])
    assert stats["frames"] == 10 and stats["incomplete"] == 0


@needs_camera
def test_incomplete_buffers_are_counted():
    # The virtual camera never delivers an incomplete buffer; this raises harvesters' own
    # INCOMPLETE_BUFFER event (what its fetch does when it discards one) to check the count.
    with GenICamCamera(cti=VIKY, serial="0", **FAST) as cam:
        it = cam.frames(2)
        next(it)
        cam._ia._emit_callbacks(cam._ia.Events.INCOMPLETE_BUFFER)
        next(it)
        assert cam.stats()["incomplete"] == 1 and cam.stats()["frames"] == 2


@needs_camera
def test_frames_are_copies_that_outlive_their_gentl_buffer():
    # Three GenTL buffers cycle under 12 frames: a view would be overwritten by later frames.
    with GenICamCamera(cti=VIKY, serial="0", num_buffers=3, **FAST) as cam:
        it = cam.frames(12)
        first = next(it)
        snapshot = first.copy()
        rest = list(it)
    assert len(rest) == 11 and any(not np.array_equal(snapshot, f) for f in rest)
    np.testing.assert_array_equal(first, snapshot)


@needs_camera
def test_the_context_manager_releases_the_device():
    with GenICamCamera(cti=VIKY, serial="0", **FAST) as cam:
        assert len(list(cam.frames(2))) == 2
        # While it is held, the device is exclusive: a second open fails with the list.
        with pytest.raises(GenICamError, match="serial '0'|no camera found"):
            GenICamCamera(cti=VIKY, serial="0", **FAST).open()
    for _ in range(2):  # released on exit: it opens again, twice in a row
        with GenICamCamera(cti=VIKY, serial="0", **FAST) as cam:
            assert len(list(cam.frames(2))) == 2
    with pytest.raises(GenICamError, match="not open"):
        cam.info()


@needs_camera
def test_abandoned_iteration_stops_acquisition_and_a_new_one_starts():
    with GenICamCamera(cti=VIKY, serial="1", **FAST) as cam:
        it = cam.frames()  # unbounded
        assert next(it).shape == (400, 400)
        with pytest.raises(GenICamError, match="already acquiring"):
            cam.frames(1)
        it.close()
        assert len(list(cam.frames(3))) == 3


@needs_camera
def test_unsupported_pixel_format_lists_the_supported_ones():
    # Mono16 (the default) is supported by the appliance but not offered by this camera.
    offered = r"does not offer pixel format 'Mono16'.*choose one of Mono8"
    with pytest.raises(GenICamError, match=offered):
        GenICamCamera(cti=VIKY, serial="0").open()
    # RGBa8 is offered by the camera but not supported by the appliance: refused before opening.
    with pytest.raises(GenICamError, match=", ".join(SUPPORTED_PIXEL_FORMATS)):
        GenICamCamera(cti=VIKY, pixel_format="RGBa8")


@needs_camera
def test_unknown_serial_lists_the_cameras_found():
    with pytest.raises(GenICamError, match=r"no camera with serial 'nope'.*serial '0'.*serial '2'"):
        GenICamCamera(cti=VIKY, serial="nope", **FAST).open()


@needs_camera
def test_settings_out_of_range_or_absent_name_the_feature():
    with pytest.raises(GenICamError, match=r"Width=5000.*allowed: 100 to 800"):
        GenICamCamera(cti=VIKY, serial="0", width=5000, **FAST).open()
    with pytest.raises(GenICamError, match="no ExposureTime"):
        GenICamCamera(cti=VIKY, serial="0", exposure_us=100.0, **FAST).open()
    with pytest.raises(GenICamError, match="no feature 'NoSuchFeature'"):
        GenICamCamera(cti=VIKY, serial="0", features={"NoSuchFeature": 1}, **FAST).open()
    with pytest.raises(GenICamError, match="width=0 must be a positive integer"):
        GenICamCamera(cti=VIKY, width=0, **FAST)
    # A failed open released the device: the camera opens right after.
    with GenICamCamera(cti=VIKY, serial="0", **FAST) as cam:
        assert len(list(cam.frames(1))) == 1


@needs_camera
def test_acquisition_timeout_is_a_clear_error():
    # At 1 frame/s the first frame comes about 1 s after the start, long after 0.1 s.
    with GenICamCamera(cti=VIKY, serial="2", pixel_format="Mono8", frame_rate_hz=1.0) as cam:
        with pytest.raises(GenICamError, match=r"no frame from camera serial .2. within 0.1 s"):
            next(cam.frames(timeout_s=0.1))


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


def test_missing_packages_name_the_extra():
    # A fresh interpreter where harvesters cannot be imported (None in sys.modules blocks it).
    proc = _run_python("""
        import sys
        sys.modules["harvesters"] = sys.modules["harvesters.core"] = None
        from appliance.genicam import GenICamCamera, GenICamError
        try:
            GenICamCamera(pixel_format="Mono8").open()
        except GenICamError as exc:
            print(exc)
        """)
    assert proc.returncode == 0, proc.stderr
    assert "harvesters" in proc.stdout and INSTALL_HINT in proc.stdout


@needs_camera
def test_no_import_time_side_effects_and_warning_filters_kept():
    proc = _run_python(f"""
        import sys, warnings
        import appliance.genicam as g
        assert "harvesters" not in sys.modules and "genicam" not in sys.modules, "imported eagerly"
        before = list(warnings.filters)
        with g.GenICamCamera(cti={str(VIKY)!r}, serial="0", pixel_format="Mono8") as cam:
            cam.info()
        assert "harvesters.core" in sys.modules
        assert warnings.filters == before, "importing harvesters changed the warning filters"
        print("ok")
        """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
