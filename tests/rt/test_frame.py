import numpy as np
import pytest

from rt import frame


def test_header_is_256_bytes_and_aligned():
    dt = frame.FRAME_HEADER_DTYPE
    assert dt.itemsize == 256
    for name, (fdt, offset, *_) in dt.fields.items():
        base = fdt.base if fdt.subdtype else fdt
        if base.kind in "uif":
            assert offset % base.itemsize == 0, name


def test_header_in_place_view_roundtrip():
    buf = bytearray(512)
    h = np.ndarray((), frame.FRAME_HEADER_DTYPE, buffer=buf, offset=256)
    h["seq"] = 2**63 + 5
    h["tile"] = 1101
    h["run_id"] = b"run-42"
    frame.stamp_trace(h, 2)
    again = np.ndarray((), frame.FRAME_HEADER_DTYPE, buffer=buf, offset=256)
    assert int(again["seq"]) == 2**63 + 5
    assert int(again["tile"]) == 1101
    assert again["run_id"] == b"run-42"
    assert int(again["n_trace"]) == 3 and int(again["trace_ns"][2]) > 0
    assert bytes(buf[:256]) == bytes(256)  # nothing outside the view was touched


def test_dtype_codes_roundtrip_and_errors():
    for code, dt in frame.DTYPE_CODES.items():
        assert frame.code_from_dtype(dt) == code
        assert frame.dtype_from_code(code) == dt
    with pytest.raises(ValueError, match="not supported"):
        frame.code_from_dtype(np.complex64)
    with pytest.raises(ValueError, match="corrupt header"):
        frame.dtype_from_code(200)


def test_checksum_is_crc32c():
    # RFC 3720 test vector: 32 bytes of zeros -> 0x8A9136AA
    assert frame.checksum(bytes(32)) == 0x8A9136AA
    assert frame.checksum(np.zeros(32, np.uint8)) == 0x8A9136AA


def test_stamp_trace_rejects_bad_stage():
    h = np.zeros((), frame.FRAME_HEADER_DTYPE)
    with pytest.raises(ValueError, match="stage_index"):
        frame.stamp_trace(h, frame.MAX_TRACE)
