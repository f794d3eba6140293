"""A small JPEG Lossless (Process 14, Selection Value 1) encoder for synthetic DICOM.

pydicom ships decoders for this transfer syntax (1.2.840.10008.1.2.4.70, what many PACS export)
but no encoder, so the synthetic cohort writes it with this one: ITU-T T.81 Annex H, predictor 1
(Ra, the left neighbour), one Huffman table built from the frame's own category histogram
(Annex K.2). Test-data generation only: the engine reads such files through pylibjpeg.
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode_sv1"]


def _sv1_differences(samples: np.ndarray, precision: int) -> tuple[np.ndarray, np.ndarray]:
    """Prediction differences (modulo 2**16, in [-32768, 32767]) and their SSSS categories (H.1.2).

    The first row predicts from Ra, the first column of each later row from Rb (above), the first
    sample from 2**(P-1).
    """
    predicted = np.empty_like(samples)
    predicted[0, 0] = 1 << (precision - 1)
    predicted[0, 1:] = samples[0, :-1]
    predicted[1:, 0] = samples[:-1, 0]
    predicted[1:, 1:] = samples[1:, :-1]
    diff = (samples - predicted) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff)
    magnitude = np.abs(diff)
    category = np.zeros_like(magnitude)
    nonzero = magnitude > 0
    category[nonzero] = np.floor(np.log2(magnitude[nonzero])).astype(np.int64) + 1
    # -32768 is coded as category 16 with no extra bits (H.1.2.2)
    category = np.where(diff == -32768, 16, category)
    return diff, category


def _code_sizes(freq: list[int]) -> list[int]:
    """Huffman code size of each of the 18 symbols (17 categories + one reserved), Figure K.1."""
    code_size = [0] * 18
    others = [-1] * 18
    freq = list(freq)
    while True:
        v1 = -1
        for i in range(18):
            if freq[i] > 0 and (v1 < 0 or freq[i] <= freq[v1]):
                v1 = i
        v2 = -1
        for i in range(18):
            if i != v1 and freq[i] > 0 and (v2 < 0 or freq[i] <= freq[v2]):
                v2 = i
        if v2 < 0:
            return code_size
        freq[v1] += freq[v2]
        freq[v2] = 0
        code_size[v1] += 1
        while others[v1] >= 0:
            v1 = others[v1]
            code_size[v1] += 1
        others[v1] = v2
        code_size[v2] += 1
        while others[v2] >= 0:
            v2 = others[v2]
            code_size[v2] += 1


def _limited_bits(code_size: list[int]) -> list[int]:
    """BITS (codes per length), limited to 16 bits and without the reserved point (Figure K.3)."""
    bits = [0] * 33
    for size in code_size:
        if size:
            bits[size] += 1
    i = 32
    while i > 16:
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
        i -= 1
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # drop the reserved code point
    return bits


def _huffman_table(category: np.ndarray) -> tuple[list[int], list[int], dict[int, int], dict[int, int]]:
    """(BITS, HUFFVAL, code of each category, size of each category): Annex K.2 then Annex C."""
    freq = np.bincount(category.ravel(), minlength=17).astype(np.int64).tolist() + [1]  # 17 = reserved
    code_size = _code_sizes(freq)
    bits = _limited_bits(code_size)
    huffval = [value for size in range(1, 33) for value in range(17) if code_size[value] == size]
    huffsize = [length for length in range(1, 17) for _ in range(bits[length])]
    codes = []
    code = 0
    size = huffsize[0] if huffsize else 0
    k = 0
    while k < len(huffsize):
        while k < len(huffsize) and huffsize[k] == size:
            codes.append(code)
            code += 1
            k += 1
        code <<= 1
        size += 1
    return bits, huffval, dict(zip(huffval, codes, strict=True)), dict(zip(huffval, huffsize, strict=True))


def _entropy_coded(diff: np.ndarray, category: np.ndarray, codes: dict[int, int], sizes: dict[int, int]) -> bytes:
    """Per sample, the Huffman code of its category then ``category`` extra bits; padded and stuffed."""
    cat = category.ravel()
    d = diff.ravel()
    code_of = np.zeros(17, dtype=np.int64)
    size_of = np.zeros(17, dtype=np.int64)
    for value, code in codes.items():
        code_of[value] = code
        size_of[value] = sizes[value]
    extra_bits = np.where(d >= 0, d, d + (1 << cat) - 1) & ((1 << cat) - 1)
    extra_bits = np.where(cat == 16, 0, extra_bits)
    extra_len = np.where(cat == 16, 0, cat)
    words = (code_of[cat] << extra_len) | extra_bits
    lengths = size_of[cat] + extra_len
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    bit_array = np.zeros(total + 7, dtype=np.uint8)
    for b in range(int(lengths.max()) if lengths.size else 0):  # MSB first
        has = lengths > b
        bit_array[starts[has] + b] = (words[has] >> (lengths[has] - 1 - b)) & 1
    pad = (-total) % 8
    bit_array[total:total + pad] = 1  # pad with 1-bits (F.1.2.3)
    return np.packbits(bit_array[:total + pad]).tobytes().replace(b"\xff", b"\xff\x00")  # byte stuffing


def encode_sv1(frame: np.ndarray, precision: int) -> bytes:
    """Encode one 2-D frame as a JPEG Lossless SV1 bit stream (SOI ... EOI).

    Parameters
    ----------
    frame : (Y, X) ndarray of unsigned stored values, < 2**precision
    precision : int
        Sample precision P (2..16).
    """
    samples = frame.astype(np.int64)
    rows, cols = samples.shape
    diff, category = _sv1_differences(samples, precision)
    bits, huffval, codes, sizes = _huffman_table(category)
    scan = _entropy_coded(diff, category, codes, sizes)

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof = bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    dht = bytes([0x00]) + bytes(bits[1:17]) + bytes(huffval)
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns=1, Cs=1 Td=0, Ss=predictor 1, Se=0, Ah/Al=0
    return b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos) + scan + b"\xff\xd9"
