//! Measurable statistics of the pictures of the demo text-to-image model (`models/act-shapes-t2i`,
//! trained by `tools/t2i/train.py` on the procedural set of `tools/t2i/shapes.py`): one object
//! — a circle, square, triangle or cross in one of eight colours — on a plain background, in
//! a plain, neon, pixel-art or pencil-sketch style.
//!
//! They judge generated images without another model (issue 17's checks, `tests/shapes_model.rs`
//! and `benches/shapes-model.sh`):
//! - [`find_object`]: the background is the median colour of the outer frame; the object is the
//!   largest 4-connected region of pixels that differ from it;
//! - [`dominant_colour`]: the named colour nearest (RGB) to the object's mean colour;
//! - [`shape_of`]: fill ratio of the bounding box and the widths of its top, middle and bottom
//!   rows (a square fills it, a circle ≈ π/4, a triangle ≈ 1/2 and widens downwards, a cross
//!   ≈ 5/9 with a full middle row and narrow ends);
//! - style statistics, each rising with its style: [`frame_darkness`] (neon: dark background),
//!   [`blockiness`] (pixel art: edges on the 4-pixel grid), [`greyness`] (sketch: no colour);
//! - [`colour_share`]: the share of the object's pixels of one named colour (concept negation).

use image::RgbImage;

/// The eight caption colours of the training set (`COLOURS` in tools/t2i/shapes.py) and the
/// grey of objects whose caption names none (`NEUTRAL`), as drawn before the ±14 jitter per
/// channel.
pub const COLOURS: [(&str, [u8; 3]); 9] = [
    ("red", [220, 30, 30]),
    ("orange", [245, 140, 20]),
    ("yellow", [240, 215, 30]),
    ("green", [40, 165, 50]),
    ("cyan", [30, 195, 210]),
    ("blue", [35, 70, 220]),
    ("purple", [140, 45, 190]),
    ("pink", [245, 130, 190]),
    ("grey", [128, 128, 128]),
];

/// The four shapes of the training set.
pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "cross"];

/// A pixel belongs to the object when one channel differs from the background by more.
const OBJECT_THRESHOLD: i32 = 48;

/// The object found in an image: its pixels and bounding box.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Row-major mask, `width · height`.
    pub mask: Vec<bool>,
    /// Bounding box: first column, first row, width, height (pixels).
    pub bbox: (usize, usize, usize, usize),
    /// Pixels in the object.
    pub area: usize,
    /// The background colour (median of the outer 2-pixel frame, per channel).
    pub background: [u8; 3],
}

fn median(mut v: Vec<u8>) -> u8 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Median colour of the outer `k`-pixel frame, per channel.
fn frame_colour(img: &RgbImage, k: u32) -> [u8; 3] {
    let (w, h) = img.dimensions();
    let mut ch: [Vec<u8>; 3] = Default::default();
    for (x, y, p) in img.enumerate_pixels() {
        if x < k || y < k || x + k >= w || y + k >= h {
            for c in 0..3 {
                ch[c].push(p[c]);
            }
        }
    }
    let [r, g, b] = ch;
    [median(r), median(g), median(b)]
}

/// The largest 4-connected region of pixels that differ from the background by more than
/// [`OBJECT_THRESHOLD`] in some channel; `None` when there is none.
pub fn find_object(img: &RgbImage) -> Option<Object> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let bg = frame_colour(img, 2);
    let differs: Vec<bool> = img
        .pixels()
        .map(|p| (0..3).any(|c| (i32::from(p[c]) - i32::from(bg[c])).abs() > OBJECT_THRESHOLD))
        .collect();
    let mut label = vec![0u32; w * h];
    let mut best: (u32, usize) = (0, 0);
    let mut stack = Vec::new();
    let mut next = 0u32;
    for start in 0..w * h {
        if !differs[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % w, i / w);
            let mut visit = |j: usize| {
                if differs[j] && label[j] == 0 {
                    label[j] = next;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        if size > best.1 {
            best = (next, size);
        }
    }
    if best.1 == 0 {
        return None;
    }
    let mask: Vec<bool> = label.iter().map(|&l| l == best.0).collect();
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let (x, y) = (i % w, i / w);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    Some(Object {
        mask,
        bbox: (x0, y0, x1 - x0 + 1, y1 - y0 + 1),
        area: best.1,
        background: bg,
    })
}

fn nearest_colour(rgb: [f32; 3]) -> (&'static str, f32) {
    COLOURS
        .iter()
        .map(|(name, c)| {
            let d: f32 = (0..3).map(|i| (rgb[i] - f32::from(c[i])).powi(2)).sum();
            (*name, d.sqrt())
        })
        .fold(("", f32::INFINITY), |a, b| if b.1 < a.1 { b } else { a })
}

/// The named colour ([`COLOURS`]) nearest to the mean colour of the object's pixels.
pub fn dominant_colour(img: &RgbImage, obj: &Object) -> &'static str {
    let mut sum = [0f64; 3];
    for (p, _) in img.pixels().zip(&obj.mask).filter(|(_, m)| **m) {
        for c in 0..3 {
            sum[c] += f64::from(p[c]);
        }
    }
    let n = obj.area.max(1) as f64;
    nearest_colour(sum.map(|s| (s / n) as f32)).0
}

