"""A tiny 5x7 bitmap font for burning "SYNTHETIC" into image pixels (numpy only)."""

from __future__ import annotations

import numpy as np

_GLYPHS: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "N": ("#...#", "##..#", "##..#", "#.#.#", "#..##", "#..##", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
    " ": (".....", ".....", ".....", ".....", ".....", ".....", "....."),
}
GLYPH_W, GLYPH_H = 5, 7


def text_bitmap(text: str, scale: int = 1) -> np.ndarray:
    """Boolean bitmap (rows, columns) of ``text`` (letters of "SYNTHETIC LAND", space, hyphen), 1 px apart."""
    unknown = sorted({c for c in text.upper() if c not in _GLYPHS})
    if unknown:
        raise ValueError(f"the burn-in font has no glyph for {''.join(unknown)!r}")
    cols = []
    for i, ch in enumerate(text.upper()):
        if i:
            cols.append(np.zeros((GLYPH_H, 1), bool))
        cols.append(np.array([[c == "#" for c in row] for row in _GLYPHS[ch]], bool))
    bitmap = np.concatenate(cols, axis=1) if cols else np.zeros((GLYPH_H, 0), bool)
    return np.kron(bitmap, np.ones((scale, scale), bool)).astype(bool)


def burn_text(
    image: np.ndarray, text: str, value: float, shadow: float, scale: int = 1, margin: int = 2
) -> np.ndarray:
    """Draw ``text`` into the top-left corner of a 2D ``image`` in place: ``value`` with a one-pixel
    ``shadow`` outline (readable on any background). Parts that do not fit are clipped. Returns the mask of
    changed pixels."""
    glyph = text_bitmap(text, scale)
    h, w = glyph.shape
    outline = np.zeros((h + 2, w + 2), bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            outline[dy : dy + h, dx : dx + w] |= glyph
    canvas = np.zeros(image.shape, bool)
    ink = np.zeros(image.shape, bool)
    y0, x0 = margin - 1, margin - 1
    rows, cols = image.shape
    hh, ww = min(h + 2, rows - max(y0, 0)), min(w + 2, cols - max(x0, 0))
    if hh <= 0 or ww <= 0:
        return canvas
    canvas[y0 : y0 + hh, x0 : x0 + ww] = outline[:hh, :ww]
    inner = np.zeros((h + 2, w + 2), bool)
    inner[1:-1, 1:-1] = glyph
    ink[y0 : y0 + hh, x0 : x0 + ww] = inner[:hh, :ww]
    image[canvas & ~ink] = shadow
    image[ink] = value
    return canvas
