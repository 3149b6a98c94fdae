"""Procedurally drawn image-caption data: kubeclip's embedded default, so `dvc repro` runs offline.

Scenes hold 1-4 saturated shapes on plain, gradient or noisy backgrounds; every caption is built from
the scene itself, so it is true by construction. A few (colour, shape) pairs are held out of training
and form a zero-shot composition test; a counting test checks number words. Each sample draws from
its own RNG, seeded by (seed, stream, index), so any sample can be made alone and workers can split
the index range freely. This module only makes PIL images and strings; writing shards is elsewhere.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageChops, ImageDraw

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
SIZES = ("small", "large")
TEXTURES = ("solid", "striped", "dotted")
BACKGROUNDS = ("grey", "slate", "teal", "beige")  # muted and mid-bright, so every object colour stands out
COUNT_CLASSES = ("one shape", "two shapes", "three shapes", "four shapes")
# Prompt templates (placeholder {c}) that the evaluation sets' class names are meant to fill.
COMPOSITION_TEMPLATES = ("a photo of a {c}.", "a picture of a {c}.", "there is a {c}.", "a {c} on a background.")
COUNT_TEMPLATES = ("a photo of {c}.", "a picture of {c}.", "{c}.", "{c} on a background.")

_RGB = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 225), "yellow": (250, 220, 30),
        "purple": (140, 40, 190), "orange": (250, 130, 20), "white": (245, 245, 245), "black": (15, 15, 15)}
_BACKGROUND_RGB = {"grey": (128, 128, 128), "slate": (95, 105, 130), "teal": (55, 125, 125), "beige": (175, 160, 125)}
_RADIUS = {"small": 0.11, "large": 0.18}  # fraction of the image side
_CELL_CENTRES = (0.2, 0.5, 0.8)  # a 3x3 grid of positions
_CELL_NAMES = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))
_WHERE = {"top": "at the top", "bottom": "at the bottom", "left": "on the left", "right": "on the right"}
_COUNT_WORDS = ("one", "two", "three", "four")
_PREFIXES = ("a photo of", "a picture of", "an image of")
_TRAIN, _COMPOSITION, _COUNT, _HELDOUT = range(4)  # RNG streams: the sets never share a sample
_T = TypeVar("_T")


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape; captions and tests read these instead of the pixels."""
    colour: str
    shape: str
    size: str
    texture: str
    position: str  # a name from _CELL_NAMES
    x: float  # centre, as fractions of the image side
    y: float
    angle: float  # degrees
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Background:
    """What lies behind the objects; `phrase` is how captions name it."""
    kind: str  # "plain", "gradient" or "noise"
    names: tuple[str, ...]  # from BACKGROUNDS; two for a gradient
    rgb: tuple[tuple[int, int, int], ...]
    variant: int  # gradient direction or noise seed

    @property
    def phrase(self) -> str:
        if self.kind == "gradient":
            return f"{self.names[0]} and {self.names[1]} gradient background"
        return f"{'noisy ' if self.kind == 'noise' else ''}{self.names[0]} background"


@dataclass(frozen=True)
class SyntheticImage:
    key: str
    image: Image.Image  # RGB, size x size
    captions: list[str]  # 3-4 distinct; the first names every object
    objects: tuple[SceneObject, ...] = ()
    background: Background | None = None


@dataclass(frozen=True)
class LabelledImage:
    key: str
    image: Image.Image
    label: int  # 0-based index into the set's class names
    objects: tuple[SceneObject, ...] = ()


def heldout_compositions(seed: int = 0) -> tuple[tuple[str, str], ...]:
    """(colour, shape) pairs kept out of training: each colour loses exactly one shape and each shape
    one or two colours (a shuffled diagonal), so every word still appears in training."""
    rng = np.random.default_rng([seed, _HELDOUT])
    colours, shapes = rng.permutation(len(COLOURS)), rng.permutation(len(SHAPES))
    pairs = {(COLOURS[c], SHAPES[shapes[k % len(SHAPES)]]) for k, c in enumerate(colours)}
    return tuple(sorted(pairs, key=lambda p: (COLOURS.index(p[0]), SHAPES.index(p[1]))))


