"""Props for the procedural dashcam scenes: vehicles, people, signs, street furniture, roadwork.

Every prop is drawn at its ground contact point ``(x, y)`` in pixels with ``s`` pixels per metre
(the perspective scale at its depth ``z``) and returns its bounding box. Colours go through
:meth:`Light.shade` (ambient light, night, fog and haze by depth), so the same prop looks right at
noon, at dusk, at night or in fog. :mod:`natix_miner.synth.scenes` composes them.

Usage::

    from PIL import Image, ImageDraw
    from natix_miner.synth.scene_props import Light, Painter, cone
    im = Image.new("RGB", (640, 360)); p = Painter(ImageDraw.Draw(im, "RGBA"), Light(), rng)
    box = cone(p, 320, 300, s=40.0, z=20.0)
"""

import dataclasses
import math
import typing

import numpy as np
from PIL import ImageDraw, ImageFont

RGB = typing.Tuple[int, int, int]
Box = typing.Tuple[float, float, float, float]

ORANGE = (255, 96, 10)
RED = (205, 25, 30)
WHITE = (238, 238, 232)
YELLOW = (250, 200, 20)
HIVIS_YELLOW = (205, 255, 40)
HIVIS_ORANGE = (255, 110, 20)
BLACK = (22, 22, 24)
CAR_COLOURS: typing.List[RGB] = [
    (235, 235, 235), (200, 202, 205), (120, 124, 130), (30, 30, 34), (20, 40, 90), (150, 20, 25),
    (205, 40, 30), (230, 110, 20), (245, 195, 25), (40, 90, 50), (110, 70, 40), (60, 100, 160),
]


@dataclasses.dataclass
class Light:
    """Global lighting: ambient multiplier, night, fog colour and extinction per metre."""

    ambient: typing.Tuple[float, float, float] = (1.0, 1.0, 1.0)
    night: bool = False
    fog_rgb: RGB = (200, 205, 210)
    fog_k: float = 0.002

    def shade(self, rgb: typing.Sequence[float], z: float, emissive: bool = False,
              reflective: bool = False, alpha: int = 255) -> typing.Tuple[int, int, int, int]:
        if emissive:
            m = (1.0, 1.0, 1.0)
        elif reflective and self.night and z < 60:
            boost = 0.35 + 0.5 * (1 - z / 60)
            m = tuple(max(a, boost) for a in self.ambient)
        else:
            m = self.ambient
        f = 1.0 - math.exp(-self.fog_k * max(z, 0.0))
        if emissive:
            f *= 0.5
        c = [rgb[i] * m[i] * (1 - f) + self.fog_rgb[i] * f for i in range(3)]
        return (int(min(255, max(0, c[0]))), int(min(255, max(0, c[1]))), int(min(255, max(0, c[2]))), alpha)


class Painter:
    """ImageDraw (RGBA blending) + light + rng, shared by every prop."""

    def __init__(self, draw: ImageDraw.ImageDraw, light: Light, rng: np.random.Generator):
        self.d = draw
        self.light = light
        self.rng = rng
        self._fonts: typing.Dict[int, ImageFont.ImageFont] = {}

    def c(self, rgb, z, **kw):
        return self.light.shade(rgb, z, **kw)

    def font(self, px: float):
        size = int(max(6, min(120, px)))
        if size not in self._fonts:
            try:
                self._fonts[size] = ImageFont.load_default(size=size)
            except Exception:  # pragma: no cover - Pillow without FreeType
                self._fonts[size] = ImageFont.load_default()
        return self._fonts[size]

    def jitter(self, rgb: RGB, amount: float = 12) -> RGB:
        n = self.rng.normal(0, amount, 3)
        return tuple(int(min(255, max(0, rgb[i] + n[i]))) for i in range(3))

    def glow(self, x: float, y: float, r: float, rgb: RGB, strength: float = 0.5) -> None:
        """A soft light halo (night lamps, beacons)."""
        for k, a in ((3.0, 0.05), (2.4, 0.07), (1.9, 0.1), (1.5, 0.14), (1.15, 0.2), (0.85, 0.5)):
            rr = r * k
            self.d.ellipse((x - rr, y - rr, x + rr, y + rr), fill=rgb + (int(255 * a * strength),))

    def text(self, x: float, y: float, txt: str, px: float, fill) -> None:
        if px < 5:
            return
        f = self.font(px)
        self.d.text((x, y), txt, font=f, fill=fill, anchor="mm")


