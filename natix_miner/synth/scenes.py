"""Procedural dashcam scenes, so the whole challenge loop runs offline.

A pinhole camera on a car looks down a road in perspective: sky and distant skyline, verges or
sidewalks, lanes with dashed and solid markings (possibly curving), traffic ahead and oncoming,
street furniture, trees, buildings. Label 1 adds a work zone drawn from several layouts (lane
closure taper, shoulder work, sidewalk work, road closed, a minimal sign-and-cones case, work on the
opposite side): cones, drums, barricades, plastic barriers, fences, roadwork signs, arrow boards,
excavators, dump trucks, rollers, gravel piles, dug-up patches and workers in hi-vis vests. Label 0
is a clear road. Both classes draw the same confounders (red and orange cars, taxis and school
buses, autumn trees, stop / yield / speed signs, yellow warning diamonds, delineators with orange
reflectors, sodium street lights, dusk skies, brick buildings) so that colour alone does not
separate them. Light (day, golden hour, overcast, dusk, night), weather (clear, haze, fog, rain,
snow) and camera pose (height, pitch, yaw, roll, focal length, lane) vary, and dashcam artefacts
(hood, timestamp, vignette, sensor noise, JPEG) appear in the "real" style; the "synthetic" style
is square 1024x1024 and smoother, like the validator's SDXL images.

Usage::

    from natix_miner.synth.scenes import render_scene, SceneGenerator
    scene = render_scene(label=1, seed=7)          # Scene
    scene.image, scene.label, scene.description
    [o.kind for o in scene.objects if o.roadwork]  # ['cone', 'cone', 'excavator', 'worker', ...]
    gen = SceneGenerator(seed=0)
    scene = gen.sample(synthetic=True)             # label drawn 50/50
"""

import dataclasses
import io
import math
import typing

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from natix_miner.synth import scene_props as P

REAL_SIZES = ((960, 540), (1280, 720), (1024, 576))
SYNTHETIC_SIZE = (1024, 1024)
TIMES = ("day", "day", "golden", "overcast", "dusk", "night")
WEATHERS = ("clear", "clear", "clear", "haze", "fog", "rain", "snow")
ENVIRONMENTS = ("highway", "rural", "urban", "suburban")
# label 1: roadwork boxes cover at least this fraction of the central square (what the validator's
# level 0 keeps of a landscape frame), or HARD_ROADWORK_AREA in the hard positives
MIN_ROADWORK_AREA = 0.02
HARD_ROADWORK_AREA = 0.005
HARD_FRACTION = 0.15


@dataclasses.dataclass
class SceneObject:
    kind: str
    box: typing.Tuple[float, float, float, float]
    roadwork: bool
    z: float


@dataclasses.dataclass
class Scene:
    image: Image.Image
    label: int
    objects: typing.List[SceneObject]
    params: typing.Dict[str, typing.Any]
    description: str

    @property
    def roadwork_objects(self) -> typing.List[SceneObject]:
        return [o for o in self.objects if o.roadwork]


@dataclasses.dataclass
class Camera:
    width: int
    height: int
    f: float
    horizon: float
    vx: float
    cam_h: float
    cam_x: float
    curve: float

    def project(self, X: float, Z: float, h: float = 0.0) -> typing.Tuple[float, float]:
        x = self.vx + self.f * (X + self.curve * Z * Z - self.cam_x) / Z
        y = self.horizon + self.f * (self.cam_h - h) / Z
        lim = 8 * max(self.width, self.height)
        return (max(-lim, min(lim, x)), max(-lim, min(lim, y)))

    def scale(self, Z: float) -> float:
        return self.f / Z

    @property
    def z_near(self) -> float:
        return self.f * self.cam_h / max(1.0, self.height - self.horizon)


def _zs(z0: float, z1: float, n: int = 40) -> np.ndarray:
    return np.geomspace(z0, z1, n)


def ground_strip(cam: Camera, x0: float, x1: float, z0: float, z1: float, n: int = 30):
    zs = _zs(max(z0, 0.3), z1, n)
    return [cam.project(x0, z) for z in zs] + [cam.project(x1, z) for z in zs[::-1]]


# ------------------------------------------------------------------------------------------------


