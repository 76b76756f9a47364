"""``appliance bench kernels``: each image kernel and the per-tile chain against SciPy/scikit-image."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HELP = "image kernels and the per-tile chain vs the same steps built from SciPy/scikit-image"
DESCRIPTION = """\
Render a synthetic flow-cell tile (random layout, 0.005 clusters/px^2, 4 channels), then time
each kernel of the image chain and the whole per-tile chain against the equivalent SciPy /
scikit-image calls on the same inputs, in the same run. For each row: milliseconds, megapixels/s,
the ratio reference time / our time (speed-up, >1 is faster; times are the best of --repeat
calls, since noise on a shared machine only ever adds time) and an accuracy figure (difference to the
reference, or error against the instrument's ground truth).

Precision/speed knobs are measured on both sides where the reference has them: float16 vs
float32, Richardson-Lucy iterations, FFT padding (periodic, zero, reflect; fast FFT lengths on/off).

The chain rows process one tile-cycle (4 frames): correction, registration, background,
extraction; tiles/s there means tile-cycles per second (x4 for frames/s). With CuPy and a CUDA
device, the kernels and the chain also run on the GPU, with host-to-device transfer and the
generation-2 check (5120 x 5120 at 42 frames/s).

Prints a table and writes JSON. The default 2048 x 2048 run takes a few minutes on two cores.

examples:
  appliance bench kernels
  appliance bench kernels --size 512 --cycles 2       # a quick run (seconds)
  appliance bench kernels --json out/kernels.json --repeat 5
"""

# ---------------------------------------------------------------------------------------------
# helpers


def _machine() -> dict[str, Any]:
    """The shared machine description plus what matters for FFT-bound kernels."""
    import scipy

    from appliance.benchmarks._machine import machine_description
    from kernels.backend import fft_workers

    desc = machine_description()
    desc.update({"fft_workers": fft_workers(), "numpy": np.__version__, "scipy": scipy.__version__})
    try:
        import skimage

        desc["scikit_image"] = skimage.__version__
    except ImportError:  # pragma: no cover - the reference side needs it anyway
        pass
    return desc


def _timeit(fn: Callable[[], Any], repeat: int, sync: Callable[[], None] = lambda: None) -> float:
    """Best wall time of ``fn`` in seconds: one untimed warm-up, then ``repeat`` timed calls
    (two for calls over 0.5 s; a call over 2 s is timed once, its warm-up being the timing).
    The minimum, not the median, because on a shared machine the noise only ever adds time."""
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    if first > 2.0:
        return first
    n = repeat if first < 0.5 else max(1, min(repeat, 2))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def _rel_l2(a: Any, b: Any, crop: int = 0) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if crop:
        a = a[crop:-crop, crop:-crop]
        b = b[crop:-crop, crop:-crop]
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _render(pos: np.ndarray, amp: np.ndarray, shape: tuple[int, int], shift: tuple[float, float],
            rng: np.random.Generator, sigma: float = 1.2, bg: np.ndarray | None = None) -> np.ndarray:
    """Poisson-noisy frame (float32) of Gaussian spots at ``pos + shift`` over ``bg``: the
    exact translation of one scene, which registration accuracy needs."""
    from scipy.special import erf

    h, w = shape
    p = pos + np.asarray(shift)
    r = int(math.ceil(4 * sigma))
    off = np.arange(-r, r + 1)
    cx = np.rint(p[:, 0]).astype(np.int64)
    cy = np.rint(p[:, 1]).astype(np.int64)
    px, py = cx[:, None] + off, cy[:, None] + off
    k = 1.0 / (math.sqrt(2.0) * sigma)
    gx = 0.5 * (erf((px + 0.5 - p[:, :1]) * k) - erf((px - 0.5 - p[:, :1]) * k))
    gy = 0.5 * (erf((py + 0.5 - p[:, 1:]) * k) - erf((py - 0.5 - p[:, 1:]) * k))
    vals = (amp[:, None, None] * gy[:, :, None] * gx[:, None, :]).ravel()
    rows = np.broadcast_to(py[:, :, None], (len(p), len(off), len(off))).ravel()
    cols = np.broadcast_to(px[:, None, :], (len(p), len(off), len(off))).ravel()
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    img = np.bincount(rows[ok] * w + cols[ok], weights=vals[ok], minlength=h * w).reshape(h, w)
    if bg is not None:
        img += bg
    return rng.poisson(img).astype(np.float32)


class _Table:
    """Collects result rows; ``ratio`` is reference time / our time (speed-up)."""

    def __init__(self, megapixels: float) -> None:
        self.rows: list[dict[str, Any]] = []
        self.mpx = megapixels

    def add(self, kernel: str, impl: str, variant: str, seconds: float, *,
            mpx: float | None = None, reference: str | None = None,
            accuracy: dict[str, float] | None = None, per: str = "frame") -> dict[str, Any]:
        mp = self.mpx if mpx is None else mpx
        row = {"kernel": kernel, "impl": impl, "variant": variant, "seconds": seconds,
               "ms": seconds * 1e3, "mpx_per_s": mp / seconds if seconds > 0 else None,
               "per_s": 1.0 / seconds if seconds > 0 else None, "per": per,
               "reference": reference, "ratio_vs_reference": None, "accuracy": accuracy or {}}
        if reference is not None:
            ref = next((r for r in self.rows if r["kernel"] == kernel and r["impl"] != "ours"
                        and r["variant"] == reference), None)
            if ref is not None:
                row["ratio_vs_reference"] = ref["seconds"] / seconds
        self.rows.append(row)
        return row


def _progress(msg: str) -> None:
    print(f"... {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# the CPU comparison


def run_cpu(size: int, cycles: int, repeat: int, seed: int = 1, quick: bool = False
            ) -> dict[str, Any]:
    import scipy.ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import difference_of_gaussians as sk_dog
    from skimage.registration import phase_cross_correlation
    from skimage.restoration import richardson_lucy as sk_rl
    from skimage.restoration import wiener as sk_wiener
    from skimage.transform import resize

    from kernels.background import background_grid, expand_background, sample_background
    from kernels.bandpass import BandPass
    from kernels.chain import ChainConfig, TileChain
    from kernels.correct import FlatFieldCorrector
    from kernels.deconvolution import RichardsonLucy, WienerFilter
    from kernels.detect import ClusterDetector, find_peaks
    from kernels.extract import extract_intensities
    from kernels.registration import PhaseCorrelator
    from kernels.synthetic import InstrumentParams, SyntheticInstrument

    shape = (size, size)
    mpx = size * size / 1e6
    table = _Table(mpx)
    n_cycles = 4 + cycles
    params = InstrumentParams(tile_shape=shape, layout="random", density=0.005, n_cycles=n_cycles)
    inst = SyntheticInstrument(params, seed=seed)
    truth = inst.truth(1101)
    _progress(f"rendering {n_cycles} cycles x 4 channels of {size}x{size} "
              f"({truth.n_clusters} clusters)")
    raw = [inst.render_cycle(1101, c) for c in range(1, n_cycles + 1)]
    rng = np.random.default_rng(seed)

    # -- correction ------------------------------------------------------------------------
    _progress("correction")
    frame = raw[0][0]
    dark = rng.normal(params.offset, 2.0, shape).astype(np.float32)
    flat = rng.uniform(0.9, 1.1, shape).astype(np.float32)
    corr = FlatFieldCorrector(shape, dark, flat)
    out = np.empty(shape, np.float32)
    t_ref = _timeit(lambda: (frame.astype(np.float32) - dark) / flat, repeat)
    table.add("correct", "numpy", "(raw-dark)/flat", t_ref)
    t = _timeit(lambda: corr(frame, out=out), repeat)
    acc = _rel_l2(corr(frame), (frame.astype(np.float64) - dark) / flat)
    table.add("correct", "ours", "fused, out=", t, reference="(raw-dark)/flat",
              accuracy={"rel_l2_vs_float64": acc})
    img = FlatFieldCorrector(shape, params.offset)(frame)

    # -- background ------------------------------------------------------------------------
    _progress("background")
    true_bg = inst.background_image(1101) * params.gain
    block = 32

    def ref_bg() -> np.ndarray:
        cells = img.reshape(size // block, block, size // block, block).swapaxes(1, 2)
        grid = np.percentile(cells.reshape(size // block, size // block, -1), 30, axis=-1)
        return resize(ndi.gaussian_filter(grid, 1.0, mode="nearest"), shape, order=1,
                      mode="edge", anti_aliasing=False)

    t_ref = _timeit(ref_bg, repeat)
    table.add("background", "numpy+skimage", "percentile+resize", t_ref,
              accuracy={"rms_err_pct_of_bg": 100 * float(np.sqrt(((ref_bg() - true_bg) ** 2).mean())
                                                       / true_bg.mean())})
    bgout = np.empty(shape, np.float32)
    full = lambda: expand_background(background_grid(img, block), shape, block, out=bgout)  # noqa: E731
    t = _timeit(full, repeat)
    est = full()
    table.add("background", "ours", "grid+expand, out=", t, reference="percentile+resize",
              accuracy={"rms_err_pct_of_bg": 100 * float(np.sqrt(((est - true_bg) ** 2).mean())
                                                       / true_bg.mean())})
    t = _timeit(lambda: sample_background(background_grid(img, block), truth.positions, block),
                repeat)
    table.add("background", "ours", "grid, sampled at clusters", t, reference="percentile+resize")

    # -- registration (same scene translated by known shifts) -------------------------------
    _progress("registration")
    pos = np.column_stack([rng.uniform(-20, size + 20, truth.n_clusters),
                           rng.uniform(-20, size + 20, truth.n_clusters)])
    amp = 2000 * np.exp(rng.normal(0, 0.294, len(pos)))
    bg_e = inst.background_image(1101)
    ref_img = _render(pos, amp, shape, (0.0, 0.0), rng, bg=bg_e)
    n_pairs = 3 if quick else 5
    shifts = rng.uniform(-15, 15, (n_pairs, 2))
    movs = [_render(pos, amp * rng.uniform(0.5, 1.5, len(amp)), shape, tuple(d), rng, bg=bg_e)
            for d in shifts]
    truth_rc = np.column_stack([-shifts[:, 1], -shifts[:, 0]])

    def errs(fn: Callable[[np.ndarray, np.ndarray], Any]) -> dict[str, float]:
        e = np.array([np.asarray(fn(ref_img, m)) - t for m, t in zip(movs, truth_rc)])
        return {"rms_err_px": float(np.sqrt((e**2).mean())), "max_err_px": float(np.abs(e).max())}

    for up in (20, 100):
        sk = lambda r, m, up=up: phase_cross_correlation(r, m, upsample_factor=up)[0]  # noqa: E731
        t_ref = _timeit(lambda: sk(ref_img, movs[0]), repeat)
        table.add("registration", "skimage", f"phase_cross_correlation up={up}", t_ref,
                  accuracy=errs(sk))
    for method, up in (("dft", 100), ("dft", 20), ("fit", 1)):
        pc = PhaseCorrelator(shape, method=method, upsample_factor=max(up, 1))
        variant = f"{method} up={up}, band-weighted" if method == "dft" else "fit (Gaussian peak)"
        t = _timeit(lambda: pc.register(ref_img, movs[0]), repeat)
        reference = f"phase_cross_correlation up={100 if method == 'fit' else up}"
        table.add("registration", "ours", variant, t, reference=reference, accuracy=errs(pc.register))
    pc = PhaseCorrelator(shape)
    ref_spec = pc.spectrum(ref_img)
    t = _timeit(lambda: pc.shift(ref_spec, pc.spectrum(movs[0])), repeat)
    table.add("registration", "ours", "fit, reference spectrum kept", t,
              reference="phase_cross_correlation up=100")

    # -- band-pass -------------------------------------------------------------------------
    _progress("band-pass")
    for kind, lo, hi in (("log", 0.9, None), ("dog", 1.0, 1.6), ("dog", 1.0, 3.6)):
        label = f"LoG s={lo}" if kind == "log" else f"DoG {lo}/{hi}"
        if kind == "log":
            ref_fn = lambda lo=lo: ndi.gaussian_laplace(img, lo, mode="reflect")  # noqa: E731
            refname = f"ndimage.gaussian_laplace {label}"
            table.add("bandpass", "scipy", refname, _timeit(ref_fn, repeat))
        else:
            ref_fn = lambda lo=lo, hi=hi: sk_dog(img, lo, hi, mode="reflect")  # noqa: E731
            refname = f"skimage difference_of_gaussians {lo}/{hi}"
            table.add("bandpass", "skimage", refname, _timeit(ref_fn, repeat))
        ref_out = ref_fn()
        for method, padding in (("fft", "reflect"), ("fft", "none"), ("spatial", "reflect")):
            bp = BandPass(shape, kind=kind, low_sigma=lo, high_sigma=hi, method=method,
                          padding=padding)
            t = _timeit(lambda bp=bp: bp(img, out=out), repeat)
            table.add("bandpass", "ours", f"{label} {method} pad={padding}", t, reference=refname,
                      accuracy={"rel_l2_vs_ref": _rel_l2(bp(img), ref_out),
                                "rel_l2_interior": _rel_l2(bp(img), ref_out, crop=16)})

    # -- deconvolution ---------------------------------------------------------------------
    _progress("deconvolution")
    g = np.exp(-(np.arange(-4, 5) ** 2) / (2 * 1.2**2))
    psf = np.outer(g, g)
    psf = (psf / psf.sum()).astype(np.float32)
    dimg = np.maximum(img, 0) / max(float(img.max()), 1.0)  # skimage's RL expects [0, 1]-ish
    dimg = dimg.astype(np.float32)
    t_ref = _timeit(lambda: sk_wiener(dimg, psf, 0.05, clip=False), repeat)
    table.add("wiener", "skimage", "float32 periodic", t_ref)
    sk_w = sk_wiener(dimg, psf, 0.05, clip=False)
    t_ref64 = _timeit(lambda: sk_wiener(dimg.astype(np.float64), psf, 0.05, clip=False), repeat)
    table.add("wiener", "skimage", "float64 periodic", t_ref64)
    for padding, fast, dtype in (("none", True, "float32"), ("none", True, "float16"),
                                 ("reflect", True, "float32"), ("reflect", False, "float32")):
        wf = WienerFilter(shape, psf, 0.05, padding=padding, fast_len=fast, dtype=dtype)
        o = np.empty(shape, dtype)
        t = _timeit(lambda wf=wf, o=o: wf(dimg, out=o), repeat)
        table.add("wiener", "ours", f"{dtype} pad={padding} fast_len={fast}", t,
                  reference="float32 periodic",
                  accuracy={"rel_l2_vs_ref": _rel_l2(wf(dimg), sk_w),
                            "rel_l2_interior": _rel_l2(wf(dimg), sk_w, crop=16)})
    iters = (10,) if quick else (10, 30)
    for n_iter in iters:
        t_ref = _timeit(lambda n=n_iter: sk_rl(dimg, psf, n, clip=False), 1)
        table.add("richardson_lucy", "skimage", f"float32 iter={n_iter}", t_ref)
        sk_r = sk_rl(dimg, psf, n_iter, clip=False)
        if not quick:
            t_ref64 = _timeit(lambda n=n_iter: sk_rl(dimg.astype(np.float64), psf, n, clip=False), 1)
            sk_r64 = sk_rl(dimg.astype(np.float64), psf, n_iter, clip=False)
            table.add("richardson_lucy", "skimage", f"float64 iter={n_iter}", t_ref64,
                      accuracy={"rel_l2_vs_float32": _rel_l2(sk_r, sk_r64)})
        variants = [("zero", True, "float32"), ("zero", False, "float32"),
                    ("zero", True, "float16"), ("none", True, "float32"),
                    ("reflect", True, "float32")]
        for padding, fast, dtype in variants:
            rl = RichardsonLucy(shape, psf, n_iter, padding=padding, fast_len=fast, dtype=dtype)
            o = np.empty(shape, dtype)
            t = _timeit(lambda rl=rl, o=o: rl(dimg, out=o), 1)
            res = o.astype(np.float32)
            table.add("richardson_lucy", "ours", f"{dtype} iter={n_iter} pad={padding} "
                      f"fast_len={fast}", t, reference=f"float32 iter={n_iter}",
                      accuracy={"rel_l2_vs_ref": _rel_l2(res, sk_r),
                                "rel_l2_interior": _rel_l2(res, sk_r, crop=16)})

    # -- template, detection, chain ----------------------------------------------------------
    _progress("template and detection")
    cfg = ChainConfig()
    chain = TileChain(shape, cfg, dark=params.offset)
    t0 = time.perf_counter()
    for c in range(1, cfg.template_cycles + 1):
        chain.push(c, raw[c - 1])
    t_template = time.perf_counter() - t0
    template = chain.template
    det = ClusterDetector(shape)
    t = _timeit(lambda: det(template), repeat)
    found = det(template)
    thr = det.last_threshold

    def ref_detect() -> np.ndarray:
        bp = -ndi.gaussian_laplace(template, 0.9, mode="reflect")
        return peak_local_max(bp, min_distance=1, threshold_abs=thr, exclude_border=1)

    t_ref = _timeit(ref_detect, repeat)
    sk_peaks = ref_detect()
    det_acc_ref = _detection_scores(truth, sk_peaks[:, ::-1].astype(np.float64), shape)
    table.add("detect", "scipy+skimage", "gaussian_laplace+peak_local_max", t_ref,
              accuracy=det_acc_ref)
    table.add("detect", "ours", "LoG fft+peaks+otsu+sub-pixel", t,
              reference="gaussian_laplace+peak_local_max",
              accuracy=_detection_scores(truth, found, shape))
    bp_check = det.enhance(template).copy()
    same = {tuple(p) for p in find_peaks(bp_check, thr)} == {tuple(p) for p in sk_peaks}
    table.rows[-1]["accuracy"]["same_peaks_as_peak_local_max"] = float(same)

    _progress("extraction")
    positions = chain.positions
    frame_c = FlatFieldCorrector(shape, params.offset)(raw[cfg.template_cycles][0])
    t_ref = _timeit(lambda: ndi.map_coordinates(frame_c, [positions[:, 1], positions[:, 0]],
                                                order=1), repeat)
    table.add("extract", "scipy", "map_coordinates order=1", t_ref, per="frame")
    t = _timeit(lambda: extract_intensities(frame_c, positions, method="bilinear"), repeat)
    table.add("extract", "ours", "bilinear", t, reference="map_coordinates order=1")
    t = _timeit(lambda: extract_intensities(frame_c, positions, method="psf"), repeat)
    table.add("extract", "ours", "psf 5x5", t, reference="map_coordinates order=1")

    _progress(f"chain: {cycles} cycles, ours and the SciPy/scikit-image build")
    ours_res = []
    times = []
    outbuf = np.empty((positions.shape[0], 4), np.float32)
    for c in range(cfg.template_cycles + 1, n_cycles + 1):
        chain.process_cycle(c, raw[c - 1], out=outbuf)  # warm (plans, caches)
        t0 = time.perf_counter()
        r = chain.process_cycle(c, raw[c - 1])
        times.append(time.perf_counter() - t0)
        ours_res.append(r)
    t_ours = min(times)
    ref_chain = _ReferenceChain(shape, chain, params.offset)
    ref_res = []
    ref_times = []
    for c in range(cfg.template_cycles + 1, n_cycles + 1):
        t0 = time.perf_counter()
        ref_res.append(ref_chain.process_cycle(c, raw[c - 1]))
        ref_times.append(time.perf_counter() - t0)
    t_ref = min(ref_times)
    acc_ref = _chain_scores(inst, truth, positions, ref_res)
    acc_ours = _chain_scores(inst, truth, positions, ours_res)
    table.add("chain", "scipy+skimage", "per tile-cycle (4 frames)", t_ref, mpx=4 * mpx,
              per="tile-cycle", accuracy=acc_ref)
    table.add("chain", "ours", "per tile-cycle (4 frames)", t_ours, mpx=4 * mpx,
              reference="per tile-cycle (4 frames)", per="tile-cycle", accuracy=acc_ours)
    table.add("chain", "ours", "template: 4 cycles in, detection, their results", t_template,
              mpx=16 * mpx, per="tile")
    return {"size": size, "clusters": int(positions.shape[0]), "rows": table.rows}


def _detection_scores(truth: Any, found: np.ndarray, shape: tuple[int, int]) -> dict[str, float]:
    from scipy.spatial import cKDTree

    h, w = shape
    margin = 3.0
    inview = truth.in_view(shape, margin=margin)
    nn = cKDTree(truth.positions).query(truth.positions, 2)[0][:, 1]
    wanted = np.flatnonzero(inview & (nn >= 3.0))
    lo = truth.shifts[:4].min(axis=0) + truth.channel_offsets.min(axis=0)
    hi = truth.shifts[:4].max(axis=0) + truth.channel_offsets.max(axis=0)
    x, y = found[:, 0], found[:, 1]
    region = ((x + lo[0] >= margin) & (x + hi[0] <= w - 1 - margin)
              & (y + lo[1] >= margin) & (y + hi[1] <= h - 1 - margin))
    tree = cKDTree(found)
    d, j = tree.query(truth.positions[wanted], distance_upper_bound=1.5)
    hit = np.isfinite(d)
    # greedy one-to-one: a detection may serve one cluster only
    used: set[int] = set()
    ok = 0
    errs = []
    for dist, jj, h_ in zip(d, j, hit):
        if h_ and jj not in used:
            used.add(int(jj))
            ok += 1
            errs.append(dist)
    d2, _ = cKDTree(truth.positions).query(found[region], distance_upper_bound=1.5)
    return {"recall_resolvable": ok / max(len(wanted), 1),
            "precision": float(np.isfinite(d2).mean()) if len(d2) else 0.0,
            "median_err_px": float(np.median(errs)) if errs else float("nan")}


def _chain_scores(inst: Any, truth: Any, positions: np.ndarray, results: list[Any]
                  ) -> dict[str, float]:
    from scipy.spatial import cKDTree

    d, ti = cKDTree(truth.positions).query(positions, distance_upper_bound=1.0)
    ok = np.isfinite(d)
    sig = inst.cluster_signal(1101)
    calls, corr = [], []
    for r in results:
        inten = np.asarray(r.intensities)[ok]
        s = sig[ti[ok], r.cycle - 1, :] * inst.params.gain
        corr.append(np.corrcoef(inten.ravel(), s.ravel())[0, 1])
        calls.append((inten.argmax(axis=1) == truth.sequences[ti[ok], r.cycle - 1]).mean())
    drift_err = [np.abs(np.subtract(r.drift, truth.shifts[r.cycle - 1])).max() for r in results]
    return {"corr_with_truth_signal": float(np.mean(corr)),
            "argmax_call_accuracy": float(np.mean(calls)),
            "max_drift_err_px": float(np.max(drift_err))}


class _ReferenceChain:
    """The same per-cycle steps built from library calls: NumPy correction, scikit-image
    ``phase_cross_correlation`` per channel (upsample 20), a NumPy block-percentile
    background resized with scikit-image, and ``ndimage.map_coordinates`` sampling."""

    def __init__(self, shape: tuple[int, int], chain: Any, offset: float) -> None:
        self.shape = shape
        self.template = np.asarray(chain.template)
        self.positions = np.asarray(chain.positions)
        self.offsets = chain.offsets
        self.offset = offset
        self.block = chain.config.background_block

    def process_cycle(self, cycle: int, frames: np.ndarray) -> Any:
        import scipy.ndimage as ndi
        from skimage.registration import phase_cross_correlation
        from skimage.transform import resize

        from kernels.chain import CycleResult

        h, w = self.shape
        b = self.block
        imgs = [f.astype(np.float32) - np.float32(self.offset) for f in frames]
        est = []
        for k, im in enumerate(imgs):
            s = phase_cross_correlation(self.template, im, upsample_factor=20)[0]
            est.append((-s[1] - self.offsets[k][0], -s[0] - self.offsets[k][1]))
        drift = tuple(float(v) for v in np.median(np.asarray(est), axis=0))
        out = np.empty((len(self.positions), len(imgs)), np.float32)
        for k, im in enumerate(imgs):
            cells = im.reshape(h // b, b, w // b, b).swapaxes(1, 2).reshape(h // b, w // b, -1)
            grid = ndi.gaussian_filter(np.percentile(cells, 30, axis=-1), 1.0, mode="nearest")
            bg = resize(grid, self.shape, order=1, mode="edge", anti_aliasing=False)
            x = self.positions[:, 0] + drift[0] + self.offsets[k][0]
            y = self.positions[:, 1] + drift[1] + self.offsets[k][1]
            out[:, k] = ndi.map_coordinates(im - bg, [y, x], order=1)
        return CycleResult(cycle=cycle, intensities=out, drift=drift)


# ---------------------------------------------------------------------------------------------
# the GPU part (only where CuPy and a device are present)


def run_gpu(size: int, gpu_size: int, repeat: int, seed: int = 1) -> dict[str, Any]:
    from kernels.backend import cupy_available, get_backend

    ok, why = cupy_available()
    if not ok:
        return {"available": False, "reason": why}
    from kernels.chain import TileChain
    from kernels.synthetic import InstrumentParams, SyntheticInstrument

    be = get_backend("cupy")
    cp = be.xp
    res: dict[str, Any] = {"available": True, "device": cp.cuda.runtime.getDeviceProperties(0)[
        "name"].decode(errors="replace")}
    for s in sorted({size, gpu_size}):
        host = np.random.default_rng(seed).integers(0, 4000, (4, s, s), dtype=np.uint16)
        dev = cp.empty(host.shape, dtype=host.dtype)
        t = _timeit(lambda h=host, d=dev: d.set(h), repeat, be.synchronize)
        res[f"h2d_{s}"] = {"seconds_per_cycle": t, "gb_per_s": host.nbytes / t / 1e9}
    # the chain at generation-2 size: 4 template cycles, then timed cycles
    n_cycles = 8
    params = InstrumentParams(tile_shape=(gpu_size, gpu_size), layout="random", density=0.005,
                              n_cycles=n_cycles)
    inst = SyntheticInstrument(params, seed=seed)
    _progress(f"GPU: rendering {n_cycles} cycles of {gpu_size}x{gpu_size}")
    raw = [inst.render_cycle(1101, c) for c in range(1, n_cycles + 1)]
    chain = TileChain((gpu_size, gpu_size), dark=params.offset, xp=cp)
    for c in range(1, 5):
        chain.push(c, cp.asarray(raw[c - 1]))
    dev_frames = [cp.asarray(raw[c - 1]) for c in range(5, n_cycles + 1)]
    out = cp.empty((chain.positions.shape[0], 4), cp.float32)
    times = []
    for i, f in enumerate(dev_frames):
        chain.process_cycle(5 + i, f, out=out)
        be.synchronize()
        t0 = time.perf_counter()
        chain.process_cycle(5 + i, f, out=out)
        be.synchronize()
        times.append(time.perf_counter() - t0)
    t_cycle = min(times)
    h2d = res[f"h2d_{gpu_size}"]["seconds_per_cycle"]
    fps = 4 / t_cycle
    fps_with_h2d = 4 / (t_cycle + h2d)
    res["chain"] = {"size": gpu_size, "seconds_per_tile_cycle": t_cycle, "frames_per_s": fps,
                    "frames_per_s_incl_h2d": fps_with_h2d, "target_frames_per_s": 42.0,
                    "reaches_generation_2": bool(fps_with_h2d >= 42.0),
                    "headroom": fps_with_h2d / 42.0}
    return res


# ---------------------------------------------------------------------------------------------
# output


def format_table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores (FFT workers {m['fft_workers']}), "
             f"Linux {m['kernel']}; frames {result['cpu']['size']}x{result['cpu']['size']}, "
             f"{result['cpu']['clusters']} clusters", ""]
    lines.append(f"{'kernel':<16} {'impl':<14} {'variant':<44} {'ms':>9} {'Mpx/s':>8} "
                 f"{'per s':>7} {'x ref':>6}  accuracy")
    for r in result["cpu"]["rows"]:
        ratio = f"{r['ratio_vs_reference']:.2f}" if r["ratio_vs_reference"] else ""
        acc = ", ".join(f"{k}={_fmt(v)}" for k, v in r["accuracy"].items())
        lines.append(f"{r['kernel']:<16} {r['impl']:<14} {r['variant'][:44]:<44} {r['ms']:>9.1f} "
                     f"{r['mpx_per_s']:>8.1f} {r['per_s']:>7.2f} {ratio:>6}  {acc}")
    g = result["gpu"]
    lines.append("")
    if not g.get("available"):
        lines.append(f"GPU: not run ({g.get('reason')})")
    else:
        lines.append(f"GPU: {g['device']}")
        for k, v in g.items():
            if k.startswith("h2d_"):
                lines.append(f"  host-to-device {k[4:]}^2 x4 uint16: {v['seconds_per_cycle']*1e3:.2f} ms "
                             f"({v['gb_per_s']:.1f} GB/s)")
        c = g["chain"]
        lines.append(f"  chain at {c['size']}^2: {c['seconds_per_tile_cycle']*1e3:.1f} ms per tile-cycle, "
                     f"{c['frames_per_s']:.1f} frames/s ({c['frames_per_s_incl_h2d']:.1f} incl. transfer); "
                     f"generation 2 (42 frames/s): {'yes' if c['reaches_generation_2'] else 'NO'}, "
                     f"headroom x{c['headroom']:.2f}")
    return "\n".join(lines)


def _fmt(v: float) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
            return f"{v:.1e}"
        return f"{v:.4g}"
    return str(v)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=2048,
                        help="frame side in pixels, a multiple of 32 (default 2048)")
    parser.add_argument("--cycles", type=int, default=4,
                        help="cycles timed through the chain after the 4 template cycles (default 4)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed repetitions per fast kernel; the median is reported (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer knob variants (RL 10 iterations only, no float64 reference)")
    parser.add_argument("--gpu-size", type=int, default=5120,
                        help="frame side for the GPU chain check (default 5120, generation 2)")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU part even if CuPy runs")
    parser.add_argument("--json", type=Path, default=Path("out/bench-kernels.json"),
                        help="where to write the JSON (default out/bench-kernels.json)")


def run(args: argparse.Namespace) -> int:
    if args.size < 64 or args.size % 32:
        print(f"error: --size {args.size} must be a multiple of 32 and at least 64", file=sys.stderr)
        return 2
    if args.cycles < 1:
        print("error: --cycles must be at least 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result: dict[str, Any] = {"machine": _machine(),
                              "options": {"size": args.size, "cycles": args.cycles,
                                          "repeat": args.repeat, "quick": args.quick,
                                          "gpu_size": args.gpu_size, "no_gpu": args.no_gpu}}
    result["cpu"] = run_cpu(args.size, args.cycles, max(1, args.repeat), quick=args.quick)
    if args.no_gpu:
        result["gpu"] = {"available": False, "reason": "--no-gpu"}
    else:
        result["gpu"] = run_gpu(args.size, args.gpu_size, max(1, args.repeat))
    result["wall_s"] = time.perf_counter() - t0
    print(format_table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"\nJSON written to {args.json}")
    return 0