def _box(x0, y0, x1, y1) -> Box:
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def shadow(p: Painter, x: float, y: float, w: float, s: float) -> None:
    a = 90 if not p.light.night else 50
    p.d.ellipse((x - w * 0.6, y - 0.12 * s, x + w * 0.6, y + 0.1 * s), fill=(0, 0, 0, a))


# ------------------------------------------------------------------------------------------------
# roadwork


def cone(p: Painter, x, y, s, z, colour: RGB = ORANGE, height_m: float = 0.75) -> Box:
    h, w = height_m * s, 0.42 * s
    col = p.jitter(colour, 10)
    p.d.rectangle((x - w / 2, y - 0.06 * s, x + w / 2, y), fill=p.c(BLACK, z))
    top_w = w * 0.12
    p.d.polygon([(x - w * 0.38, y - 0.05 * s), (x + w * 0.38, y - 0.05 * s), (x + top_w, y - h), (x - top_w, y - h)],
                fill=p.c(col, z, reflective=True))
    for f0, f1 in ((0.45, 0.6), (0.7, 0.8)):
        def wd(f):
            return w * 0.38 + (top_w - w * 0.38) * f
        p.d.polygon([(x - wd(f0), y - h * f0), (x + wd(f0), y - h * f0), (x + wd(f1), y - h * f1), (x - wd(f1), y - h * f1)],
                    fill=p.c(WHITE, z, reflective=True))
    return _box(x - w / 2, y - h, x + w / 2, y)


def drum(p: Painter, x, y, s, z) -> Box:
    h, w = 1.0 * s, 0.6 * s
    p.d.rectangle((x - w * 0.6, y - 0.08 * s, x + w * 0.6, y), fill=p.c(BLACK, z))
    bands = 5
    for i in range(bands):
        y0 = y - 0.08 * s - (h - 0.08 * s) * i / bands
        y1 = y - 0.08 * s - (h - 0.08 * s) * (i + 1) / bands
        col = ORANGE if i % 2 == 0 else WHITE
        p.d.rectangle((x - w / 2, y1, x + w / 2, y0), fill=p.c(col, z, reflective=True))
    p.d.ellipse((x - w / 2, y - h - 0.06 * s, x + w / 2, y - h + 0.06 * s), fill=p.c((230, 90, 10), z))
    return _box(x - w * 0.6, y - h - 0.06 * s, x + w * 0.6, y)


def _striped_board(p: Painter, x0, y0, x1, y1, z, c1: RGB, c2: RGB, n: int = 6) -> None:
    p.d.rectangle((x0, y0, x1, y1), fill=p.c(c2, z, reflective=True))
    wid = (x1 - x0) / n
    hgt = y1 - y0
    for i in range(-1, n + 1, 2):
        a = x0 + i * wid
        poly = [(a, y1), (a + wid, y1), (a + wid + hgt, y0), (a + hgt, y0)]
        poly = [(min(max(px, x0), x1), py) for px, py in poly]
        p.d.polygon(poly, fill=p.c(c1, z, reflective=True))


def barricade(p: Painter, x, y, s, z, width_m: float = 2.0, red: bool = False, lamp: bool = True) -> Box:
    w, h = width_m * s, 1.2 * s
    c1 = RED if red else ORANGE
    leg = p.c((190, 190, 190), z)
    for lx in (x - w * 0.42, x + w * 0.42):
        p.d.line([(lx, y), (lx, y - h)], fill=leg, width=max(1, int(0.06 * s)))
    boards = int(p.rng.integers(1, 4))
    bh = 0.22 * s
    for i in range(boards):
        yb = y - h + i * (bh * 1.6)
        _striped_board(p, x - w / 2, yb, x + w / 2, yb + bh, z, c1, WHITE, n=max(3, int(width_m * 3)))
    if lamp:
        lx, ly, r = x - w * 0.42, y - h - 0.1 * s, max(1.0, 0.09 * s)
        p.d.ellipse((lx - r, ly - r, lx + r, ly + r), fill=p.c(YELLOW, z, emissive=p.light.night))
        if p.light.night:
            p.glow(lx, ly, r * 2, (255, 190, 40), 0.6)
    return _box(x - w / 2, y - h - 0.2 * s, x + w / 2, y)