/// Share of the object's pixels whose nearest named colour is `name` (within 100 RGB units).
pub fn colour_share(img: &RgbImage, obj: &Object, name: &str) -> f64 {
    let hits = img
        .pixels()
        .zip(&obj.mask)
        .filter(|(p, m)| {
            **m && {
                let (n, d) = nearest_colour([f32::from(p[0]), f32::from(p[1]), f32::from(p[2])]);
                n == name && d < 100.0
            }
        })
        .count();
    hits as f64 / obj.area.max(1) as f64
}

/// Width of the object's row `y` (its rightmost minus leftmost pixel + 1), 0 when empty.
fn row_width(obj: &Object, w: usize, y: usize) -> usize {
    let row = &obj.mask[y * w..(y + 1) * w];
    match (row.iter().position(|&m| m), row.iter().rposition(|&m| m)) {
        (Some(a), Some(b)) => b - a + 1,
        _ => 0,
    }
}

/// The object's shape ([`SHAPES`]), or `None` when it is none of them (or too small: a box
/// under 6 pixels a side). Widths are measured at 15 %, 50 % and 85 % of the box's height.
pub fn shape_of(obj: &Object, img_width: usize) -> Option<&'static str> {
    let (_, y0, bw, bh) = obj.bbox;
    if bw < 6 || bh < 6 {
        return None;
    }
    let fill = obj.area as f64 / (bw * bh) as f64;
    let at =
        |f: f64| row_width(obj, img_width, y0 + ((bh - 1) as f64 * f).round() as usize) as f64 / bw as f64;
    let (top, mid, bottom) = (at(0.15), at(0.5), at(0.85));
    if fill >= 0.88 {
        Some("square")
    } else if fill >= 0.68 {
        Some("circle")
    } else if bottom - top > 0.3 {
        Some("triangle")
    } else if mid > 0.8 && top < 0.6 && bottom < 0.6 {
        Some("cross")
    } else {
        None
    }
}

/// Neon statistic: 1 − the mean luminance (0…1) of the outer 4-pixel frame.
pub fn frame_darkness(img: &RgbImage) -> f64 {
    let (w, h) = img.dimensions();
    let k = 4;
    let (mut sum, mut n) = (0f64, 0usize);
    for (x, y, p) in img.enumerate_pixels() {
        if x < k || y < k || x + k >= w || y + k >= h {
            sum += 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]);
            n += 1;
        }
    }
    1.0 - sum / (255.0 * n.max(1) as f64)
}

/// Pixel-art statistic: the share of all horizontal and vertical neighbour differences
/// (summed over channels) that cross a boundary of the 4-pixel grid. Edges spread evenly give
/// about 1/4; blocks of 4 × 4 pixels give 1.
pub fn blockiness(img: &RgbImage) -> f64 {
    let (w, h) = img.dimensions();
    let diff = |a: &image::Rgb<u8>, b: &image::Rgb<u8>| -> f64 {
        (0..3).map(|c| (f64::from(a[c]) - f64::from(b[c])).abs()).sum()
    };
    let (mut on, mut all) = (0f64, 0f64);
    for y in 0..h {
        for x in 0..w {
            let p = img.get_pixel(x, y);
            if x + 1 < w {
                let d = diff(p, img.get_pixel(x + 1, y));
                all += d;
                if x % 4 == 3 {
                    on += d;
                }
            }
            if y + 1 < h {
                let d = diff(p, img.get_pixel(x, y + 1));
                all += d;
                if y % 4 == 3 {
                    on += d;
                }
            }
        }
    }
    if all == 0.0 { 0.0 } else { on / all }
}