class _Builder:
    """One scene being built (all randomness from one generator)."""

    def __init__(self, label: int, rng: np.random.Generator, size, synthetic: bool):
        self.label, self.rng, self.synthetic = label, rng, synthetic
        self.W, self.H = size
        self.items: typing.List[typing.Tuple[float, str, bool, typing.Callable]] = []
        self.objects: typing.List[SceneObject] = []
        self.notes: typing.List[str] = []

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self):
        r = self.rng
        self.time = str(r.choice(TIMES))
        self.weather = str(r.choice(WEATHERS))
        if self.time == "night" and self.weather == "snow":
            self.weather = "clear"
        self.env = str(r.choice(ENVIRONMENTS))
        W, H = self.W, self.H
        f = W * r.uniform(0.55, 0.95) if W >= H else H * r.uniform(0.7, 1.1)
        self.lane_w = r.uniform(3.0, 3.8)
        self.n_our = int(r.choice([1, 2, 2, 3])) if self.env != "highway" else int(r.integers(2, 4))
        self.n_opp = int(r.choice([0, 1, 1, 2])) if self.env != "highway" else int(r.choice([0, 2, 3]))
        self.median = 0.0 if self.env != "highway" or self.n_opp == 0 else r.uniform(1.5, 5)
        lane = int(r.integers(0, self.n_our))
        self.right_edge = self.n_our * self.lane_w
        self.left_edge = -(self.median + self.n_opp * self.lane_w) if self.n_opp else 0.0
        self.shoulder = r.uniform(0.3, 3.0) if self.env in ("highway", "rural") else r.uniform(0.2, 0.8)
        self.sidewalk = r.uniform(2.0, 4.5) if self.env in ("urban", "suburban") else 0.0
        self.cam = Camera(W, H, f, H * r.uniform(0.36, 0.54), W / 2 + f * math.tan(math.radians(r.uniform(-6, 6))),
                          r.uniform(1.2, 2.3), (lane + 0.5) * self.lane_w + r.uniform(-0.4, 0.4),
                          r.choice([0.0, 0.0, 1.0]) * r.uniform(-0.0015, 0.0015))
        self.roll = float(r.choice([0.0, 1.0]) * r.uniform(-3.5, 3.5))
        amb = {"day": (1.0, 1.0, 1.0), "golden": (1.0, 0.88, 0.72), "overcast": (0.78, 0.8, 0.84),
               "dusk": (0.55, 0.46, 0.48), "night": (0.16, 0.17, 0.22)}[self.time]
        fog_k = {"clear": r.uniform(0.0005, 0.003), "haze": r.uniform(0.006, 0.012), "fog": r.uniform(0.02, 0.05),
                 "rain": r.uniform(0.006, 0.015), "snow": r.uniform(0.008, 0.02)}[self.weather]
        fog = {"day": (205, 212, 222), "golden": (235, 205, 170), "overcast": (190, 192, 196),
               "dusk": (150, 120, 125), "night": (25, 27, 35)}[self.time]
        if self.weather in ("rain", "fog", "snow"):
            amb = tuple(a * 0.82 for a in amb)
        self.light = P.Light(ambient=amb, night=self.time == "night", fog_rgb=fog, fog_k=fog_k)

    # -- background -----------------------------------------------------------------------------
    def sky(self) -> np.ndarray:
        r, W, H = self.rng, self.W, self.H
        top, bot = {"day": ((60, 120, 205), (185, 208, 232)), "golden": ((95, 130, 195), (250, 200, 150)),
                    "overcast": ((150, 154, 160), (205, 206, 208)), "dusk": ((55, 55, 105), (250, 145, 80)),
                    "night": ((4, 6, 18), (28, 30, 48))}[self.time]
        if self.weather in ("fog", "rain", "snow", "haze"):
            k = {"haze": 0.35, "rain": 0.6, "snow": 0.6, "fog": 0.85}[self.weather]
            top = tuple(t * (1 - k) + g * k for t, g in zip(top, self.light.fog_rgb))
            bot = tuple(t * (1 - k) + g * k for t, g in zip(bot, self.light.fog_rgb))
        t = np.clip(np.arange(H, dtype=np.float32) / max(1.0, self.cam.horizon), 0, 1) ** 0.8
        img = (np.array(top, np.float32)[None, :] * (1 - t[:, None]) + np.array(bot, np.float32)[None, :] * t[:, None])
        img = np.repeat(img[:, None, :].astype(np.float32), W, axis=1)
        if self.time in ("day", "golden", "overcast") and self.weather in ("clear", "haze") and r.random() < 0.7:
            small = Image.new("L", (W // 8 + 1, H // 8 + 1), 0)
            d = ImageDraw.Draw(small)
            for _ in range(int(r.integers(2, 9))):
                cx, cy = r.uniform(0, W / 8), r.uniform(0, self.cam.horizon / 8 * 0.8)
                rw, rh = r.uniform(5, 25), r.uniform(2, 6)
                d.ellipse((cx - rw, cy - rh, cx + rw, cy + rh), fill=int(r.uniform(120, 230)))
            mask = np.asarray(small.filter(ImageFilter.GaussianBlur(3)).resize((W, H), Image.BILINEAR), np.float32) / 255
            img = img * (1 - mask[..., None]) + np.float32(245) * mask[..., None]
        return img

    def skyline(self, d: ImageDraw.ImageDraw):
        r, W, hy = self.rng, self.W, self.cam.horizon
        far = 400.0
        kind = {"urban": "city", "suburban": str(r.choice(["trees", "city", "hills"])),
                "rural": str(r.choice(["trees", "hills", "mountains"])), "highway": str(r.choice(["trees", "hills", "mountains"]))}[self.env]
        base = (55, 75, 50) if kind == "trees" else (95, 105, 120) if kind != "city" else (110, 115, 125)
        col = self.light.shade(base, far)
        if kind == "city":
            x = -10.0
            while x < W:
                w = r.uniform(0.02, 0.08) * W
                h = r.uniform(0.02, 0.15) * self.H
                d.rectangle((x, hy - h, x + w, hy + 2), fill=self.light.shade(P_jit(r, base, 12), far))
                if self.light.night:
                    for _ in range(int(w * h / 300)):
                        wx, wy = r.uniform(x, x + w), r.uniform(hy - h, hy)
                        d.rectangle((wx, wy, wx + 2, wy + 2), fill=(250, 210, 120, 200))
                x += w
        else:
            amp = {"trees": 0.03, "hills": 0.06, "mountains": 0.16}[kind] * self.H
            xs = np.linspace(-5, W + 5, 60)
            phase = r.uniform(0, 6.28, 3)
            ys = hy - amp * (0.6 + 0.25 * np.sin(xs / W * 7 + phase[0]) + 0.15 * np.sin(xs / W * 23 + phase[1]))
            if kind == "trees":
                ys = ys - r.uniform(0, amp * 0.5, len(xs))
            if kind == "mountains":
                ys = hy - amp * np.abs(np.sin(xs / W * r.uniform(2, 5) + phase[2])) - amp * 0.1
            d.polygon([(float(x), float(y)) for x, y in zip(xs, ys)] + [(W + 5, hy + 2), (-5, hy + 2)], fill=col)

    def ground(self, d: ImageDraw.ImageDraw):
        cam, r, L = self.cam, self.rng, self.light
        z0, z1 = cam.z_near * 0.7, 600.0
        verge = {"highway": (95, 115, 65), "rural": (105, 120, 60), "urban": (120, 120, 118), "suburban": (95, 120, 70)}[self.env]
        if r.random() < 0.25:
            verge = (140, 125, 85)  # dry grass / dirt
        if self.weather == "snow":
            verge = (225, 228, 235)
        verge = P_jit(r, verge, 10)
        d.rectangle((0, cam.horizon, self.W, self.H), fill=L.shade(verge, 40))
        asphalt = P_jit(r, (88, 88, 92) if r.random() < 0.6 else (120, 118, 115), 8)
        if self.weather == "rain":
            asphalt = tuple(int(a * 0.7) for a in asphalt)
        self.asphalt = asphalt
        left = self.left_edge - (0.5 if self.n_opp else self.shoulder)
        right = self.right_edge + self.shoulder
        if self.sidewalk:
            walk = P_jit(r, (165, 162, 155), 10)
            d.polygon(ground_strip(cam, right, right + self.sidewalk, z0, z1), fill=L.shade(walk, 30))
            d.polygon(ground_strip(cam, left - self.sidewalk, left, z0, z1), fill=L.shade(walk, 30))
        d.polygon(ground_strip(cam, left, right, z0, z1), fill=L.shade(asphalt, 25))
        if self.median:
            med = (95, 120, 70) if r.random() < 0.5 else (150, 150, 145)
            d.polygon(ground_strip(cam, -self.median, 0.0, z0, z1), fill=L.shade(med, 30))
        for _ in range(int(r.integers(0, 4))):  # old repairs / stains: both classes
            x0 = r.uniform(left, right - 1)
            za = r.uniform(cam.z_near, 60)
            d.polygon(ground_strip(cam, x0, x0 + r.uniform(0.5, 3), za, za + r.uniform(1, 8), 6),
                      fill=L.shade(tuple(int(a * r.uniform(0.7, 0.9)) for a in asphalt), za))
        self.markings(d, z0)

    def markings(self, d, z0):
        cam, r, L = self.cam, self.rng, self.light
        if r.random() < 0.08:
            return  # unmarked road
        white = (235, 235, 230)
        yellow = (230, 185, 40)
        mw = r.uniform(0.1, 0.18)
        period, dash = r.uniform(9, 13), r.uniform(2.5, 4.5)
        phase = r.uniform(0, period)

        def solid(x, col):
            d.polygon(ground_strip(cam, x - mw / 2, x + mw / 2, z0, 400), fill=L.shade(col, 30, reflective=True))

        def dashed(x, col):
            z = z0 + phase
            while z < 160:
                d.polygon(ground_strip(cam, x - mw / 2, x + mw / 2, z, z + dash, 4), fill=L.shade(col, z, reflective=True))
                z += period

        solid(self.right_edge, white)
        for k in range(1, self.n_our):
            dashed(k * self.lane_w, white)
        if self.n_opp:
            centre = yellow if r.random() < 0.4 else white
            if self.median:
                solid(0.0, white)
                solid(-self.median, white)
            elif r.random() < 0.5:
                solid(-0.1, centre)
                solid(0.1, centre)
            else:
                dashed(0.0, centre)
            for k in range(1, self.n_opp):
                dashed(-self.median - k * self.lane_w, white)
            solid(self.left_edge, white)
        else:
            solid(0.0, white)

    # -- objects --------------------------------------------------------------------------------
    def add(self, z: float, what: str, roadwork: bool, fn: typing.Callable, *args, **kw):
        self.items.append((z, what, roadwork, lambda p, fn=fn, a=args, k=kw: fn(p, *a, **k)))

    def place(self, X: float, Z: float, what: str, roadwork: bool, fn, *args, **kw):
        if Z < self.cam.z_near * 0.9:
            return
        x, y = self.cam.project(X, Z)
        s = self.cam.scale(Z)
        self.add(Z, what, roadwork, fn, x, y, s, Z, *args, **kw)

    def traffic(self):
        r = self.rng
        n = int(r.poisson(3.0 if self.env == "urban" else 2.0))
        taken: typing.Dict[int, typing.List[float]] = {}
        for _ in range(n):
            opp = self.n_opp > 0 and r.random() < 0.4
            lane = int(r.integers(0, self.n_opp if opp else self.n_our))
            X = (-self.median - (lane + 0.5) * self.lane_w) if opp else (lane + 0.5) * self.lane_w
            key = -lane - 1 if opp else lane
            Z = r.uniform(7, 140)
            if any(abs(Z - z) < 10 for z in taken.get(key, [])):
                continue
            taken.setdefault(key, []).append(Z)
            kind = str(r.choice(["car"] * 6 + ["suv"] * 3 + ["van", "truck", "bus", "taxi", "school_bus"]))
            self.place(X + r.uniform(-0.3, 0.3), Z, "vehicle", False, P.vehicle, kind=kind, front=opp)
        if self.env in ("urban", "suburban"):
            for _ in range(int(r.poisson(2))):  # parked along the kerb
                Z = r.uniform(8, 80)
                self.place(self.right_edge + self.shoulder - 1.0, Z, "vehicle", False, P.vehicle,
                           kind=str(r.choice(["car", "suv", "van"])))

    def roadside(self):
        r, env = self.rng, self.env
        edge_r = self.right_edge + self.shoulder + self.sidewalk
        edge_l = self.left_edge - (0.5 if self.n_opp else self.shoulder) - self.sidewalk
        autumn = r.random() < 0.2
        sodium = r.random() < 0.5
        if env in ("rural", "suburban", "highway"):
            for _ in range(int(r.integers(3, 14))):
                side = r.choice([-1, 1])
                X = (edge_r + r.uniform(1.5, 15)) if side > 0 else (edge_l - r.uniform(1.5, 15))
                self.place(X, r.uniform(6, 200), "tree", False, P.tree, autumn=autumn and r.random() < 0.7,
                           conifer=r.random() < 0.25)
            for _ in range(int(r.integers(0, 5))):
                X = edge_r + r.uniform(0.5, 6) if r.random() < 0.6 else edge_l - r.uniform(0.5, 6)
                self.place(X, r.uniform(6, 100), "bush", False, P.bush)
        if env in ("urban", "suburban"):
            self.buildings(edge_l, edge_r)
            for _ in range(int(r.poisson(1.5))):
                X = edge_r - r.uniform(0.5, self.sidewalk) if r.random() < 0.6 else edge_l + r.uniform(0.5, self.sidewalk)
                self.place(X, r.uniform(6, 60), "pedestrian", False, P.person)
            if r.random() < 0.5:
                Z = r.uniform(15, 70)
                self.place(edge_r - 0.3, Z, "traffic_light", False, P.traffic_light)
        if env != "rural" or r.random() < 0.4:
            spacing, Z = r.uniform(25, 45), r.uniform(5, 25)
            side = 1 if r.random() < 0.7 else -1
            while Z < 220:
                X = edge_r + 0.4 if side > 0 else edge_l - 0.4
                self.place(X, Z, "street_light", False, P.street_light, side=side, sodium=sodium)
                Z += spacing
        if env == "highway" or (env == "rural" and r.random() < 0.3):
            self.guardrail(self.right_edge + self.shoulder + 0.3)
            if self.median:
                self.guardrail(-self.median / 2)
        if env in ("highway", "rural") and r.random() < 0.5:
            Z = r.uniform(4, 12)
            while Z < 120:
                self.place(self.right_edge + self.shoulder + 0.4, Z, "delineator", False, P.delineator)
                Z += 25 if env == "highway" else 50
        for _ in range(int(r.integers(0, 3))):  # regular signs: both classes
            kind = str(r.choice(["speed", "speed", "stop", "yield", "no_entry", "info_blue", "direction_green",
                                 "parking", "warn_yellow", "warn_triangle"]))
            X = edge_r + r.uniform(0.3, 2.0) if r.random() < 0.75 else edge_l - r.uniform(0.3, 2.0)
            self.place(X, r.uniform(6, 70), "sign_" + kind, False, P.sign, kind=kind)

    def guardrail(self, X: float):
        cam = self.cam
        z0, z1 = cam.z_near * 0.7, 300.0
        zs = _zs(z0, z1, 30)
        rail = [cam.project(X, z, 0.5) for z in zs] + [cam.project(X, z, 0.8) for z in zs[::-1]]
        posts = [z for z in np.arange(z0, 120.0, 4.0)]

        def draw(p):
            for z in posts:
                p.d.line([cam.project(X, z, 0.0), cam.project(X, z, 0.6)], fill=p.c((110, 110, 108), z),
                         width=max(1, int(0.12 * cam.scale(z))))
            p.d.polygon(rail, fill=p.c((175, 178, 180), 30, reflective=True))
            return None

        self.add(900.0, "guardrail", False, draw)

    def buildings(self, edge_l, edge_r):
        r, cam, L = self.rng, self.cam, self.light
        for side in (-1, 1):
            X = edge_r + r.uniform(0.5, 4) if side > 0 else edge_l - r.uniform(0.5, 4)
            Z = r.uniform(3, 15)
            while Z < 250:
                length, height = r.uniform(8, 30), r.uniform(5, 25)
                col = P_jit(r, [(175, 80, 60), (200, 190, 170), (150, 150, 155), (230, 225, 215), (120, 95, 80)][int(r.integers(0, 5))], 10)
                z0, z1 = Z, Z + length
                poly = [cam.project(X, z0), cam.project(X, z1), cam.project(X, z1, height), cam.project(X, z0, height)]
                lit = L.night
                wins = int(r.integers(2, 6))

                def draw(p, poly=poly, col=col, z0=z0, z1=z1, X=X, height=height, wins=wins, lit=lit):
                    p.d.polygon(poly, fill=p.c(col, (z0 + z1) / 2))
                    for i in range(wins):
                        for j in range(max(1, int(height / 3.5))):
                            za, zb = z0 + (z1 - z0) * (i + 0.25) / wins, z0 + (z1 - z0) * (i + 0.75) / wins
                            ha, hb = 1.2 + j * 3.2, 2.7 + j * 3.2
                            if hb > height - 0.5:
                                break
                            q = [cam.project(X, za, ha), cam.project(X, zb, ha), cam.project(X, zb, hb), cam.project(X, za, hb)]
                            on = lit and p.rng.random() < 0.4
                            p.d.polygon(q, fill=p.c((250, 210, 130) if on else (60, 70, 85), za, emissive=on))
                    return None

                self.add(z1 + 1000, "building", False, draw)  # facades first, behind everything else
                Z = z1 + r.uniform(0, 6)

    # -- roadwork -------------------------------------------------------------------------------
    def work_zone(self):
        r = self.rng
        layouts = ["lane_closure", "shoulder", "road_closed", "minimal", "lane_closure"]
        if self.env in ("urban", "suburban"):
            layouts += ["sidewalk", "sidewalk"]
        if self.n_opp:
            layouts.append("opposite")
        layout = str(r.choice(layouts))
        self.notes.append(layout.replace("_", " "))
        cone_col = P.ORANGE if r.random() < 0.8 else (P.RED if r.random() < 0.5 else (250, 210, 30))
        z0 = max(7.0, self.cam.z_near + 1.5) + min(30.0, r.exponential(7.0))
        length = r.uniform(20, 70)
        lw, re = self.lane_w, self.right_edge
        device = str(r.choice(["cone", "cone", "drum", "plastic_barrier"]))

        def put(X, z, k=0):
            if device == "cone":
                self.place(X, z, "cone", True, P.cone, colour=cone_col, height_m=r.uniform(0.5, 0.9))
            elif device == "drum":
                self.place(X, z, "drum", True, P.drum)
            else:
                self.place(X, z, "plastic_barrier", True, P.plastic_barrier, colour=P.RED if k % 2 else P.WHITE)

        def channel(X, za, zb, step):
            z, k = za, 0
            while z < zb:
                put(X, z, k)
                z, k = z + step, k + 1

        def crew(Xa, Xb, za, zb, n):
            for _ in range(n):
                self.place(r.uniform(Xa, Xb), r.uniform(za, zb), "worker", True, P.person, worker=True,
                           vest=P.HIVIS_YELLOW if r.random() < 0.6 else P.HIVIS_ORANGE)

        def machine(X, z):
            k = str(r.choice(["excavator", "dump_truck", "roller", "arrow_truck"]))
            if k == "excavator":
                self.place(X, z, k, True, P.excavator, facing=int(r.choice([-1, 1])))
            elif k == "dump_truck":
                self.place(X, z, k, True, P.dump_truck, rear=r.random() < 0.6)
            elif k == "roller":
                self.place(X, z, k, True, P.roller)
            else:
                self.place(X, z, "arrow_board", True, P.arrow_board, direction=-1)

        def warning_sign(X, z):
            kind = str(r.choice(["rw_triangle", "rw_diamond", "rw_diamond", "rw_text", "detour"]))
            text = str(r.choice(["", "", "ROAD WORK AHEAD", "BAUSTELLE", "OBRAS", "WORKERS AHEAD"])) if kind == "rw_diamond" else \
                str(r.choice(["ROAD WORK", "LANE CLOSED", "ROAD CLOSED", "WORK ZONE"])) if kind == "rw_text" else ""
            self.place(X, z, "sign_" + kind, True, P.sign, kind=kind, text=text)

        if layout == "lane_closure":
            right = r.random() < 0.7 or self.n_our == 1
            Xc = (re - lw) if right else lw
            inner = Xc if right else 0.0
            taper = r.uniform(10, 25)
            for i in range(6):  # taper across the lane
                t = i / 5
                Xt = (re - t * lw) if right else (t * lw)
                put(Xt, z0 + t * taper, i)
            channel(Xc, z0 + taper, z0 + taper + length, r.uniform(3, 8))
            if r.random() < 0.6:
                self.place(re - lw / 2 if right else lw / 2, z0 + 2, "arrow_board", True, P.arrow_board,
                           direction=-1 if right else 1)
            za, zb = z0 + taper + 3, z0 + taper + length
            crew(inner + 0.5 if right else 0.5, re - 0.5 if right else lw - 0.5, za, zb, int(r.integers(0, 4)))
            if r.random() < 0.7:
                machine(re - lw / 2 if right else lw / 2, r.uniform(za, zb))
            if r.random() < 0.4:
                self.place(re - lw / 2 if right else lw / 2, r.uniform(za, zb), "gravel_pile", True, P.gravel_pile)
            self.dig(re - lw + 0.4 if right else 0.4, re - 0.4 if right else lw - 0.4, za, zb)
            if r.random() < 0.7:
                warning_sign(re + self.shoulder + 0.6, max(self.cam.z_near + 1, z0 - r.uniform(-5, 25)))
        elif layout == "shoulder":
            Xs = re + min(0.4, self.shoulder / 2)
            channel(Xs, z0, z0 + length, r.uniform(4, 9))
            side = re + self.shoulder + r.uniform(0.5, 3)
            crew(re + 0.3, side, z0, z0 + length, int(r.integers(1, 4)))
            if r.random() < 0.6:
                machine(side + 1.0, r.uniform(z0, z0 + length))
            if r.random() < 0.6:
                warning_sign(side, max(self.cam.z_near + 1, z0 - r.uniform(0, 20)))
        elif layout == "sidewalk":
            Xa, Xb = re + self.shoulder + 0.3, re + self.shoulder + max(0.8, self.sidewalk - 0.3)
            z = z0
            mesh = r.random() < 0.5
            while z < z0 + min(length, 35):
                self.place(Xa, z, "fence", True, P.fence_panel, orange_mesh=mesh)
                z += 2.6
            if r.random() < 0.7:
                self.place((Xa + Xb) / 2, z0 - 1, "barricade", True, P.barricade, width_m=r.uniform(1.2, 2.0),
                           red=r.random() < 0.5)
            crew(Xa, Xb, z0, z0 + 30, int(r.integers(1, 3)))
            self.dig(Xa, Xb, z0, z0 + 15)
            if r.random() < 0.5:
                machine(re - lw / 2, z0 + r.uniform(3, 25))
            if r.random() < 0.7:
                warning_sign(Xb, max(self.cam.z_near + 1, z0 - 3))
        elif layout == "road_closed":
            zc = r.uniform(max(10.0, self.cam.z_near + 3), 50)
            X = self.left_edge + 1.0
            while X < re:
                self.place(X + 0.8, zc + r.uniform(-0.5, 0.5), "barricade", True, P.barricade, width_m=r.uniform(1.6, 2.6),
                           red=r.random() < 0.4, lamp=r.random() < 0.6)
                X += r.uniform(2.6, 4.0)
            channel(self.cam.cam_x + r.uniform(-2, 2), zc - r.uniform(6, 12), zc - 1, 2.5)
            self.place(self.cam.cam_x + r.uniform(-1, 1), zc + 1.5, "sign_rw_text", True, P.sign, kind=str(r.choice(["rw_text", "detour"])),
                       text=str(r.choice(["ROAD CLOSED", "DETOUR", "STRASSE GESPERRT"])))
            if r.random() < 0.5:
                machine(self.cam.cam_x + r.uniform(-3, 3), zc + r.uniform(6, 20))
        elif layout == "opposite":
            Xo = -self.median - self.lane_w / 2
            channel(-self.median - 0.3, z0, z0 + length, r.uniform(3, 7))
            crew(Xo - 1.5, Xo + 1.5, z0 + 3, z0 + length, int(r.integers(1, 4)))
            if r.random() < 0.7:
                machine(Xo, r.uniform(z0 + 5, z0 + length))
            if r.random() < 0.5:
                warning_sign(self.left_edge - 1.0, z0 + r.uniform(0, 10))
        else:  # minimal: a sign and/or a few devices, the hard positives
            what = str(r.choice(["sign_cones", "barricade", "cones", "worker_sign"]))
            z = r.uniform(max(8.0, self.cam.z_near + 2), 30)
            Xm = re + min(0.5, self.shoulder / 2)
            if what in ("sign_cones", "worker_sign"):
                warning_sign(re + self.shoulder + 0.8, z)
            if what in ("sign_cones", "cones"):
                channel(Xm, z + 2, z + 2 + r.uniform(6, 20), r.uniform(3, 6))
            if what == "barricade":
                self.place(Xm + 0.5, z, "barricade", True, P.barricade, red=r.random() < 0.5)
            if what == "worker_sign":
                crew(Xm, Xm + 2, z, z + 10, 1)

    def dig(self, Xa, Xb, za, zb):
        r, cam = self.rng, self.cam
        if r.random() < 0.5 or zb <= za:
            return
        x0 = r.uniform(Xa, max(Xa, Xb - 1))
        x1 = min(Xb, x0 + r.uniform(1, 3))
        z0 = r.uniform(za, max(za, zb - 3))
        z1 = z0 + r.uniform(2, 8)
        col = (95, 75, 55) if r.random() < 0.6 else (35, 35, 38)
        poly = ground_strip(cam, x0, x1, z0, z1, 6)
        self.add(z1 + 0.01, "excavation", True, lambda p: (p.d.polygon(poly, fill=p.c(col, z0)), None)[1])

    # -- compose --------------------------------------------------------------------------------
    def draw_items(self, img: Image.Image):
        d = ImageDraw.Draw(img, "RGBA")
        painter = P.Painter(d, self.light, self.rng)
        for z, kind, roadwork, fn in sorted(self.items, key=lambda t: -t[0]):
            box = fn(painter)
            if box is not None:
                self.objects.append(SceneObject(kind, tuple(float(v) for v in box), roadwork, float(z)))

    def visible_roadwork_fraction(self) -> float:
        """Roadwork box area inside the central square of the frame, as a fraction of it."""
        side = min(self.W, self.H)
        cx0, cy0 = (self.W - side) / 2, (self.H - side) / 2
        area = 0.0
        for o in self.objects:
            if not o.roadwork:
                continue
            x0, y0, x1, y1 = o.box
            x0, y0, x1, y1 = max(cx0, x0), max(cy0, y0), min(cx0 + side, x1), min(cy0 + side, y1)
            if x1 > x0 and y1 > y0:
                area += (x1 - x0) * (y1 - y0)
        return area / (side * side)


def P_jit(rng: np.random.Generator, rgb, amount: float):
    n = rng.normal(0, amount, 3)
    return tuple(int(min(255, max(0, rgb[i] + n[i]))) for i in range(3))


def _post(img: Image.Image, b: _Builder) -> Image.Image:
    import cv2

    r, W, H = b.rng, b.W, b.H
    if b.weather in ("rain", "snow"):
        d = ImageDraw.Draw(img, "RGBA")
        n = int(W * H / (2500 if b.weather == "rain" else 1500))
        xs, ys = r.uniform(0, W, n), r.uniform(0, H, n)
        for x, y in zip(xs, ys):
            if b.weather == "rain":
                d.line([(x, y), (x - 2, y + r.uniform(8, 20))], fill=(200, 205, 215, 70), width=1)
            else:
                rr = r.uniform(0.8, 2.5)
                d.ellipse((x - rr, y - rr, x + rr, y + rr), fill=(245, 245, 250, 170))
    arr = np.asarray(img)
    if abs(b.roll) > 0.3:  # camera roll: rotate and zoom just enough to hide the corners
        t = math.radians(abs(b.roll))
        k = math.cos(t) + max(W / H, H / W) * math.sin(t)
        m = cv2.getRotationMatrix2D((W / 2, H / 2), b.roll, k)
        arr = cv2.warpAffine(arr, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if b.synthetic:
        arr = cv2.GaussianBlur(arr, (0, 0), r.uniform(0.6, 1.3)).astype(np.float32)
        mean = arr.mean(axis=2, keepdims=True)
        arr = mean + (arr - mean) * np.float32(r.uniform(1.05, 1.3))
    else:
        vx = ((np.arange(W, dtype=np.float32) - W / 2) / (W / 2)) ** 2
        vy = ((np.arange(H, dtype=np.float32) - H / 2) / (H / 2)) ** 2
        vig = 1 - np.float32(r.uniform(0.05, 0.3) * 0.5) * (vy[:, None] + vx[None, :])
        arr = arr.astype(np.float32) * vig[..., None]
        arr += r.standard_normal((H, W, 1), dtype=np.float32) * np.float32(r.uniform(1.5, 5))
        arr = cv2.GaussianBlur(np.clip(arr, 0, 255), (0, 0), r.uniform(0.3, 0.9))
    arr = arr * np.float32(r.uniform(0.85, 1.15)) + np.float32(r.uniform(-12, 12))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if not b.synthetic:
        d = ImageDraw.Draw(img, "RGBA")
        if r.random() < 0.25:  # the car's hood
            top = H * r.uniform(0.88, 0.95)
            pts = [(x, top + (H - top) * 0.6 * ((x - W / 2) / (W / 2)) ** 2) for x in np.linspace(0, W, 20)]
            d.polygon(pts + [(W, H), (0, H)], fill=(18, 18, 20, 255))
        if r.random() < 0.4:  # timestamp overlay
            font = P.Painter(d, b.light, r).font(H * 0.03)
            txt = (f"20{r.integers(19, 26)}/{r.integers(1, 13):02d}/{r.integers(1, 29):02d} "
                   f"{r.integers(0, 24):02d}:{r.integers(0, 60):02d}:{r.integers(0, 60):02d}  {r.integers(0, 120)} km/h")
            d.text((W * 0.02, H * 0.95), txt, font=font, fill=(255, 255, 255, 230), anchor="ls",
                   stroke_width=1, stroke_fill=(0, 0, 0, 200))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(r.integers(80, 96)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def render_scene(label: int, seed: int, size: typing.Optional[typing.Tuple[int, int]] = None,
                 synthetic: bool = False) -> Scene:
    """Render one scene. ``size`` defaults to a dashcam size (real) or 1024x1024 (synthetic)."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    rng = np.random.default_rng(seed)
    if size is None:
        size = SYNTHETIC_SIZE if synthetic else REAL_SIZES[int(rng.integers(0, len(REAL_SIZES)))]
    b = _Builder(label, rng, size, synthetic)
    b.setup()
    sky = b.sky()
    img = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img, "RGBA")
    b.skyline(d)
    b.ground(d)
    _haze_ground(img, b)
    b.traffic()
    b.roadside()
    if label == 1:
        b.work_zone()
    base = img.copy() if label == 1 else img
    b.draw_items(img)
    tries = 0
    need = HARD_ROADWORK_AREA if rng.random() < HARD_FRACTION else MIN_ROADWORK_AREA
    while label == 1 and b.visible_roadwork_fraction() < need and tries < 3:
        # the work zone ended up out of view or too far: add devices in the lane ahead and redraw
        z = rng.uniform(max(8.0, b.cam.z_near + 2), 22)
        x = b.cam.cam_x + rng.uniform(-0.6, 0.6) * b.lane_w
        drum = rng.random() < 0.3
        for i in range(int(rng.integers(3, 7))):
            if drum:
                b.place(x + i * 0.5, z + i * 2.5, "drum", True, P.drum)
            else:
                b.place(x + i * 0.5, z + i * 2.5, "cone", True, P.cone)
        if rng.random() < 0.5:
            b.place(x + rng.uniform(-2, 2), z + rng.uniform(2, 10), "worker", True, P.person, worker=True)
        img, b.objects = base.copy(), []
        b.draw_items(img)
        tries += 1
    img = _post(img, b)
    desc = _describe(b)
    params = {"time": b.time, "weather": b.weather, "environment": b.env, "lanes": b.n_our + b.n_opp,
              "size": list(size), "synthetic": synthetic, "seed": int(seed), "roll": b.roll,
              "layout": b.notes[0] if b.notes else None}
    return Scene(image=img, label=label, objects=b.objects, params=params, description=desc)


def _haze_ground(img: Image.Image, b: _Builder) -> None:
    """Aerial perspective on the ground: rows near the horizon fade to the fog colour."""
    hy = int(max(0, b.cam.horizon))
    ground = np.asarray(img.crop((0, hy, b.W, b.H))).astype(np.float32)
    rows = np.arange(hy, b.H, dtype=np.float32)
    z = b.cam.f * b.cam.cam_h / np.maximum(rows - b.cam.horizon, 0.5)
    k = (1 - np.exp(-b.light.fog_k * np.minimum(z, 800))).astype(np.float32)[:, None, None]
    ground = ground * (1 - k) + np.array(b.light.fog_rgb, np.float32) * k
    img.paste(Image.fromarray(np.clip(ground, 0, 255).astype(np.uint8)), (0, hy))


def _describe(b: _Builder) -> str:
    kinds: typing.Dict[str, int] = {}
    for o in b.objects:
        if o.roadwork:
            kinds[o.kind] = kinds.get(o.kind, 0) + 1
    base = f"{b.time} {b.weather} {b.env} road, {b.n_our + b.n_opp} lanes"
    if not kinds:
        return base + ", no roadwork"
    return base + ", roadwork: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))


class SceneGenerator:
    """A seeded stream of scenes; each scene's seed is drawn from the stream."""

    def __init__(self, seed: typing.Optional[int] = None, real_sizes=REAL_SIZES, synthetic_size=SYNTHETIC_SIZE):
        self.rng = np.random.default_rng(seed)
        self.real_sizes = tuple(real_sizes)
        self.synthetic_size = synthetic_size

    def sample(self, label: typing.Optional[int] = None, synthetic: bool = False) -> Scene:
        if label is None:
            label = int(self.rng.integers(0, 2))
        seed = int(self.rng.integers(0, 2 ** 31 - 1))
        size = self.synthetic_size if synthetic else self.real_sizes[int(self.rng.integers(0, len(self.real_sizes)))]
        return render_scene(label, seed, size=size, synthetic=synthetic)