def plastic_barrier(p: Painter, x, y, s, z, colour: RGB = RED) -> Box:
    w, h = 1.2 * s, 0.8 * s
    col = p.jitter(colour, 8)
    p.d.polygon([(x - w / 2, y), (x + w / 2, y), (x + w * 0.35, y - h), (x - w * 0.35, y - h)], fill=p.c(col, z))
    p.d.rectangle((x - w * 0.3, y - h * 0.7, x + w * 0.3, y - h * 0.55), fill=p.c(WHITE, z, reflective=True))
    return _box(x - w / 2, y - h, x + w / 2, y)


def fence_panel(p: Painter, x, y, s, z, orange_mesh: bool = False) -> Box:
    w, h = 2.5 * s, (1.1 if orange_mesh else 2.0) * s
    if orange_mesh:
        p.d.rectangle((x - w / 2, y - h, x + w / 2, y), fill=p.c(ORANGE, z, alpha=150))
        step = max(2.0, 0.15 * s)
        yy = y - h
        while yy < y:
            p.d.line([(x - w / 2, yy), (x + w / 2, yy)], fill=p.c((200, 70, 0), z), width=1)
            yy += step
        return _box(x - w / 2, y - h, x + w / 2, y)
    frame = p.c((170, 172, 175), z)
    p.d.rectangle((x - w / 2, y - h, x + w / 2, y - 0.1 * s), outline=frame, width=max(1, int(0.05 * s)))
    step = max(2.0, 0.1 * s)
    xx = x - w / 2
    while xx < x + w / 2:
        p.d.line([(xx, y - h), (xx, y - 0.1 * s)], fill=p.c((150, 152, 155), z, alpha=150), width=1)
        xx += step
    for fx in (x - w / 2, x + w / 2):
        p.d.rectangle((fx - 0.2 * s, y - 0.15 * s, fx + 0.2 * s, y), fill=p.c((140, 140, 135), z))
    if p.rng.random() < 0.5:  # a banner on the fence
        col = (255, 255, 255) if p.rng.random() < 0.5 else (20, 80, 160)
        p.d.rectangle((x - w * 0.4, y - h * 0.75, x + w * 0.4, y - h * 0.4), fill=p.c(col, z))
    return _box(x - w / 2, y - h, x + w / 2, y)


def gravel_pile(p: Painter, x, y, s, z) -> Box:
    w, h = p.rng.uniform(2, 4) * s, p.rng.uniform(0.7, 1.5) * s
    col = p.jitter((120, 100, 80) if p.rng.random() < 0.6 else (140, 140, 135), 10)
    p.d.chord((x - w / 2, y - h, x + w / 2, y + h), 180, 360, fill=p.c(col, z))
    return _box(x - w / 2, y - h, x + w / 2, y)


def arrow_board(p: Painter, x, y, s, z, direction: int = 1) -> Box:
    w, h, lift = 2.4 * s, 1.3 * s, 1.0 * s
    p.d.rectangle((x - 0.8 * s, y - 0.5 * s, x + 0.8 * s, y - 0.2 * s), fill=p.c((240, 150, 20), z))
    for wx in (x - 0.7 * s, x + 0.7 * s):
        p.d.rectangle((wx - 0.12 * s, y - 0.35 * s, wx + 0.12 * s, y), fill=p.c(BLACK, z))
    p.d.line([(x, y - 0.5 * s), (x, y - lift)], fill=p.c((90, 90, 90), z), width=max(1, int(0.08 * s)))
    x0, y0 = x - w / 2, y - lift - h
    p.d.rectangle((x0, y0, x0 + w, y0 + h), fill=p.c(BLACK, z))
    r = max(0.8, 0.07 * s)
    pts = [(-0.8, 0), (-0.5, 0), (-0.2, 0), (0.1, 0), (0.4, 0), (0.2, -0.25), (0.2, 0.25), (0.0, -0.45), (0.0, 0.45)]
    lit = p.light.night or p.rng.random() < 0.8
    for u, v in pts:
        cx, cy = x + direction * u * w / 2, y0 + h / 2 + v * h / 2
        p.d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=p.c((255, 200, 60) if lit else (90, 80, 40), z, emissive=lit))
    if p.light.night:
        p.glow(x, y0 + h / 2, w * 0.25, (255, 180, 40), 0.35)
    return _box(x0, y0, x0 + w, y)


def _wheel(p, x, y, r, z):
    p.d.ellipse((x - r, y - 2 * r, x + r, y), fill=p.c(BLACK, z))
    p.d.ellipse((x - r * 0.45, y - r * 1.45, x + r * 0.45, y - r * 0.55), fill=p.c((110, 110, 110), z))


