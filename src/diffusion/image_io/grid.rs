//! Contact sheets: grids of same-size images with optional column/row labels, a labelled
//! λ strip, and a two-image side-by-side comparison.

use image::{Rgb, RgbImage};

use super::font::{ADVANCE, chars_width, draw_text, text_height, text_width};
use crate::diffusion::{DiffusionError, Result};

/// Paper colour of gutters and label bands.
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
/// Ink colour of labels.
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
/// Preferred font scale of labels (5×7 glyphs drawn at ×2).
const LABEL_SCALE: usize = 2;
/// Blank pixels around label text inside its band.
const LABEL_PAD: usize = 4;
/// Longest row label kept, in characters (longer ones are cut).
const MAX_ROW_LABEL_CHARS: usize = 32;
/// Gutter between images in [`strip`] and [`side_by_side`].
const STRIP_GAP: usize = 8;
/// Largest sheet we agree to allocate, in pixels (≈ 16k × 16k).
const MAX_PIXELS: usize = 1 << 28;

/// Labels of a grid. Either list may be empty (no band is drawn when every label is empty);
/// labels beyond the number of columns/rows are ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GridLabels {
    /// One label per column, drawn centred in a band above the column (e.g. "λ=0.5").
    pub columns: Vec<String>,
    /// One label per row, drawn in a band left of the row (e.g. "seed 3").
    pub rows: Vec<String>,
}

/// Pixel layout of a grid: where every part goes. Kept separate so geometry is testable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    cols: usize,
    rows: usize,
    cell_w: usize,
    cell_h: usize,
    gap: usize,
    /// Width of the row-label band (0 when there is none).
    left: usize,
    /// Height of the column-label band (0 when there is none).
    top: usize,
    width: usize,
    height: usize,
}

impl Layout {
    /// Top-left corner of image `i` (row-major). Written so that no intermediate exceeds the
    /// sheet size [`layout`] has checked (`cell + gap` alone may overflow when there is one
    /// column or row and a huge gap).
    fn origin(&self, i: usize) -> (usize, usize) {
        let (r, c) = (i / self.cols, i % self.cols);
        (
            self.left + c * self.cell_w + c * self.gap,
            self.top + r * self.cell_h + r * self.gap,
        )
    }
}

/// Checked `a * b + c`, as a readable error on overflow.
fn grid_size(n: usize, cell: usize, gap: usize) -> Result<usize> {
    n.checked_mul(cell)
        .and_then(|v| v.checked_add(n.saturating_sub(1).checked_mul(gap)?))
        .ok_or_else(|| DiffusionError::BadInput("image grid is too large".into()))
}

