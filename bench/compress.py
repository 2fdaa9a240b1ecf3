"""`om compress` against classic compressors on the Shakespeare validation text.

    python -m bench.compress [--checkpoint runs/cmp13-long-memory] [--file FILE] [--max-bytes N]
        [--block-size 4096] [--wave-rows 256] [--threads 1] [--no-write]

Text: FILE, else the checkpoint's own validation split (the bytes of its documents, the separators
between them dropped), cut to its first --max-bytes bytes if given. The checkpoint (a run folder
means its latest checkpoint) must use the bytes codec; the default is the 10-minute Shakespeare
model. For each of gzip -9, bzip2 -9, xz -9e and zstd --ultra -22 (bench/compressors.py; those not
installed are left out): the compressed size and bits/byte. For om compress (`om.compress`, as
the CLI runs it, on CPU in float32): the file's size (header included), bits/byte, and compress and
decompress speed, with the round trip checked byte for byte; and the model's own `om eval`
bits/byte on the same text read as one stream (no blocks, the whole text as context), which the
coded size approaches as blocks get longer. Writes the table to BENCHMARKS.md (section "compress")
unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_CHECKPOINT = "runs/cmp13-long-memory"


def validation_text(ckpt) -> bytes:
    """The bytes of a bytes-codec checkpoint's validation split, document separators dropped."""
    import numpy as np

    from om.evaluate import validation_inputs

    ids = np.asarray(validation_inputs(ckpt)[0].ids[:])
    return ids[ids < 256].astype(np.uint8).tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="checkpoint or run folder (bytes codec)")
    parser.add_argument("--file", type=Path, help="text to compress (default: the checkpoint's validation split)")
    parser.add_argument("--max-bytes", type=int, help="use only the first N bytes of the text")
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--wave-rows", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()

    import torch

    from bench.compressors import bits_per_byte
    from bench.report import machine, markdown_table, write_section
    from om.checkpoint import load_checkpoint
    from om.compress import compress_bytes, decompress_bytes, read_header
    from om.errors import OmUserError
    from om.evaluate import evaluate

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    try:
        ckpt = load_checkpoint(args.checkpoint, device="cpu")
        data = args.file.read_bytes() if args.file else validation_text(ckpt)
    except (OmUserError, OSError) as err:
        print(f"bench.compress: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.max_bytes is not None:
        data = data[: args.max_bytes]
    if not data:
        print("bench.compress: the text is empty", file=sys.stderr)
        raise SystemExit(2)
    n = len(data)
    source = str(args.file) if args.file else f"{ckpt.path} validation split"
    print(f"{source}: {n:,} bytes, checkpoint {ckpt.path}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "text"
        text_file.write_bytes(data)
        for name, bpb in bits_per_byte(text_file).items():
            if bpb is not None:
                rows.append([name, f"{round(bpb * n / 8):,}", f"{bpb:.3f}", "", ""])
                print(rows[-1], flush=True)

    t0 = time.perf_counter()
    blob = compress_bytes(ckpt, data, args.block_size, args.wave_rows, args.threads)
    t1 = time.perf_counter()
    restored = decompress_bytes(ckpt, blob, "bench")
    t2 = time.perf_counter()
    if restored != data:
        raise AssertionError("om compress round trip differs")  # decompress_bytes checks a sha256, so this never happens
    header, payload = read_header(blob)
    rows.append([f"om compress (block {args.block_size:,}, {args.threads} thread{'s' if args.threads != 1 else ''})",
                 f"{len(blob):,}", f"{8 * len(blob) / n:.3f}", f"{n / (t1 - t0):,.0f}", f"{n / (t2 - t1):,.0f}"])
    print(rows[-1], f"(header {len(blob) - len(payload)} bytes)", flush=True)

    with torch.inference_mode():
        result = evaluate(ckpt.model, ckpt.codec, [data], batch_size=1)
    eval_bpb = result.to_dict()["bits_per_byte"]
    rows.append(["om eval (one stream, for comparison)", f"{round(eval_bpb * n / 8):,}", f"{eval_bpb:.3f}", "", ""])
    print(rows[-1], flush=True)
    load_after = os.getloadavg()

    table = markdown_table(["compressor", "bytes", "bits/byte", "compress bytes/s", "decompress bytes/s"], rows)
    print(table)
    if not args.no_write:
        loads = "; ".join(", ".join(f"{x:.2f}" for x in load) for load in (load_before, load_after))
        command = "python -m bench.compress" + "".join(
            f" {flag} {value}" for flag, value in [("--checkpoint", args.checkpoint), ("--file", args.file),
                                                   ("--max-bytes", args.max_bytes), ("--block-size", args.block_size),
                                                   ("--wave-rows", args.wave_rows), ("--threads", args.threads)]
            if value is not None
        )
        write_section("compress", "## om compress vs classic compressors\n\n"
                      f"Machine: {machine()}; load average before and after: {loads}\n\n"
                      f"Command: `{command}`\n\n"
                      f"Text: {source}, {n:,} bytes. om compress sizes include its {len(blob) - len(payload)}-byte header; "
                      "its speeds are one process, the model already loaded. om eval: the model's bits/byte on the same "
                      "text read as one stream (what blocks of unlimited length would approach).\n\n" + table)


if __name__ == "__main__":
    main()