def excavator(p: Painter, x, y, s, z, facing: int = 1, colour: RGB = (245, 180, 10)) -> Box:
    col = p.jitter(colour, 10)
    tw, th = 3.8 * s, 0.9 * s
    p.d.rounded_rectangle((x - tw / 2, y - th, x + tw / 2, y), radius=th / 2, fill=p.c((45, 45, 45), z))
    bw, bh = 3.0 * s, 1.2 * s
    bx0, by1 = x - bw / 2 - facing * 0.3 * s, y - th
    p.d.rectangle((bx0, by1 - bh, bx0 + bw, by1), fill=p.c(col, z))
    cx0 = x + (0.1 if facing > 0 else -1.3) * s
    p.d.rectangle((cx0, by1 - bh - 1.4 * s, cx0 + 1.2 * s, by1 - bh), fill=p.c(col, z))
    p.d.rectangle((cx0 + 0.15 * s, by1 - bh - 1.25 * s, cx0 + 1.05 * s, by1 - bh - 0.3 * s), fill=p.c((60, 80, 95), z))
    # boom, stick, bucket
    b0 = (x + facing * 0.9 * s, by1 - bh * 0.8)
    b1 = (x + facing * 3.2 * s, by1 - bh - p.rng.uniform(1.6, 2.6) * s)
    b2 = (x + facing * p.rng.uniform(4.2, 5.2) * s, y - p.rng.uniform(0.3, 1.4) * s)
    wdt = max(2, int(0.35 * s))
    p.d.line([b0, b1], fill=p.c(col, z), width=wdt)
    p.d.line([b1, b2], fill=p.c(col, z), width=max(2, int(0.25 * s)))
    bk = 0.45 * s
    p.d.polygon([(b2[0] - bk, b2[1] - bk), (b2[0] + bk, b2[1] - bk * 0.5), (b2[0], b2[1] + bk)], fill=p.c((70, 60, 50), z))
    beacon(p, cx0 + 0.6 * s, by1 - bh - 1.4 * s, s, z)
    xs = [x - tw / 2, x + tw / 2, b1[0], b2[0] + bk]
    return _box(min(xs), b1[1], max(xs), y)


def beacon(p: Painter, x, y, s, z) -> None:
    r = max(1.0, 0.12 * s)
    on = p.light.night or p.rng.random() < 0.6
    p.d.ellipse((x - r, y - 2 * r, x + r, y), fill=p.c((255, 160, 20), z, emissive=on))
    if on and p.light.night:
        p.glow(x, y - r, r * 2.5, (255, 150, 20), 0.7)


def dump_truck(p: Painter, x, y, s, z, rear: bool = True, colour: RGB = (240, 150, 20)) -> Box:
    col = p.jitter(colour, 12)
    w, h = 2.5 * s, 3.0 * s
    shadow(p, x, y, w, s)
    for wx in (x - w * 0.38, x + w * 0.38):
        _wheel(p, wx, y, 0.5 * s, z)
    p.d.rectangle((x - w / 2, y - h, x + w / 2, y - 0.7 * s), fill=p.c(col, z))
    p.d.rectangle((x - w / 2, y - h, x + w / 2, y - h + 0.25 * s), fill=p.c((200, 110, 10), z))
    if rear:
        for dx in (-1, 1):
            p.d.rectangle((x + dx * w * 0.42 - 0.12 * s, y - 1.1 * s, x + dx * w * 0.42 + 0.12 * s, y - 0.9 * s),
                          fill=p.c(RED, z, emissive=p.light.night))
        _striped_board(p, x - w / 2, y - 0.95 * s, x + w / 2, y - 0.7 * s, z, RED, WHITE, 8)
    else:
        p.d.rectangle((x - w * 0.42, y - h + 0.4 * s, x + w * 0.42, y - h + 1.3 * s), fill=p.c((60, 80, 95), z))
    beacon(p, x, y - h, s, z)
    return _box(x - w / 2, y - h - 0.25 * s, x + w / 2, y)


def roller(p: Painter, x, y, s, z, colour: RGB = (245, 190, 20)) -> Box:
    col = p.jitter(colour, 10)
    w = 2.0 * s
    p.d.rectangle((x - w / 2, y - 1.3 * s, x + w / 2, y), fill=p.c((90, 90, 90), z))
    p.d.rectangle((x - w * 0.45, y - 2.2 * s, x + w * 0.45, y - 1.2 * s), fill=p.c(col, z))
    p.d.rectangle((x - w * 0.35, y - 3.0 * s, x + w * 0.35, y - 2.2 * s), outline=p.c(BLACK, z), width=max(1, int(0.08 * s)))
    beacon(p, x, y - 3.0 * s, s, z)
    return _box(x - w / 2, y - 3.1 * s, x + w / 2, y)


