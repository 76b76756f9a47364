"""``appliance simulate``: render a synthetic run (frames, truth, reference FASTA) into a folder."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

HELP = "render a synthetic sequencing run: frames per tile/cycle/channel, ground truth, reference FASTA"
DESCRIPTION = """\
Render a run of the synthetic 4-channel SBS flow-cell imager (docs/synthetic-instrument.md)
into OUT. The run is seeded and deterministic: the same options give the same bytes.

OUT/
  params.json                the InstrumentParams, seed, tiles and frame format
  reference.fa               the reference genome the reads were drawn from
  truth/<tile>.npz           positions (x, y), sequences (A,C,G,T = 0..3), brightness,
                             per-cycle shifts, channel offsets, genome_start, strand
  frames/<tile>/C<ccc>/<k>.npy   (H, W) uint16 frame of cycle ccc (1-based), channel k
                             (or .raw: little-endian uint16, shape in params.json)
  intensities/<tile>.npy     with --intensities: (N, cycles, 4) float32 per-cluster
                             intensities from the instrument's extraction model

examples:
  appliance simulate /tmp/run1                        1 tile, 256 x 256, 150 cycles
  appliance simulate /tmp/run2 --tiles 1101,1102 --cycles 25 --layout patterned
  appliance simulate /tmp/run3 --tile-size 2048 --cycles 4 --format raw --seed 7
  appliance simulate /tmp/run4 --cycles 150 --no-frames --intensities   base-calling data only
"""


def _tiles(text: str) -> list[int]:
    try:
        tiles = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tiles {text!r}: expected comma-separated ints, e.g. 1101,1102")
    if not tiles or any(t < 0 for t in tiles):
        raise argparse.ArgumentTypeError(f"--tiles {text!r}: expected non-negative tile numbers")
    return tiles


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT", help="output folder (created; must be empty unless --force)")
    parser.add_argument("--tiles", type=_tiles, default=[1101], metavar="T,T", help="tile numbers (default 1101)")
    parser.add_argument("--cycles", type=int, default=150, help="number of cycles (default 150)")
    parser.add_argument("--tile-size", type=int, default=256, metavar="PX", help="square tile size (default 256)")
    parser.add_argument("--layout", choices=("random", "patterned"), default="random")
    parser.add_argument("--density", type=float, default=0.005, help="clusters per px^2, random layout")
    parser.add_argument("--psf-sigma", type=float, default=1.2)
    parser.add_argument("--phasing", type=float, default=0.002)
    parser.add_argument("--prephasing", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("npy", "raw"), default="npy", help="frame file format")
    parser.add_argument("--no-frames", action="store_true", help="skip the frames (truth and FASTA only)")
    parser.add_argument("--intensities", action="store_true", help="also write per-cluster intensities")
    parser.add_argument("--force", action="store_true", help="write into a non-empty OUT")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _npy_bytes(array) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _npz_bytes(**arrays) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    from kernels.synthetic import InstrumentParams, SyntheticInstrument

    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"appliance simulate: {out} is not empty; choose another folder or pass --force", file=sys.stderr)
        return 2
    try:
        params = InstrumentParams(
            tile_shape=(args.tile_size, args.tile_size),
            layout=args.layout,
            density=args.density,
            psf_sigma=args.psf_sigma,
            n_cycles=args.cycles,
            phasing=args.phasing,
            prephasing=args.prephasing,
        )
        inst = SyntheticInstrument(params, seed=args.seed)
    except ValueError as exc:
        print(f"appliance simulate: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": 1,
        "seed": args.seed,
        "tiles": args.tiles,
        "frame_format": None if args.no_frames else args.format,
        "frame_dtype": "<u2",
        "frame_shape": list(params.tile_shape),
        "geometry": "positions (x, y) = (col, row) in cycle 1 / channel 0 pixels; frame of cycle c, "
        "channel k shows the scene translated by shifts[c-1] + channel_offsets[k]",
        "params": asdict(params),
    }
    _write_atomic(out / "params.json", (json.dumps(meta, indent=2) + "\n").encode())
    inst.write_reference_fasta(out / "reference.fa")
    for tile in args.tiles:
        t = inst.truth(tile)
        _write_atomic(
            out / "truth" / f"{tile}.npz",
            _npz_bytes(
                positions=t.positions,
                sequences=t.sequences,
                brightness=t.brightness,
                shifts=t.shifts,
                channel_offsets=t.channel_offsets,
                genome_start=t.genome_start,
                strand=t.strand,
            ),
        )
        if args.intensities:
            _write_atomic(out / "intensities" / f"{tile}.npy", _npy_bytes(inst.cluster_intensities(tile)))
        if args.no_frames:
            continue
        for cycle in range(1, params.n_cycles + 1):
            for channel in range(4):
                frame = inst.render(tile, cycle, channel)
                folder = out / "frames" / str(tile) / f"C{cycle:03d}"
                if args.format == "npy":
                    _write_atomic(folder / f"{channel}.npy", _npy_bytes(frame))
                else:
                    _write_atomic(folder / f"{channel}.raw", frame.astype("<u2").tobytes())
        print(f"tile {tile}: {t.n_clusters} clusters, {params.n_cycles} cycles x 4 channels")
    print(f"wrote {out}")
    return 0
