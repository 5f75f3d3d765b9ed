"""The two sample images of the demo, drawn by this module (no third-party content).

* ``mozi-logo.png`` — 256×64 RGB, a logo in the spirit of the China–Russia test image: the
  characters 墨子 ("Mozi") and the word MICIUS in the project's own pixel font, a satellite
  linking two ground stations, a starry sky. Small enough for the one-time pad.
* ``mozi-map.png`` — 1024×768 RGB, a synthetic map (fractal value-noise terrain, graticule,
  two stations joined by the satellite's ground track): larger than a pass's key, so it is
  encrypted with AES-256-GCM.

Everything is computed with numpy from fixed seeds, so :func:`logo_image` and
:func:`map_image` return the same pixels on every machine; the committed PNG files in
``host/assets/`` are checked against them by the tests. Regenerate them with
``python -m mozi.host.sample_images [DIRECTORY]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

__all__ = ["ASSETS", "SAMPLES", "logo_image", "map_image", "sample_path", "write_samples"]

#: Folder of the committed sample images.
ASSETS = Path(__file__).resolve().parent / "assets"

_FONT = {
    "A": ".###.#...##...#######...##...##...#", "C": ".#####....#....#....#....#.....####",
    "D": "####.#...##...##...##...##...#####.", "E": "######....#....####.#....#....#####",
    "G": ".#####....#....#..###...##...#.###.",  "H": "#...##...##...#######...##...##...#",
    "I": ".###...#....#....#....#....#...###.", "K": "#...##..#.#.#..##...#.#..#..#.#...#",
    "L": "#....#....#....#....#....#....#####", "M": "#...###.###.#.##.#.##...##...##...#",
    "N": "#...###..##.#.##..###...##...##...#", "O": ".###.#...##...##...##...##...#.###.",
    "P": "####.#...##...#####.#....#....#....", "Q": ".###.#...##...##...##.#.##..#..##.#",
    "R": "####.#...##...#####.#.#..#..#.#...#", "S": ".#####....#.....###.....#....#####.",
    "T": "#####..#....#....#....#....#....#..", "U": "#...##...##...##...##...##...#.###.",
    "W": "#...##...##...##.#.##.#.##.#.#.#.#.", "Y": "#...##...#.#.#...#....#....#....#..",
    "Z": "#####....#...#...#...#...#....#####", " ": "." * 35,
    "0": ".###.#...##..###.#.###..##...#.###.", "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#...#####", "7": "#####....#...#...#....#....#....#..",
    "-": "...............#####...............",
}

# 16×16 pixel drawings of 墨 (ink: 黑 over 土) and 子 (child), drawn for this project.
_HANZI = {
    "墨": [".##############.", ".#....#..#....#.", ".#..#.#..#.#..#.", ".#...##..##...#.",
          ".##############.", ".......##.......", ".##############.", ".......##.......",
          "################", ".#...#....#...#.", "#...#......#...#", ".......##.......",
          "...##########...", ".......##.......", ".......##.......", "################"],
    "子": ["..############..", "............##..", "...........##...", "..........##....",
          "........##......", ".......##.......", "################", ".......##.......",
          ".......##.......", ".......##.......", ".......##.......", ".......##.......",
          ".......##.......", ".......##.......", ".....####.......", "......##........"],
}


def _glyph(ch: str) -> np.ndarray:
    if ch in _HANZI:
        rows = _HANZI[ch]
        return np.array([[c == "#" for c in r] for r in rows], bool)
    pattern = _FONT[ch.upper()]
    pattern = pattern.ljust(35, ".")[:35]
    return np.array([c == "#" for c in pattern], bool).reshape(7, 5)


def _text(img: np.ndarray, text: str, x: int, y: int, scale: int, colour) -> None:
    """Draw ``text`` with its top-left corner at (x, y), ``scale`` pixels per font pixel."""
    for ch in text:
        g = np.kron(_glyph(ch), np.ones((scale, scale), bool))
        h, w = g.shape
        region = img[y:y + h, x:x + w]
        region[g[:region.shape[0], :region.shape[1]]] = colour
        x += w + scale


def _label(img: np.ndarray, text: str, x: int, y: int, scale: int, colour) -> None:
    """Text with a one-font-pixel dark outline, readable on any background."""
    for dx in (-scale, 0, scale):
        for dy in (-scale, 0, scale):
            if dx or dy:
                _text(img, text, x + dx, y + dy, scale, (10, 10, 20))
    _text(img, text, x, y, scale, colour)


def _disc(img: np.ndarray, cx: float, cy: float, r: float, colour) -> None:
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = colour


def _line(img: np.ndarray, x0, y0, x1, y1, colour, width: float = 1.0, dash: int = 0) -> None:
    n = int(max(abs(x1 - x0), abs(y1 - y0)) * 2) + 1
    t = np.linspace(0.0, 1.0, n)
    xs, ys = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
    if dash:
        keep = (np.arange(n) // (2 * dash)) % 2 == 0
        xs, ys = xs[keep], ys[keep]
    _dots(img, xs, ys, colour, width)


def _dots(img, xs, ys, colour, width):
    r = int(np.ceil(width / 2))
    for dx in range(-r + 1, r + 1) if r > 1 else (0,):
        for dy in range(-r + 1, r + 1) if r > 1 else (0,):
            xi = np.rint(xs).astype(int) + dx
            yi = np.rint(ys).astype(int) + dy
            ok = (xi >= 0) & (xi < img.shape[1]) & (yi >= 0) & (yi < img.shape[0])
            img[yi[ok], xi[ok]] = colour


def logo_image() -> np.ndarray:
    """The 256×64 logo, as a ``(64, 256, 3)`` uint8 RGB array."""
    h, w = 64, 256
    yy = np.arange(h, dtype=np.float64)[:, None]
    img = np.empty((h, w, 3), np.uint8)
    # night-sky gradient
    img[..., 0] = (8 + 20 * yy / h).astype(np.uint8)
    img[..., 1] = (14 + 30 * yy / h).astype(np.uint8)
    img[..., 2] = (40 + 60 * yy / h).astype(np.uint8)
    rng = np.random.default_rng(1721)
    for x, y, b in zip(rng.integers(0, w, 60), rng.integers(0, 40, 60),
                       rng.integers(120, 256, 60), strict=True):
        img[y, x] = (b, b, min(255, b + 20))
    # ground, two stations and the satellite with its two beams
    img[56:, :] = (30, 60, 30)
    sat = (200, 12)
    for gx in (150, 244):
        _line(img, sat[0], sat[1] + 3, gx, 54, (120, 200, 255), dash=2)
        img[50:56, gx - 3:gx + 4] = (220, 220, 220)
        img[48:50, gx - 1:gx + 2] = (220, 220, 220)
    img[9:16, sat[0] - 3:sat[0] + 4] = (230, 190, 60)
    img[11:14, sat[0] - 14:sat[0] - 4] = (80, 120, 230)
    img[11:14, sat[0] + 5:sat[0] + 15] = (80, 120, 230)
    # 墨子 in red, MICIUS and QKD in white
    x = 6
    for ch in "墨子":
        g = np.kron(_glyph(ch), np.ones((3, 3), bool))
        img[6:6 + g.shape[0], x:x + g.shape[1]][g] = (220, 40, 40)
        x += g.shape[1] + 4
    _text(img, "MICIUS", 112, 26, 2, (245, 245, 245))
    _text(img, "QKD 2017", 6, 56, 1, (255, 230, 120))
    return img


def _value_noise(rng, h: int, w: int, octaves: int = 6) -> np.ndarray:
    out = np.zeros((h, w))
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 3 * 2 ** o
        grid = rng.random((cells + 2, cells + 2))
        ys = np.linspace(0, cells, h, endpoint=False)
        xs = np.linspace(0, cells, w, endpoint=False)
        y0, x0 = ys.astype(int), xs.astype(int)
        fy, fx = ys - y0, xs - x0
        fy = fy * fy * (3 - 2 * fy)
        fx = fx * fx * (3 - 2 * fx)
        g00 = grid[np.ix_(y0, x0)]
        g01 = grid[np.ix_(y0, x0 + 1)]
        g10 = grid[np.ix_(y0 + 1, x0)]
        g11 = grid[np.ix_(y0 + 1, x0 + 1)]
        top = g00 + (g01 - g00) * fx[None, :]
        bottom = g10 + (g11 - g10) * fx[None, :]
        out += amp * (top + (bottom - top) * fy[:, None])
        total += amp
        amp *= 0.5
    return out / total


def map_image() -> np.ndarray:
    """The 1024×768 synthetic map, as a ``(768, 1024, 3)`` uint8 RGB array."""
    h, w = 768, 1024
    rng = np.random.default_rng(20171201)
    elev = _value_noise(rng, h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    # one east-west continent across the middle, ocean to the north and south
    elev = elev + 0.12 - 0.35 * ((yy - h * 0.45) / (h / 2)) ** 2 \
        - 0.10 * ((xx - w / 2) / (w / 2)) ** 4
    levels = np.array([0.30, 0.36, 0.40, 0.47, 0.56, 0.66])
    palette = np.array([(16, 42, 110), (30, 80, 160), (220, 205, 150), (70, 140, 60),
                        (40, 105, 45), (130, 110, 80), (240, 240, 245)], np.uint8)
    img = palette[np.searchsorted(levels, elev)]
    # hill shading from the elevation gradient
    gy, gx = np.gradient(elev)
    shade = np.clip(1.0 + 25.0 * (gx - gy), 0.7, 1.25)
    land = elev >= levels[1]
    img = np.where(land[..., None], np.clip(img * shade[..., None], 0, 255), img)
    img = img.astype(np.uint8)
    # graticule
    for x in range(0, w, 128):
        img[:, x, :] = (img[:, x, :] * 0.6 + 100).astype(np.uint8)
    for y in range(0, h, 128):
        img[y, :, :] = (img[y, :, :] * 0.6 + 100).astype(np.uint8)
    # the satellite's ground track (a sinusoid) and the two stations it links
    t = np.linspace(0, w - 1, 4 * w)
    track = h / 2 + 220 * np.sin(2 * np.pi * (t / w) * 0.8 + 0.6)
    _dots(img, t, track, (250, 220, 40), 3)
    stations = {"MOSCOW": (180, 410), "URUMQI": (780, 380)}
    for name, (sx, sy) in stations.items():
        _disc(img, sx, sy, 9, (200, 20, 20))
        _disc(img, sx, sy, 4, (255, 255, 255))
        _label(img, name, sx + 14, sy - 7, 2, (255, 255, 255))
        j = int(np.argmin(np.abs(t - sx)))
        _line(img, sx, sy, t[j], track[j], (255, 255, 255), width=1, dash=4)
    _label(img, "MOZI", 20, 20, 5, (255, 255, 255))
    _label(img, "SYNTHETIC MAP - NOT TO SCALE", 20, 62, 2, (255, 255, 255))
    return img


#: Sample images by file name: generator, description.
SAMPLES = {
    "mozi-logo.png": (logo_image, "256x64 logo (one-time pad sized)"),
    "mozi-map.png": (map_image, "1024x768 synthetic map (AES-256-GCM sized)"),
}


def sample_path(name: str) -> Path:
    """Path of a committed sample image (a key of :data:`SAMPLES`)."""
    if name not in SAMPLES:
        raise KeyError(f"no sample image {name!r}; have {sorted(SAMPLES)}")
    return ASSETS / name


def write_samples(directory=ASSETS) -> list[Path]:
    """Render every sample image to ``directory`` as PNG (each written atomically).

    Returns
    -------
    paths : list of Path
    """
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (make, _) in SAMPLES.items():
        path = directory / name
        tmp = path.with_name(f".{name}.tmp")
        Image.fromarray(make(), "RGB").save(tmp, format="PNG", optimize=True)
        tmp.replace(path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_samples(sys.argv[1] if len(sys.argv) > 1 else ASSETS):
        print(p, p.stat().st_size, "bytes")