def person(p: Painter, x, y, s, z, worker: bool = False, vest: RGB = HIVIS_YELLOW) -> Box:
    h = p.rng.uniform(1.6, 1.9) * s
    skin = [(235, 200, 170), (200, 150, 110), (140, 95, 65), (90, 60, 40)][int(p.rng.integers(0, 4))]
    legs = p.jitter((40, 45, 60) if worker or p.rng.random() < 0.6 else (120, 110, 90), 10)
    torso = p.jitter(CAR_COLOURS[int(p.rng.integers(0, len(CAR_COLOURS)))], 15)
    w = 0.45 * s
    shadow(p, x, y, w, s)
    p.d.rectangle((x - w * 0.45, y - h * 0.48, x - w * 0.05, y), fill=p.c(legs, z))
    p.d.rectangle((x + w * 0.05, y - h * 0.48, x + w * 0.45, y), fill=p.c(legs, z))
    p.d.rectangle((x - w / 2, y - h * 0.82, x + w / 2, y - h * 0.45), fill=p.c(torso, z))
    arm = p.rng.uniform(-0.3, 0.3)
    p.d.line([(x - w / 2, y - h * 0.8), (x - w * (0.75 + arm), y - h * 0.5)], fill=p.c(torso, z), width=max(1, int(0.12 * s)))
    p.d.line([(x + w / 2, y - h * 0.8), (x + w * (0.75 - arm), y - h * 0.5)], fill=p.c(torso, z), width=max(1, int(0.12 * s)))
    r = 0.12 * s
    p.d.ellipse((x - r, y - h * 0.82 - 2 * r, x + r, y - h * 0.82), fill=p.c(skin, z))
    if worker:
        p.d.rectangle((x - w / 2, y - h * 0.8, x + w / 2, y - h * 0.5), fill=p.c(vest, z, reflective=True))
        for f in (0.58, 0.7):
            p.d.rectangle((x - w / 2, y - h * f - 0.025 * s, x + w / 2, y - h * f + 0.025 * s),
                          fill=p.c((225, 225, 225), z, reflective=True))
        helmet = [(250, 250, 250), YELLOW, HIVIS_ORANGE][int(p.rng.integers(0, 3))]
        p.d.chord((x - r * 1.2, y - h * 0.82 - 2.3 * r, x + r * 1.2, y - h * 0.82 - 0.6 * r), 180, 360, fill=p.c(helmet, z))
        if p.rng.random() < 0.35:  # a shovel or a stop/slow paddle
            hx = x + w * 0.8
            p.d.line([(hx, y - h * 0.5), (hx, y - h * 1.05)], fill=p.c((80, 60, 40), z), width=max(1, int(0.05 * s)))
            if p.rng.random() < 0.5:
                rr = 0.25 * s
                p.d.regular_polygon((hx, y - h * 1.05 - rr, rr), 8, fill=p.c(RED, z, reflective=True))
    return _box(x - w, y - h - 0.3 * s, x + w, y)


# ------------------------------------------------------------------------------------------------
# signs


def _pole(p: Painter, x, y, top, s, z):
    p.d.line([(x, y), (x, top)], fill=p.c((120, 122, 125), z), width=max(1, int(0.07 * s)))


