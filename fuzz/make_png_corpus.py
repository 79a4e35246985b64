#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_png to fuzz/corpus_png/: tiny valid PNGs of every colour type
and bit-depth family (gray 1/8/16-bit, gray + alpha, RGB 8/16-bit, RGBA, palette with tRNS,
Adam7 interlaced, all five row filters) and a few broken ones (cut short, bad CRC, bad zlib
stream, no IEND, a header larger than its data). Deterministic: rerunning gives the same files."""
import pathlib
import random
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
OUT = pathlib.Path(__file__).resolve().parent / "corpus_png"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: first column, first row, column step, row step.
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ihdr(width, height, depth, colour, interlace=0):
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))


def png(width, height, depth, colour, rows, interlace=0, before_idat=b""):
    """rows: the filtered scanlines (filter byte first), concatenated."""
    return (SIGNATURE + ihdr(width, height, depth, colour, interlace) + before_idat +
            chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def samples(rng, width, height, depth, colour):
    """One row of packed bytes per image row, without filter bytes."""
    row_bytes = (width * CHANNELS[colour] * depth + 7) // 8
    return [bytes(rng.randrange(256) for _ in range(row_bytes)) for _ in range(height)]


def filtered(rows, filters=(0,)):
    return b"".join(bytes([filters[y % len(filters)]]) + row for y, row in enumerate(rows))


def adam7(rows, width, height, pixel_bytes):
    """The passes of a byte-aligned image, each row with filter 0."""
    out = b""
    for x0, y0, dx, dy in ADAM7:
        for y in range(y0, height, dy):
            pixels = [rows[y][x * pixel_bytes:(x + 1) * pixel_bytes] for x in range(x0, width, dx)]
            if pixels:
                out += b"\x00" + b"".join(pixels)
    return out


def main():
    rng = random.Random(12)
    OUT.mkdir(exist_ok=True)
    files = {}
    for name, (w, h, depth, colour) in {
        "valid_gray8": (5, 3, 8, 0), "valid_gray1": (9, 2, 1, 0), "valid_gray16": (3, 2, 16, 0),
        "valid_gray_alpha": (3, 3, 8, 4), "valid_rgb8": (4, 3, 8, 2), "valid_rgb16": (2, 2, 16, 2),
        "valid_rgba8": (3, 2, 8, 6), "valid_rgba16": (2, 1, 16, 6),
    }.items():
        files[name] = png(w, h, depth, colour, filtered(samples(rng, w, h, depth, colour)))
    palette = chunk(b"PLTE", bytes(rng.randrange(256) for _ in range(4 * 3)))
    files["valid_palette2_trns"] = png(6, 3, 2, 3, filtered(samples(rng, 6, 3, 2, 3)),
                                       before_idat=palette + chunk(b"tRNS", b"\x00\x80"))
    files["valid_gray_trns"] = png(4, 2, 8, 0, filtered(samples(rng, 4, 2, 8, 0)),
                                   before_idat=chunk(b"tRNS", b"\x00\x07"))
    files["valid_filters"] = png(6, 5, 8, 2, filtered(samples(rng, 6, 5, 8, 2), (0, 1, 2, 3, 4)))
    rgb = samples(rng, 7, 5, 8, 2)
    files["valid_interlaced_rgb8"] = png(7, 5, 8, 2, adam7(rgb, 7, 5, 3), interlace=1)
    files["valid_text_chunk"] = png(2, 2, 8, 0, filtered(samples(rng, 2, 2, 8, 0)),
                                    before_idat=chunk(b"tEXt", b"Comment\x00attnlens"))

    good = files["valid_gray8"]
    files["broken_truncated_idat"] = good[:45]
    files["broken_no_iend"] = good[:-12]
    files["broken_crc"] = good[:-1] + bytes([good[-1] ^ 1])  # IEND's CRC
    files["broken_zlib"] = (SIGNATURE + ihdr(2, 2, 8, 0) + chunk(b"IDAT", b"\x78\x9c\xff\xff\xff") +
                            chunk(b"IEND", b""))
    files["broken_bomb_header"] = (SIGNATURE + ihdr(1000, 1000, 8, 0) +
                                   chunk(b"IDAT", zlib.compress(b"\x00" * 64, 9)) + chunk(b"IEND", b""))
    files["broken_signature_only"] = SIGNATURE
    for name, data in files.items():
        (OUT / (name + ".png")).write_bytes(data)


if __name__ == "__main__":
    main()
