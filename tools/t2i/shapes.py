"""The procedural captioned image set of the demo text-to-image model ("act-shapes").

Every image is 64 × 64 RGB: one object (a shape in a colour, at a size and a position) on a
plain light background, drawn in one of four styles that the caption names (or not, for the
plain style):

- plain:      a flat-filled shape on a light, slightly tinted background;
- neon:       a glowing outline of the shape in its colour on a near-black background
              (caption suffix ", neon style");
- pixel art:  the shape on a 16 × 16 grid of 4-pixel blocks, with a dark one-block outline
              (", pixel art");
- sketch:     grey pencil outline and diagonal hatching on paper, no colour (", pencil sketch").

Captions: "a [size] [colour] shape [position][, style]". The colour is left out of 15 % of the
captions: the object is then drawn in the neutral grey (`NEUTRAL`), the colour a thing has
when nobody names one (the paper's "an elephant" is grey, its "pink elephant" is not). Concept
negation ("a red circle" → "a circle") thus has one place to go, not a mixture of every
colour, which an affine per-neuron map can only reach in its middle. The size and the position are named only
when they are not the default (medium, centre) and otherwise drawn from the default. Four
colour × shape pairs never occur in training (HELD_OUT): the held-out check of issue 17
generates them.

The measurable statistics of these pictures (dominant colour, shape by fill ratio and row
profile, background darkness, blockiness, saturation) are implemented in Rust in
`src/pipeline/image_stats.rs`; `colour_of` below is the training-time twin of its colour rule,
used only to decide when the VAE is good enough.
"""

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 64
COLOURS = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 215, 30),
    "green": (40, 165, 50),
    "cyan": (30, 195, 210),
    "blue": (35, 70, 220),
    "purple": (140, 45, 190),
    "pink": (245, 130, 190),
}
# The colour of an object whose caption names none (never a caption word).
NEUTRAL = (128, 128, 128)
SHAPES = ["circle", "square", "triangle", "cross"]
SIZES = {"small": (14, 18), None: (22, 28), "large": (34, 40)}
POSITIONS = {
    None: (0, 0),
    "on the left": (-14, 0),
    "on the right": (14, 0),
    "at the top": (0, -14),
    "at the bottom": (0, 14),
}
STYLES = {None: "", "neon": ", neon style", "pixel": ", pixel art", "sketch": ", pencil sketch"}
STYLE_WEIGHTS = {None: 0.52, "neon": 0.16, "pixel": 0.16, "sketch": 0.16}
HELD_OUT = {("red", "triangle"), ("blue", "circle"), ("green", "cross"), ("yellow", "square")}


def caption(colour, shape, size, position, style, name_colour=True):
    words = ["a"]
    if size:
        words.append(size)
    if name_colour:
        words.append(colour)
    words.append(shape)
    text = " ".join(words)
    if position:
        text += " " + position
    return text + STYLES[style]


def sample_spec(rng, allow_held_out=False):
    """One random picture description: (colour, shape, size, position, style, name_colour)."""
    while True:
        colour = rng.choice(list(COLOURS))
        shape = rng.choice(SHAPES)
        if allow_held_out or (colour, shape) not in HELD_OUT:
            break
    size = rng.choice([None, None, "small", "large"])
    position = rng.choice([None, None, "on the left", "on the right", "at the top", "at the bottom"])
    styles = list(STYLE_WEIGHTS)
    style = styles[rng.choice(len(styles), p=list(STYLE_WEIGHTS.values()))]
    name_colour = rng.random() >= 0.15
    return colour, shape, size, position, style, name_colour


def shape_points(shape, cx, cy, r):
    """Polygon (or bounding box for circles) of a shape of half-size r centred at (cx, cy)."""
    if shape == "circle":
        return [cx - r, cy - r, cx + r, cy + r]
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    a = r / 3.0  # cross: arms one third of the side wide
    return [
        (cx - a, cy - r), (cx + a, cy - r), (cx + a, cy - a), (cx + r, cy - a),
        (cx + r, cy + a), (cx + a, cy + a), (cx + a, cy + r), (cx - a, cy + r),
        (cx - a, cy + a), (cx - r, cy + a), (cx - r, cy - a), (cx - a, cy - a),
    ]


def draw_shape(d, shape, pts, fill=None, outline=None, width=1):
    if shape == "circle":
        d.ellipse(pts, fill=fill, outline=outline, width=width)
    elif fill is not None:
        d.polygon(pts, fill=fill)
    if shape != "circle" and outline is not None:
        d.line(list(pts) + [pts[0]], fill=outline, width=width, joint="curve")