def sign(p: Painter, x, y, s, z, kind: str, text: str = "") -> Box:
    """A sign on a post. Roadwork kinds: ``rw_triangle``, ``rw_diamond``, ``rw_text``, ``detour``;
    others: ``speed``, ``stop``, ``yield``, ``warn_yellow``, ``info_blue``, ``direction_green``,
    ``no_entry``, ``parking``."""
    size = p.rng.uniform(0.7, 1.1) * s
    post = (1.3 if kind not in ("rw_text", "direction_green") else 1.0) * s
    if kind in ("rw_diamond", "rw_text", "detour") and p.rng.random() < 0.5:
        post = 0.3 * s  # a sign stand on the ground
    top = y - post
    _pole(p, x, y, top, s, z)
    cy = top - size / 2
    ink = p.c(BLACK, z)
    if kind == "rw_triangle" or kind == "yield" or kind == "warn_triangle":
        down = kind == "yield"
        pts = [(x - size / 2, cy + size / 2.6), (x + size / 2, cy + size / 2.6), (x, cy - size / 2)]
        if down:
            pts = [(x - size / 2, cy - size / 2.6), (x + size / 2, cy - size / 2.6), (x, cy + size / 2)]
        p.d.polygon(pts, fill=p.c(RED, z, reflective=True))
        inner = [(px * 0.68 + x * 0.32, py * 0.68 + cy * 0.32) for px, py in pts]
        bg = YELLOW if (kind == "rw_triangle" and p.rng.random() < 0.3) else WHITE
        p.d.polygon(inner, fill=p.c(bg, z, reflective=True))
        if kind == "rw_triangle":
            _worker_glyph(p, x, cy + size * 0.08, size * 0.35, ink)
        elif kind == "warn_triangle":
            p.d.line([(x, cy - size * 0.12), (x, cy + size * 0.12)], fill=ink, width=max(1, int(size * 0.06)))
    elif kind in ("rw_diamond", "warn_yellow"):
        col = ORANGE if kind == "rw_diamond" else YELLOW
        r = size * 0.6
        p.d.polygon([(x, cy - r), (x + r, cy), (x, cy + r), (x - r, cy)], fill=p.c(col, z, reflective=True))
        p.d.polygon([(x, cy - r * 0.9), (x + r * 0.9, cy), (x, cy + r * 0.9), (x - r * 0.9, cy)], outline=ink)
        if kind == "rw_diamond":
            if text:
                p.text(x, cy, text, size * 0.16, ink)
            else:
                _worker_glyph(p, x, cy + r * 0.1, r * 0.6, ink)
        else:
            glyph = int(p.rng.integers(0, 3))
            if glyph == 0:  # curve arrow
                p.d.arc((x - r * 0.4, cy - r * 0.3, x + r * 0.4, cy + r * 0.6), 180, 300, fill=ink, width=max(1, int(r * 0.1)))
            elif glyph == 1:  # deer-ish blob
                p.d.ellipse((x - r * 0.3, cy - r * 0.15, x + r * 0.3, cy + r * 0.15), fill=ink)
            else:
                p.text(x, cy, "!", r * 0.8, ink)
    elif kind in ("rw_text", "detour"):
        w, h = size * 1.6, size * 0.9
        p.d.rectangle((x - w / 2, cy - h / 2, x + w / 2, cy + h / 2), fill=p.c(ORANGE, z, reflective=True), outline=ink)
        txt = text or ("DETOUR" if kind == "detour" else "ROAD WORK")
        p.text(x, cy, txt, h * 0.3, ink)
    elif kind == "speed":
        r = size / 2
        p.d.ellipse((x - r, cy - r, x + r, cy + r), fill=p.c(RED, z, reflective=True))
        p.d.ellipse((x - r * 0.78, cy - r * 0.78, x + r * 0.78, cy + r * 0.78), fill=p.c(WHITE, z, reflective=True))
        p.text(x, cy, text or str(int(p.rng.choice([30, 40, 50, 60, 70, 80, 100]))), r * 0.8, ink)
    elif kind == "stop":
        r = size / 2
        p.d.regular_polygon((x, cy, r), 8, rotation=22.5, fill=p.c(RED, z, reflective=True))
        p.text(x, cy, "STOP", r * 0.55, p.c(WHITE, z))
    elif kind == "no_entry":
        r = size / 2
        p.d.ellipse((x - r, cy - r, x + r, cy + r), fill=p.c(RED, z, reflective=True))
        p.d.rectangle((x - r * 0.7, cy - r * 0.17, x + r * 0.7, cy + r * 0.17), fill=p.c(WHITE, z))
    elif kind == "parking":
        p.d.rectangle((x - size / 2, cy - size / 2, x + size / 2, cy + size / 2), fill=p.c((20, 70, 170), z, reflective=True))
        p.text(x, cy, "P", size * 0.7, p.c(WHITE, z))
    else:  # info_blue / direction_green
        w, h = size * 2.2, size * 1.0
        col = (20, 70, 170) if kind == "info_blue" else (10, 110, 60)
        p.d.rectangle((x - w / 2, cy - h / 2, x + w / 2, cy + h / 2), fill=p.c(col, z, reflective=True),
                      outline=p.c(WHITE, z))
        p.text(x, cy, text or "EXIT 12", h * 0.3, p.c(WHITE, z))
    return _box(x - size, cy - size * 0.7, x + size, y)