@functools.lru_cache(maxsize=16)
def _allowed_pairs(seed: int) -> tuple[tuple[str, str], ...]:
    heldout = set(heldout_compositions(seed))
    return tuple(p for p in itertools.product(COLOURS, SHAPES) if p not in heldout)


def training_pair(index: int, seed: int = 0, size: int = 128) -> SyntheticImage:
    """Training sample `index`, made without making any other."""
    rng = np.random.default_rng([seed, _TRAIN, index])
    objects = _place(rng, _training_kinds(rng, _allowed_pairs(seed)))
    background = _sample_background(rng)
    return SyntheticImage(f"syn-{index:07d}", render(objects, background, size),
                          _captions(objects, background, rng), objects, background)


def training_pairs(samples: int, seed: int = 0, size: int = 128) -> Iterator[SyntheticImage]:
    """Samples 0..samples-1; any slice of the range gives the same samples (see `training_pair`)."""
    return (training_pair(i, seed, size) for i in range(samples))


def composition_set(samples_per_class: int, seed: int = 0,
                    size: int = 128) -> tuple[list[str], Iterator[LabelledImage]]:
    """Zero-shot test on the held-out pairs: classes like "red circle" (fill COMPOSITION_TEMPLATES), one
    object per image. Labels cycle 0, 1, ..., so any prefix of the iterator is nearly balanced."""
    classes = [f"{c} {s}" for c, s in heldout_compositions(seed)]
    return classes, (composition_sample(i, seed, size) for i in range(samples_per_class * len(classes)))


def composition_sample(index: int, seed: int = 0, size: int = 128) -> LabelledImage:
    """Item `index` of composition_set, made alone."""
    pairs = heldout_compositions(seed)
    rng = np.random.default_rng([seed, _COMPOSITION, index])
    objects = _place(rng, [pairs[index % len(pairs)]])
    image = render(objects, _sample_background(rng), size)
    return LabelledImage(f"syncomp-{index:07d}", image, index % len(pairs), objects)


def count_set(samples_per_class: int, seed: int = 0, size: int = 128) -> tuple[list[str], Iterator[LabelledImage]]:
    """Counting test: classes COUNT_CLASSES ("one shape" ... "four shapes"; fill COUNT_TEMPLATES), each
    image showing that many copies of one training (colour, shape). Labels cycle as in composition_set."""
    return list(COUNT_CLASSES), (count_sample(i, seed, size) for i in range(samples_per_class * len(COUNT_CLASSES)))


def count_sample(index: int, seed: int = 0, size: int = 128) -> LabelledImage:
    """Item `index` of count_set, made alone."""
    rng = np.random.default_rng([seed, _COUNT, index])
    label = index % len(COUNT_CLASSES)
    objects = _place(rng, [_pick(rng, _allowed_pairs(seed))] * (label + 1))
    image = render(objects, _sample_background(rng), size)
    return LabelledImage(f"syncount-{index:07d}", image, label, objects)


# Scenes


def _pick(rng: np.random.Generator, items: Sequence[_T]) -> _T:
    return items[int(rng.integers(len(items)))]


def _spread(cells: Sequence[tuple[int, int]]) -> bool:
    """No two cells share an edge, so even two large objects barely touch and stay countable."""
    return all(abs(a[0] - b[0]) + abs(a[1] - b[1]) != 1 for a, b in itertools.combinations(cells, 2))


_LAYOUTS = {n: [c for c in itertools.combinations(itertools.product(range(3), range(3)), n) if _spread(c)]
            for n in range(1, 5)}