/// Cuts `text` to at most `max` characters.
fn cut(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Scale and text at which `text` fits in `avail` pixels: ×2 if it fits, else ×1, else cut.
fn fit_label(text: &str, avail: usize) -> (usize, String) {
    if text_width(text, LABEL_SCALE) <= avail {
        return (LABEL_SCALE, text.to_string());
    }
    if text_width(text, 1) <= avail {
        return (1, text.to_string());
    }
    let max_chars = (avail + 1) / ADVANCE;
    (1, cut(text, max_chars))
}

fn any_non_empty(labels: &[String]) -> bool {
    labels.iter().any(|s| !s.is_empty())
}

fn layout(
    n: usize,
    cols: usize,
    cell_w: usize,
    cell_h: usize,
    gap: usize,
    labels: &GridLabels,
) -> Result<Layout> {
    if n == 0 {
        return Err(DiffusionError::BadInput("image grid: no images".into()));
    }
    if cols == 0 {
        return Err(DiffusionError::BadInput(
            "image grid: the number of columns must be at least 1".into(),
        ));
    }
    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    let top = if any_non_empty(&labels.columns) {
        text_height(LABEL_SCALE) + 2 * LABEL_PAD
    } else {
        0
    };
    let left = if any_non_empty(&labels.rows[..labels.rows.len().min(rows)]) {
        let longest = labels
            .rows
            .iter()
            .take(rows)
            .map(|s| s.chars().count().min(MAX_ROW_LABEL_CHARS))
            .max()
            .unwrap_or(0);
        chars_width(longest, LABEL_SCALE) + 2 * LABEL_PAD
    } else {
        0
    };
    let width = grid_size(cols, cell_w, gap)?
        .checked_add(left)
        .ok_or_else(|| DiffusionError::BadInput("image grid is too large".into()))?;
    let height = grid_size(rows, cell_h, gap)?
        .checked_add(top)
        .ok_or_else(|| DiffusionError::BadInput("image grid is too large".into()))?;
    let too_big = width.checked_mul(height).is_none_or(|p| p > MAX_PIXELS);
    if too_big || u32::try_from(width).is_err() || u32::try_from(height).is_err() {
        return Err(DiffusionError::BadInput(format!(
            "image grid of {width}×{height} pixels is too large"
        )));
    }
    Ok(Layout {
        cols,
        rows,
        cell_w,
        cell_h,
        gap,
        left,
        top,
        width,
        height,
    })
}

/// Lays `images` (all the same size) out row-major in `cols` columns (fewer if there are
/// fewer images) with a `gap`-pixel white gutter between them, and draws the `labels`:
/// column labels in a band above each column, row labels in a band left of each row,
/// black on white with the built-in bitmap font (shrunk or cut when they do not fit).
///
/// Size: `left + cols·w + (cols−1)·gap` by `top + rows·h + (rows−1)·gap`, where `top` is
/// the height of the column-label band and `left` the width of the row-label band (0 when
/// absent). Image pixels are copied exactly.
pub fn compose_grid(images: &[RgbImage], cols: usize, gap: usize, labels: &GridLabels) -> Result<RgbImage> {
    let refs: Vec<&RgbImage> = images.iter().collect();
    compose_refs(&refs, cols, gap, labels)
}

/// [`compose_grid`] over borrowed images (so callers need not clone them into a slice).
fn compose_refs(images: &[&RgbImage], cols: usize, gap: usize, labels: &GridLabels) -> Result<RgbImage> {
    let (w, h) = match images.first() {
        Some(first) => (first.width(), first.height()),
        None => return Err(DiffusionError::BadInput("image grid: no images".into())),
    };
    if let Some((i, odd)) = images
        .iter()
        .enumerate()
        .find(|(_, im)| im.dimensions() != (w, h))
    {
        return Err(DiffusionError::BadInput(format!(
            "image grid: image {i} is {}×{} but image 0 is {w}×{h}; all images must be the same size",
            odd.width(),
            odd.height()
        )));
    }
    let lay = layout(images.len(), cols, w as usize, h as usize, gap, labels)?;
    let mut sheet = RgbImage::from_pixel(lay.width as u32, lay.height as u32, WHITE);

    for (i, &im) in images.iter().enumerate() {
        let (x, y) = lay.origin(i);
        image::imageops::replace(&mut sheet, im, x as i64, y as i64);
    }

    if lay.top > 0 {
        for (c, label) in labels.columns.iter().take(lay.cols).enumerate() {
            if label.is_empty() {
                continue;
            }
            let (x0, _) = lay.origin(c);
            let (scale, text) = fit_label(label, lay.cell_w);
            let tw = text_width(&text, scale);
            let x = x0 + lay.cell_w.saturating_sub(tw) / 2;
            let y = (lay.top - text_height(scale)) / 2;
            draw_text(&mut sheet, x, y, &text, scale, BLACK);
        }
    }
    if lay.left > 0 {
        for (r, label) in labels.rows.iter().take(lay.rows).enumerate() {
            if label.is_empty() {
                continue;
            }
            let (_, y0) = lay.origin(r * lay.cols);
            let (scale, text) = fit_label(&cut(label, MAX_ROW_LABEL_CHARS), lay.left - 2 * LABEL_PAD);
            let y = y0 + lay.cell_h.saturating_sub(text_height(scale)) / 2;
            draw_text(&mut sheet, LABEL_PAD, y, &text, scale, BLACK);
        }
    }
    Ok(sheet)
}

/// Formats a λ compactly: `0`, `0.25`, `1`, `1.5`, `-0.5` (at most three decimals).
pub fn format_lambda(lambda: f32) -> String {
    if !lambda.is_finite() {
        return format!("{lambda}");
    }
    let s = format!("{lambda:.3}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if s == "-0" { "0".to_string() } else { s.to_string() }
}

/// One row of images, each labelled `λ=…` above (one λ per image).
pub fn strip(images: &[RgbImage], lambdas: &[f32]) -> Result<RgbImage> {
    if images.len() != lambdas.len() {
        return Err(DiffusionError::BadInput(format!(
            "λ strip: {} images but {} λ values",
            images.len(),
            lambdas.len()
        )));
    }
    let labels = GridLabels {
        columns: lambdas
            .iter()
            .map(|&l| format!("λ={}", format_lambda(l)))
            .collect(),
        rows: Vec::new(),
    };
    compose_grid(images, images.len().max(1), STRIP_GAP, &labels)
}

/// Two same-size images next to each other, each labelled above (no band if both labels
/// are empty).
pub fn side_by_side(
    left: &RgbImage,
    right: &RgbImage,
    left_label: &str,
    right_label: &str,
) -> Result<RgbImage> {
    let labels = GridLabels {
        columns: vec![left_label.to_string(), right_label.to_string()],
        rows: Vec::new(),
    };
    compose_refs(&[left, right], 2, STRIP_GAP, &labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A w×h image whose pixels all differ, so misplaced copies show.
    fn pattern(w: u32, h: u32, seed: u8) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x as u8).wrapping_mul(7).wrapping_add(seed),
                (y as u8).wrapping_mul(13),
                seed.wrapping_mul(31) | 1,
            ])
        })
    }

    fn assert_copied(sheet: &RgbImage, im: &RgbImage, x0: u32, y0: u32) {
        for (x, y, p) in im.enumerate_pixels() {
            assert_eq!(
                sheet.get_pixel(x0 + x, y0 + y),
                p,
                "pixel ({x},{y}) of image at ({x0},{y0})"
            );
        }
    }

    fn dark_pixels(img: &RgbImage, x0: u32, y0: u32, x1: u32, y1: u32) -> usize {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0 == [0, 0, 0])
            .count()
    }

    #[test]
    fn unlabelled_grid_geometry_and_exact_copies() {
        let ims: Vec<RgbImage> = (0..5).map(|s| pattern(10, 6, s)).collect();
        let sheet = compose_grid(&ims, 3, 2, &GridLabels::default()).unwrap();
        assert_eq!(sheet.dimensions(), (3 * 10 + 2 * 2, 2 * 6 + 2));
        for (i, im) in ims.iter().enumerate() {
            let (r, c) = ((i / 3) as u32, (i % 3) as u32);
            assert_copied(&sheet, im, c * 12, r * 8);
        }
        // Gutter and the empty sixth cell are white.
        assert_eq!(sheet.get_pixel(10, 0).0, [255, 255, 255]);
        assert_eq!(sheet.get_pixel(11, 7).0, [255, 255, 255]);
        assert_eq!(sheet.get_pixel(30, 10).0, [255, 255, 255]);
        // More columns than images: one row of exactly the images.
        let one = compose_grid(&ims[..2], 8, 0, &GridLabels::default()).unwrap();
        assert_eq!(one.dimensions(), (20, 6));
    }

    #[test]
    fn labelled_grid_has_bands_with_ink_and_exact_copies() {
        let ims: Vec<RgbImage> = (0..4).map(|s| pattern(64, 40, s)).collect();
        let labels = GridLabels {
            columns: vec!["λ=0".into(), "λ=0.5".into()],
            rows: vec!["seed 1".into(), "seed 2".into()],
        };
        let sheet = compose_grid(&ims, 2, 4, &labels).unwrap();
        let top = (text_height(LABEL_SCALE) + 2 * LABEL_PAD) as u32;
        let left = (text_width("MMMMMM", LABEL_SCALE) + 2 * LABEL_PAD) as u32;
        assert_eq!(sheet.dimensions(), (left + 2 * 64 + 4, top + 2 * 40 + 4));
        for (i, im) in ims.iter().enumerate() {
            let (r, c) = ((i / 2) as u32, (i % 2) as u32);
            assert_copied(&sheet, im, left + c * 68, top + r * 44);
        }
        // Ink above each column and left of each row; the corner stays blank.
        assert!(dark_pixels(&sheet, left, 0, left + 64, top) > 10);
        assert!(dark_pixels(&sheet, left + 68, 0, left + 132, top) > 10);
        assert!(dark_pixels(&sheet, 0, top, left, top + 40) > 10);
        assert!(dark_pixels(&sheet, 0, top + 44, left, top + 84) > 10);
        assert_eq!(dark_pixels(&sheet, 0, 0, left, top), 0);
        // The two column labels differ, so their ink differs.
        let a = dark_pixels(&sheet, left, 0, left + 64, top);
        let b = dark_pixels(&sheet, left + 68, 0, left + 132, top);
        assert_ne!(a, b);
    }

    #[test]
    fn long_labels_and_tiny_images_do_not_panic() {
        let ims: Vec<RgbImage> = (0..3).map(|s| pattern(3, 2, s)).collect();
        let labels = GridLabels {
            columns: vec!["a very long column label indeed €€€".into(); 5],
            rows: vec!["x".repeat(200); 5],
        };
        let sheet = compose_grid(&ims, 2, 0, &labels).unwrap();
        let left = (text_width(&"M".repeat(MAX_ROW_LABEL_CHARS), LABEL_SCALE) + 2 * LABEL_PAD) as u32;
        assert_eq!(sheet.width(), left + 6);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let a = pattern(4, 4, 1);
        let b = pattern(5, 4, 2);
        assert!(compose_grid(&[], 2, 1, &GridLabels::default()).is_err());
        assert!(compose_grid(std::slice::from_ref(&a), 0, 1, &GridLabels::default()).is_err());
        let e = compose_grid(&[a.clone(), b.clone()], 2, 1, &GridLabels::default()).unwrap_err();
        assert!(e.to_string().contains("same size"), "{e}");
        assert!(compose_grid(std::slice::from_ref(&a), 1, usize::MAX, &GridLabels::default()).is_ok());
        assert!(compose_grid(&[a.clone(), a.clone()], 2, usize::MAX, &GridLabels::default()).is_err());
        assert!(strip(std::slice::from_ref(&a), &[0.5, 1.0]).is_err());
        assert!(side_by_side(&a, &b, "l", "r").is_err());
    }

    #[test]
    fn strip_and_side_by_side() {
        let ims: Vec<RgbImage> = (0..3).map(|s| pattern(80, 20, s)).collect();
        let s = strip(&ims, &[0.0, 0.5, 1.0]).unwrap();
        let top = (text_height(LABEL_SCALE) + 2 * LABEL_PAD) as u32;
        assert_eq!(s.dimensions(), (3 * 80 + 2 * STRIP_GAP as u32, top + 20));
        assert_copied(&s, &ims[2], 2 * (80 + STRIP_GAP as u32), top);
        assert!(dark_pixels(&s, 0, 0, 80, top) > 10);

        let sbs = side_by_side(&ims[0], &ims[1], "original", "steered").unwrap();
        assert_eq!(sbs.dimensions(), (160 + STRIP_GAP as u32, top + 20));
        assert_copied(&sbs, &ims[1], 80 + STRIP_GAP as u32, top);
        let plain = side_by_side(&ims[0], &ims[1], "", "").unwrap();
        assert_eq!(plain.dimensions(), (160 + STRIP_GAP as u32, 20));
    }

    #[test]
    fn lambda_formatting_is_compact() {
        assert_eq!(format_lambda(0.0), "0");
        assert_eq!(format_lambda(-0.0), "0");
        assert_eq!(format_lambda(0.25), "0.25");
        assert_eq!(format_lambda(1.0), "1");
        assert_eq!(format_lambda(1.5), "1.5");
        assert_eq!(format_lambda(-0.5), "-0.5");
        assert_eq!(format_lambda(1.0 / 3.0), "0.333");
        assert_eq!(format_lambda(10.0), "10");
        assert_eq!(format_lambda(-0.0001), "0");
        assert_eq!(format_lambda(f32::NAN), "NaN");
    }
}