def _worker_glyph(p: Painter, x, y, size, ink) -> None:
    """The roadwork pictogram: a digging figure beside a pile."""
    wdt = max(1, int(size * 0.1))
    p.d.ellipse((x - size * 0.35, y - size * 0.55, x - size * 0.15, y - size * 0.35), fill=ink)
    p.d.line([(x - size * 0.25, y - size * 0.35), (x - size * 0.05, y + size * 0.05)], fill=ink, width=wdt)
    p.d.line([(x - size * 0.05, y + size * 0.05), (x - size * 0.3, y + size * 0.4)], fill=ink, width=wdt)
    p.d.line([(x - size * 0.05, y + size * 0.05), (x + size * 0.1, y + size * 0.4)], fill=ink, width=wdt)
    p.d.line([(x - size * 0.2, y - size * 0.2), (x + size * 0.3, y + size * 0.2)], fill=ink, width=wdt)
    p.d.chord((x + size * 0.15, y + size * 0.15, x + size * 0.55, y + size * 0.6), 180, 360, fill=ink)


# ------------------------------------------------------------------------------------------------
# traffic and street furniture


def vehicle(p: Painter, x, y, s, z, kind: str = "car", colour: typing.Optional[RGB] = None,
            front: bool = False) -> Box:
    """A vehicle seen from behind (or the front): car, suv, van, truck, bus, taxi, school_bus."""
    dims = {"car": (1.8, 1.45), "suv": (1.9, 1.75), "van": (2.0, 2.3), "truck": (2.5, 3.4),
            "bus": (2.55, 3.1), "taxi": (1.8, 1.45), "school_bus": (2.5, 3.0)}
    w_m, h_m = dims[kind]
    if colour is None:
        colour = {"taxi": YELLOW, "school_bus": (250, 185, 10)}.get(kind) or CAR_COLOURS[int(p.rng.integers(0, len(CAR_COLOURS)))]
    col = p.jitter(colour, 8)
    w, h = w_m * s, h_m * s
    shadow(p, x, y, w, s)
    wr = 0.33 * s
    for wx in (x - w * 0.36, x + w * 0.36):
        _wheel(p, wx, y, wr, z)
    body_top = y - h * (0.55 if kind in ("car", "taxi", "suv") else 0.95)
    p.d.rounded_rectangle((x - w / 2, body_top, x + w / 2, y - 0.25 * s), radius=max(1, 0.12 * s), fill=p.c(col, z))
    glass = p.c((45, 55, 65) if not front else (70, 85, 100), z)
    if kind in ("car", "taxi", "suv"):
        cab = [(x - w * 0.42, body_top), (x + w * 0.42, body_top), (x + w * 0.32, y - h), (x - w * 0.32, y - h)]
        p.d.polygon(cab, fill=p.c(col, z))
        p.d.polygon([(x - w * 0.36, body_top - 0.04 * s), (x + w * 0.36, body_top - 0.04 * s),
                     (x + w * 0.29, y - h + 0.08 * s), (x - w * 0.29, y - h + 0.08 * s)], fill=glass)
        if kind == "taxi":
            p.d.rectangle((x - 0.2 * s, y - h - 0.2 * s, x + 0.2 * s, y - h), fill=p.c(WHITE, z))
    elif kind in ("bus", "school_bus", "van"):
        p.d.rectangle((x - w * 0.42, y - h * 0.92, x + w * 0.42, y - h * 0.6), fill=glass)
    else:  # truck: box body
        p.d.rectangle((x - w / 2, y - h, x + w / 2, y - 0.7 * s), fill=p.c(col, z))
        p.d.line([(x, y - h), (x, y - 0.7 * s)], fill=p.c((90, 90, 90), z), width=1)
    ly = y - 0.75 * s if kind in ("car", "taxi", "suv") else y - 0.9 * s
    lw, lh = 0.32 * s, 0.14 * s
    lamp = (255, 250, 225) if front else (220, 20, 20)
    emissive = p.light.night or (not front and p.rng.random() < 0.25)
    for dx in (-1, 1):
        lx = x + dx * (w / 2 - lw * 0.7)
        p.d.rectangle((lx - lw / 2, ly - lh, lx + lw / 2, ly), fill=p.c(lamp, z, emissive=emissive))
        if emissive and p.light.night:
            p.glow(lx, ly - lh / 2, lw * (1.6 if front else 1.0), lamp, 0.5 if front else 0.35)
    p.d.rectangle((x - 0.26 * s, y - 0.55 * s, x + 0.26 * s, y - 0.43 * s),
                  fill=p.c((245, 245, 240) if p.rng.random() < 0.8 else (250, 210, 40), z))
    return _box(x - w / 2, y - h - 0.2 * s, x + w / 2, y)