def _training_kinds(rng: np.random.Generator, allowed: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """1-4 (colour, shape) kinds; later objects often repeat an earlier kind so count words occur."""
    n = 1 + int(rng.choice(4, p=(0.35, 0.3, 0.2, 0.15)))
    kinds = [_pick(rng, allowed)]
    for _ in range(n - 1):
        kinds.append(_pick(rng, kinds) if rng.random() < 0.4 else _pick(rng, allowed))
    return kinds


def _place(rng: np.random.Generator, kinds: Sequence[tuple[str, str]]) -> tuple[SceneObject, ...]:
    """One object per kind, in grid cells no two of which share an edge; size, place and colour jittered."""
    layout = _pick(rng, _LAYOUTS[len(kinds)])
    cells = [layout[i] for i in rng.permutation(len(layout))]
    objects = []
    for (colour, shape), (row, col) in zip(kinds, cells):
        size, texture = _pick(rng, SIZES), _pick(rng, TEXTURES)
        r = _RADIUS[size]
        x, y = (float(np.clip(_CELL_CENTRES[i] + rng.uniform(-0.02, 0.02), r + 0.02, 0.98 - r)) for i in (col, row))
        rgb = tuple(int(v) for v in np.clip(np.add(_RGB[colour], rng.integers(-12, 13, 3)), 0, 255))
        objects.append(SceneObject(colour, shape, size, texture, _CELL_NAMES[row][col], x, y,
                                   float(rng.uniform(-15, 15)), rgb))
    return tuple(objects)


def _sample_background(rng: np.random.Generator) -> Background:
    kind = _pick(rng, ("plain", "plain", "gradient", "noise"))
    order = rng.permutation(len(BACKGROUNDS))[: 2 if kind == "gradient" else 1]
    names = tuple(BACKGROUNDS[i] for i in order)
    rgb = tuple(tuple(int(v) for v in np.clip(np.add(_BACKGROUND_RGB[n], rng.integers(-10, 11, 3)), 0, 255))
                for n in names)
    return Background(kind, names, rgb, int(rng.integers(2**31)))


# Captions


def _groups(objects: Sequence[SceneObject]) -> list[list[SceneObject]]:
    """Objects sharing colour and shape, described together ("two red circles")."""
    groups: dict[tuple[str, str], list[SceneObject]] = {}
    for obj in objects:
        groups.setdefault((obj.colour, obj.shape), []).append(obj)
    return list(groups.values())


def _phrase(group: Sequence[SceneObject], rng: np.random.Generator, detail: float) -> str:
    """'a large striped red circle' or 'two blue squares'; mentions size or texture only when the whole
    group shares it, each with probability `detail`, so captions vary in how much they say."""
    words = []
    for attribute in ("size", "texture"):
        values = {getattr(obj, attribute) for obj in group}
        chance = detail / 4 if values == {"solid"} else detail  # "solid" is the unremarkable default
        if len(values) == 1 and rng.random() < chance:
            words.append(values.pop())
    words += [group[0].colour, _plural(group[0].shape) if len(group) > 1 else group[0].shape]
    head = ("an" if words[0][0] in "aeiou" else "a") if len(group) == 1 else _COUNT_WORDS[len(group) - 1]
    return " ".join([head, *words])


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith("s") else "s")