/// Sketch statistic: 1 − the mean HSV saturation of the image.
pub fn greyness(img: &RgbImage) -> f64 {
    let mut sum = 0f64;
    for p in img.pixels() {
        let mx = f64::from(p[0].max(p[1]).max(p[2]));
        let mn = f64::from(p[0].min(p[1]).min(p[2]));
        if mx > 0.0 {
            sum += (mx - mn) / mx;
        }
    }
    1.0 - sum / (img.width() * img.height()).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// Draws a shape of half-size `r` centred at (cx, cy) like tools/t2i/shapes.py (pixel
    /// centres inside the outline).
    fn draw(shape: &str, colour: [u8; 3], cx: f64, cy: f64, r: f64, bg: [u8; 3]) -> RgbImage {
        RgbImage::from_fn(64, 64, |x, y| {
            let (px, py) = (f64::from(x) + 0.5 - cx, f64::from(y) + 0.5 - cy);
            let inside = match shape {
                "circle" => px * px + py * py <= r * r,
                "square" => px.abs() <= r && py.abs() <= r,
                "triangle" => py.abs() <= r && px.abs() <= (py + r) / 2.0,
                _ => (px.abs() <= r / 3.0 && py.abs() <= r) || (py.abs() <= r / 3.0 && px.abs() <= r),
            };
            Rgb(if inside { colour } else { bg })
        })
    }

    #[test]
    fn finds_colour_and_shape_of_drawn_objects_at_every_size() {
        let bg = [228, 226, 232];
        for (name, rgb) in COLOURS {
            for shape in SHAPES {
                for (r, cx, cy) in [(8.0, 20.0, 30.0), (12.5, 32.0, 32.0), (19.0, 40.0, 36.0)] {
                    let img = draw(shape, rgb, cx, cy, r, bg);
                    let obj = find_object(&img).unwrap();
                    assert_eq!(obj.background, bg);
                    assert_eq!(dominant_colour(&img, &obj), name);
                    assert_eq!(shape_of(&obj, 64), Some(shape), "{name} {shape} r {r}");
                    assert_eq!(colour_share(&img, &obj, name), 1.0);
                    let other = if name == "red" { "blue" } else { "red" };
                    assert_eq!(colour_share(&img, &obj, other), 0.0);
                }
            }
        }
    }

    #[test]
    fn largest_region_wins_and_blank_images_have_no_object() {
        let mut img = draw("square", [35, 70, 220], 40.0, 40.0, 10.0, [230; 3]);
        img.put_pixel(5, 5, Rgb([0, 0, 0])); // a speck of noise
        let obj = find_object(&img).unwrap();
        assert_eq!(obj.bbox, (30, 30, 20, 20));
        assert_eq!(shape_of(&obj, 64), Some("square"));
        assert!(find_object(&RgbImage::from_pixel(64, 64, Rgb([200, 10, 10]))).is_none());
        let tiny = draw("square", [35, 70, 220], 32.0, 32.0, 2.0, [230; 3]);
        assert_eq!(shape_of(&find_object(&tiny).unwrap(), 64), None);
    }

    #[test]
    fn style_statistics_rise_with_their_style() {
        let plain = draw("circle", [220, 30, 30], 32.0, 32.0, 12.0, [230, 228, 226]);
        let dark = draw("circle", [220, 30, 30], 32.0, 32.0, 12.0, [15, 15, 20]);
        assert!(frame_darkness(&plain) < 0.15 && frame_darkness(&dark) > 0.9);
        // 4 × 4 blocks: every edge lies on the grid
        let blocks = RgbImage::from_fn(64, 64, |x, y| {
            if (x / 4 + y / 4) % 3 == 0 {
                Rgb([200, 40, 40])
            } else {
                Rgb([230; 3])
            }
        });
        assert!((blockiness(&blocks) - 1.0).abs() < 1e-12);
        // a circle's edges fall on and off the grid
        let b = blockiness(&plain);
        assert!(b > 0.1 && b < 0.5, "{b}");
        let grey = RgbImage::from_fn(64, 64, |x, _| Rgb([(x * 3) as u8; 3]));
        assert!((greyness(&grey) - 1.0).abs() < 1e-12);
        assert!(greyness(&plain) < greyness(&grey));
    }
}