def tree(p: Painter, x, y, s, z, autumn: bool = False, conifer: bool = False) -> Box:
    h = p.rng.uniform(4, 11) * s
    trunk = p.c((80, 60, 40), z)
    p.d.line([(x, y), (x, y - h * 0.45)], fill=trunk, width=max(1, int(0.3 * s)))
    if conifer:
        col = p.jitter((30, 70, 40), 10)
        p.d.polygon([(x - h * 0.25, y - h * 0.2), (x + h * 0.25, y - h * 0.2), (x, y - h)], fill=p.c(col, z))
        return _box(x - h * 0.25, y - h, x + h * 0.25, y)
    palette = [(200, 90, 20), (220, 140, 30), (170, 40, 25), (190, 170, 40)] if autumn else \
        [(50, 95, 40), (70, 115, 45), (40, 80, 35), (90, 120, 50)]
    r = h * 0.32
    for _ in range(4):
        cx, cy = x + p.rng.normal(0, r * 0.3), y - h * 0.65 + p.rng.normal(0, r * 0.25)
        rr = r * p.rng.uniform(0.6, 1.0)
        col = p.jitter(palette[int(p.rng.integers(0, len(palette)))], 12)
        p.d.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=p.c(col, z))
    return _box(x - r * 1.4, y - h, x + r * 1.4, y)


def street_light(p: Painter, x, y, s, z, side: int = 1, sodium: bool = False) -> Box:
    h = 8.0 * s
    col = p.c((130, 132, 135), z)
    p.d.line([(x, y), (x, y - h)], fill=col, width=max(1, int(0.15 * s)))
    ax = x - side * 1.8 * s
    p.d.line([(x, y - h), (ax, y - h - 0.3 * s)], fill=col, width=max(1, int(0.1 * s)))
    lamp = (255, 170, 60) if sodium else (235, 240, 255)
    on = p.light.night
    p.d.rectangle((ax - 0.35 * s, y - h - 0.35 * s, ax + 0.35 * s, y - h - 0.15 * s),
                  fill=p.c(lamp if on else (200, 200, 200), z, emissive=on))
    if on:
        p.glow(ax, y - h - 0.2 * s, 0.9 * s, lamp, 0.45)
    return _box(min(x, ax) - 0.4 * s, y - h - 0.4 * s, max(x, ax) + 0.4 * s, y)


def traffic_light(p: Painter, x, y, s, z) -> Box:
    h = 3.2 * s
    _pole(p, x, y, y - h, s, z)
    w, hh = 0.35 * s, 1.0 * s
    p.d.rectangle((x - w / 2, y - h - hh, x + w / 2, y - h), fill=p.c(BLACK, z))
    state = int(p.rng.integers(0, 3))
    for i, col in enumerate([(230, 30, 20), (250, 170, 20), (40, 220, 90)]):
        cy = y - h - hh + hh * (i + 0.5) / 3
        on = i == state
        r = w * 0.35
        p.d.ellipse((x - r, cy - r, x + r, cy + r), fill=p.c(col if on else (50, 50, 50), z, emissive=on))
        if on and p.light.night:
            p.glow(x, cy, r * 1.5, col, 0.5)
    return _box(x - w, y - h - hh, x + w, y)


def delineator(p: Painter, x, y, s, z) -> Box:
    h, w = 1.0 * s, 0.12 * s
    p.d.rectangle((x - w, y - h, x + w, y), fill=p.c(WHITE, z))
    p.d.rectangle((x - w, y - h * 0.85, x + w, y - h * 0.7), fill=p.c(BLACK, z))
    p.d.rectangle((x - w * 0.6, y - h * 0.82, x + w * 0.6, y - h * 0.73), fill=p.c((255, 120, 30), z, reflective=True))
    return _box(x - w, y - h, x + w, y)


def bush(p: Painter, x, y, s, z) -> Box:
    w, h = p.rng.uniform(1, 3) * s, p.rng.uniform(0.6, 1.5) * s
    col = p.jitter((60, 100, 45), 15)
    p.d.chord((x - w / 2, y - h, x + w / 2, y + h * 0.6), 180, 360, fill=p.c(col, z))
    return _box(x - w / 2, y - h, x + w / 2, y)