def _where(group: Sequence[SceneObject]) -> str:
    """' in the top left' for a single object; groups span several cells, so they get no place."""
    if len(group) > 1:
        return ""
    position = group[0].position
    return f" {_WHERE.get(position, 'in the ' + position)}"


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def _relation(a: SceneObject, b: SceneObject) -> str:
    """Where a lies from b, along the axis on which they differ most."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dy) > abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def _captions(objects: Sequence[SceneObject], background: Background, rng: np.random.Generator) -> list[str]:
    """Four true descriptions of the scene in different styles; the first names every object."""
    groups = _groups(objects)
    shuffled = [groups[i] for i in rng.permutation(len(groups))]
    bg = background.phrase

    def listing(detail: float) -> str:
        return _join([_phrase(g, rng, detail) for g in groups])

    first = f"{listing(0.5)} on a {bg}" if rng.random() < 0.5 else listing(0.5)
    there = f"there {'is' if len(shuffled[0]) == 1 else 'are'} " + _join(
        [_phrase(g, rng, 0.3) + _where(g) for g in shuffled])
    total = f"{_COUNT_WORDS[len(objects) - 1]} {'shape' if len(objects) == 1 else 'shapes'}"
    counted = f"{total}: {listing(0.3)}" if rng.random() < 0.6 else f"{total} on a {bg}"
    if len(shuffled) == 2 and len(shuffled[0]) == len(shuffled[1]) == 1 and rng.random() < 0.7:
        a, b = shuffled
        styled = f"{_phrase(a, rng, 0.3)} {_relation(a[0], b[0])} {_phrase(b, rng, 0.3)}"
    else:
        styled = f"{_pick(rng, _PREFIXES)} {listing(0.7)} on a {bg}"
    return list(dict.fromkeys([first, there, counted, styled]))


# Drawing


def _unit_outline(shape: str) -> np.ndarray:
    """Polygon of a shape centred on the origin with radius about 1; circles are drawn as ellipses."""
    def star_points(n: int, radii: Sequence[float]) -> np.ndarray:
        t = np.deg2rad(-90 + 360 / n * np.arange(n))
        return np.stack([np.cos(t), np.sin(t)], 1) * np.resize(radii, n)[:, None]

    if shape == "square":
        return np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)])
    if shape == "triangle":
        return star_points(3, [1.2]) + (0, 0.3)  # centre the bounding box, not the centroid
    if shape == "star":
        return star_points(10, [1.05, 0.45])
    if shape == "cross":
        a, w = 0.95, 0.32
        return np.array([(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w),
                         (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)])
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([16 * np.sin(t) ** 3, y - 2.5], 1) / 15
    raise ValueError(f"no outline for shape {shape!r}")


_OUTLINES = {shape: _unit_outline(shape) for shape in SHAPES if shape != "circle"}


def _mask(obj: SceneObject, side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = obj.x * side, obj.y * side, _RADIUS[obj.size] * side
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        a = np.deg2rad(obj.angle)
        rotated = _OUTLINES[obj.shape] @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        draw.polygon([(float(px), float(py)) for px, py in rotated * r + (cx, cy)], fill=255)
    return mask


@functools.lru_cache(maxsize=16)
def _pattern(texture: str, side: int) -> Image.Image:
    """Where a texture shows its second shade: diagonal stripes or a grid of dots, ~2 px wide at 64 px."""
    yy, xx = np.mgrid[:side, :side]
    period = max(4, side // 12)
    if texture == "striped":
        on = (xx + yy) % period < period / 2
    else:
        offset = xx % period - period / 2, yy % period - period / 2
        on = offset[0] ** 2 + offset[1] ** 2 <= (0.3 * period) ** 2
    return Image.fromarray(np.where(on, 255, 0).astype(np.uint8), "L")


def _shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The texture's second colour: the object's own colour, lightened if dark, darkened if light."""
    target = 255 if sum(rgb) < 3 * 110 else 0
    return tuple(int(v + 0.55 * (target - v)) for v in rgb)


def _background(background: Background, side: int) -> Image.Image:
    if background.kind == "plain":
        return Image.new("RGB", (side, side), background.rgb[0])
    if background.kind == "gradient":
        dx, dy = ((1, 0), (0, 1), (1, 1), (1, -1))[background.variant % 4]
        ramp = np.linspace(0, 1, side, dtype=np.float32)
        t = ((dx * ramp[None, :] + dy * ramp[:, None] - min(dy, 0)) / (dx + abs(dy)))[..., None]
        start, end = np.array(background.rgb, dtype=np.float32)
        pixels = start + t * (end - start)
    else:
        noise = np.random.default_rng(background.variant).integers(-25, 26, (side, side, 1), dtype=np.int16)
        pixels = np.array(background.rgb[0], dtype=np.int16) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def render(objects: Sequence[SceneObject], background: Background, size: int) -> Image.Image:
    """The scene as an RGB image, drawn in order (later objects on top); a pure function of its inputs."""
    canvas = _background(background, size)
    for obj in objects:
        mask = _mask(obj, size)
        canvas.paste(obj.rgb, mask=mask)
        if obj.texture != "solid":
            canvas.paste(_shade(obj.rgb), mask=ImageChops.multiply(mask, _pattern(obj.texture, size)))
    return canvas