def jitter(rng, rgb, amount=14):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def render(spec, rng):
    """Draws a spec. Returns (uint8 [64, 64, 3], float32 [64, 64] object mask)."""
    colour, shape, size, position, style, name_colour = spec
    lo, hi = SIZES[size]
    r = rng.uniform(lo, hi) / 2.0
    dx, dy = POSITIONS[position]
    cx = SIZE / 2 + dx + rng.uniform(-3, 3)
    cy = SIZE / 2 + dy + rng.uniform(-3, 3)
    cx, cy = (float(np.clip(c, r + 1, SIZE - 1 - r)) for c in (cx, cy))  # whole object in view
    rgb = jitter(rng, COLOURS[colour] if name_colour else NEUTRAL)
    pts = shape_points(shape, cx, cy, r)

    mask_img = Image.new("L", (SIZE, SIZE), 0)
    draw_shape(ImageDraw.Draw(mask_img), shape, pts, fill=255)
    mask = np.asarray(mask_img, dtype=np.float32) / 255.0

    if style == "neon":
        bg = tuple(int(v) for v in rng.integers(8, 26, size=3))
        img = Image.new("RGB", (SIZE, SIZE), bg)
        glow = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
        draw_shape(ImageDraw.Draw(glow), shape, pts, outline=rgb, width=3)
        glow = glow.filter(ImageFilter.GaussianBlur(2.5))
        line = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
        bright = tuple(min(255, int(c * 0.6 + 110)) for c in rgb)
        draw_shape(ImageDraw.Draw(line), shape, pts, outline=bright, width=2)
        a = np.asarray(img, np.float32) + 1.6 * np.asarray(glow, np.float32) + np.asarray(line, np.float32)
        return np.clip(a, 0, 255).astype(np.uint8), mask

    bg = tuple(int(v) for v in np.clip(rng.integers(214, 244) + rng.integers(-8, 9, size=3), 0, 255))
    if style == "sketch":
        paper = (int(rng.integers(232, 246)), int(rng.integers(226, 240)), int(rng.integers(210, 226)))
        img = Image.new("RGB", (SIZE, SIZE), paper)
        d = ImageDraw.Draw(img)
        ink = int(rng.integers(60, 100))
        hatch = Image.new("L", (SIZE, SIZE), 0)
        hd = ImageDraw.Draw(hatch)
        off = rng.integers(0, 4)
        for k in range(-SIZE, 2 * SIZE, 4):
            hd.line([(k + off, 0), (k + off - SIZE, SIZE)], fill=255, width=1)
        hatch = np.asarray(hatch, np.float32) / 255.0 * mask
        a = np.asarray(img, np.float32)
        a = a * (1 - 0.55 * hatch[..., None]) + 0.55 * hatch[..., None] * ink
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(2):  # two slightly offset pencil strokes
            o = rng.uniform(-0.8, 0.8, size=2)
            p = shape_points(shape, cx + o[0], cy + o[1], r)
            draw_shape(d, shape, p, outline=(ink, ink, ink), width=1)
        return np.asarray(img, np.uint8), mask

    img = Image.new("RGB", (SIZE, SIZE), bg)
    draw_shape(ImageDraw.Draw(img), shape, pts, fill=rgb)
    a = np.asarray(img, np.uint8)
    if style == "pixel":  # 16 × 16 blocks of 4 px: the object's colour, a dark outline, background
        cover = mask.reshape(16, 4, 16, 4).mean(axis=(1, 3)) >= 0.5
        near = np.zeros_like(cover)
        near[1:] |= cover[:-1]
        near[:-1] |= cover[1:]
        near[:, 1:] |= cover[:, :-1]
        near[:, :-1] |= cover[:, 1:]
        blocks = np.empty((16, 16, 3), np.float32)
        blocks[:] = bg
        blocks[near & ~cover] = np.array(rgb, np.float32) * 0.35
        blocks[cover] = rgb
        a = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1).astype(np.uint8)
        mask = np.repeat(np.repeat(cover.astype(np.float32), 4, axis=0), 4, axis=1)
    return a, mask


def colour_of(img, mask):
    """Nearest colour (a named one or "grey", `NEUTRAL`) to the mean of the masked pixels
    (training-time check only)."""
    m = mask > 0.5
    if m.sum() < 4:
        return None
    mean = img[m].astype(np.float32).mean(axis=0)
    palette = {**COLOURS, "grey": NEUTRAL}
    names = list(palette)
    dist = [np.sum((mean - np.array(palette[n], np.float32)) ** 2) for n in names]
    return names[int(np.argmin(dist))]


def make_set(n, seed, allow_held_out=False):
    """n pictures: (uint8 [n, 64, 64, 3], float32 [n, 64, 64] masks, captions, specs)."""
    rng = np.random.default_rng(seed)
    imgs = np.empty((n, SIZE, SIZE, 3), np.uint8)
    masks = np.empty((n, SIZE, SIZE), np.float32)
    caps, specs = [], []
    for i in range(n):
        spec = sample_spec(rng, allow_held_out)
        imgs[i], masks[i] = render(spec, rng)
        caps.append(caption(*spec))
        specs.append(spec)
    return imgs, masks, caps, specs


def words():
    """Every word a caption can contain."""
    w = {"a"}
    w.update(COLOURS)
    w.update(SHAPES)
    w.update(s for s in SIZES if s)
    for p in POSITIONS:
        if p:
            w.update(p.split())
    for s in STYLES.values():
        w.update(s.replace(",", " ").split())
    return sorted(w)


if __name__ == "__main__":  # writes a contact sheet of 64 samples to /tmp/shapes-sheet.png
    imgs, _, caps, _ = make_set(64, 0)
    sheet = Image.new("RGB", (8 * SIZE, 8 * SIZE))
    for i in range(64):
        sheet.paste(Image.fromarray(imgs[i]), ((i % 8) * SIZE, (i // 8) * SIZE))
    sheet = sheet.resize((16 * SIZE, 16 * SIZE), Image.NEAREST)
    sheet.save("/tmp/shapes-sheet.png")
    print("\n".join(caps[:16]))
