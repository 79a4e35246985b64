#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_idx to fuzz/corpus_idx/: tiny valid IDX files (labels, images,
other ranks, an empty array), plain and gzip (one and two members), and a few broken ones (cut
short, trailing bytes, a float type, a bomb header, a bad CRC). Deterministic: rerunning gives
the same files (gzip with mtime 0)."""
import gzip
import pathlib
import struct

OUT = pathlib.Path(__file__).resolve().parent / "corpus_idx"


def idx(extents, data, kind=0x08):
    return bytes([0, 0, kind, len(extents)]) + b"".join(struct.pack(">I", e) for e in extents) + data


def gz(data):
    return gzip.compress(data, compresslevel=9, mtime=0)


def counting(n):
    return bytes((37 * i + 11) % 256 for i in range(n))


def main():
    OUT.mkdir(exist_ok=True)
    labels = idx([6], bytes([9, 0, 0, 3, 0, 2]))
    images = idx([2, 4, 4], counting(32))
    files = {
        "valid_labels.idx": labels,
        "valid_labels_out_of_range.idx": idx([3], bytes([1, 10, 255])),
        "valid_images.idx": images,
        "valid_rank2.idx": idx([3, 5], counting(15)),
        "valid_rank4.idx": idx([1, 2, 2, 2], counting(8)),
        "valid_empty.idx": idx([0, 28, 28], b""),
        "valid_labels.idx.gz": gz(labels),
        "valid_images.idx.gz": gz(images),
        "valid_two_members.idx.gz": gz(images[:9]) + gz(images[9:]),
        "broken_truncated.idx": images[:-5],
        "broken_trailing.idx": labels + b"\x00",
        "broken_float.idx": idx([2], struct.pack(">ff", 0.5, 1.0), kind=0x0D),
        "broken_bomb.idx.gz": gz(idx([1000, 1000], b"")),  # within fuzz_idx's 1 MiB limit
        "broken_truncated.idx.gz": gz(images)[:-3],
    }
    bad_crc = bytearray(gz(labels))
    bad_crc[-6] ^= 1
    files["broken_crc.idx.gz"] = bytes(bad_crc)
    for name, data in files.items():
        (OUT / name).write_bytes(data)


if __name__ == "__main__":
    main()
