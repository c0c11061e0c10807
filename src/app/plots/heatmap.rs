//! ω or β of every neuron at every hook point as one image (rows: hook points in forward
//! order, columns: neurons), on a diverging scale centred on the identity (ω = 1, β = 0) and
//! clipped at the 99th percentile of the distance from it, so a few outlier neurons do not
//! wash the rest out. A colour bar gives the scale, hovering reads a cell, and a click shows
//! that hook point and neuron in the plots above.

use eframe::egui;

use crate::transport::HookMap;

/// The share of cells inside the colour scale; the rest saturate.
pub const CLIP_QUANTILE: f64 = 0.99;

/// The scale: the `q` quantile of `|v − centre|` over the finite values (at least 1e-6).
pub fn robust_scale(values: impl Iterator<Item = f32>, centre: f32, q: f64) -> f32 {
    let mut d: Vec<f32> = values
        .filter(|v| v.is_finite())
        .map(|v| (v - centre).abs())
        .collect();
    if d.is_empty() {
        return 1e-6;
    }
    d.sort_by(f32::total_cmp);
    let i = ((d.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    d[i.min(d.len() - 1)].max(1e-6)
}

/// Colour of `t` ∈ [−1, 1]: blue below the centre, white at it, red above.
pub fn colour(t: f32) -> egui::Color32 {
    let t = t.clamp(-1.0, 1.0);
    let c = |a: f32| (255.0 * (1.0 - a)) as u8;
    if t >= 0.0 {
        egui::Color32::from_rgb(255, c(t), c(t))
    } else {
        egui::Color32::from_rgb(c(-t), c(-t), 255)
    }
}

/// The cached image and what it was made from.
pub struct Heat {
    key: String,
    texture: egui::TextureHandle,
    scale: f32,
    centre: f32,
}

fn values(m: &HookMap, beta: bool) -> &[f32] {
    if beta { m.beta() } else { m.omega() }
}

/// Draws the choice (ω or β), the image with its axes and colour bar; returns the clicked
/// `(hook index, neuron)`.
pub fn show(
    ui: &mut egui::Ui,
    cache: &mut Option<Heat>,
    beta: &mut bool,
    concept: &str,
    hooks: &[(&str, &std::sync::Arc<HookMap>)],
) -> Option<(usize, usize)> {
    ui.horizontal(|ui| {
        ui.strong("heatmap:");
        // A joint map's ω is the diagonal of its matrix A (what it does to each neuron alone).
        let joint = hooks.iter().any(|(_, m)| m.matrix().is_some());
        ui.selectable_value(beta, false, if joint { "diag A" } else { "ω" });
        ui.selectable_value(beta, true, "β");
        ui.small("rows: hook points, columns: neurons; click a cell to plot it");
    });
    let d = hooks.iter().map(|(_, m)| m.dim()).max().unwrap_or(0);
    if d == 0 || hooks.is_empty() {
        return None;
    }
    let key = format!("{concept}|{beta}|{}|{d}", hooks.len());
    if cache.as_ref().is_none_or(|h| h.key != key) {
        let centre = if *beta { 0.0 } else { 1.0 };
        let scale = robust_scale(
            hooks.iter().flat_map(|(_, m)| values(m, *beta).iter().copied()),
            centre,
            CLIP_QUANTILE,
        );
        let mut px = Vec::with_capacity(d * hooks.len());
        for (_, m) in hooks {
            let v = values(m, *beta);
            for k in 0..d {
                px.push(
                    v.get(k)
                        .map_or(egui::Color32::DARK_GRAY, |x| colour((x - centre) / scale)),
                );
            }
        }
        let img = egui::ColorImage::new([d, hooks.len()], px);
        let texture = ui
            .ctx()
            .load_texture("maps-heatmap", img, egui::TextureOptions::NEAREST);
        *cache = Some(Heat {
            key,
            texture,
            scale,
            centre,
        });
    }
    let heat = cache.as_ref()?;
    let mut clicked = None;
    ui.horizontal(|ui| {
        ui.vertical(|ui| {
            ui.small(format!("first: {}", hooks[0].0));
            ui.add_space(4.0);
            ui.small(format!("last: {}", hooks[hooks.len() - 1].0));
        });
        let w = (ui.available_width() - 90.0).max(120.0);
        let h = (hooks.len() as f32 * 4.0).clamp(60.0, 320.0);
        let resp =
            ui.add(egui::Image::new((heat.texture.id(), egui::vec2(w, h))).sense(egui::Sense::click()));
        let cell = |pos: egui::Pos2| cell_at(resp.rect, pos, hooks.len(), d);
        if let Some((row, k)) = resp.hover_pos().and_then(cell) {
            let v = values(hooks[row].1, *beta).get(k).copied();
            let name = if *beta { "β" } else { "ω" };
            resp.clone().on_hover_text(match v {
                Some(v) => format!("{}, neuron {k}: {name} = {v:.4}", hooks[row].0),
                None => format!("{}: no neuron {k}", hooks[row].0),
            });
        }
        if resp.clicked() {
            clicked = resp.interact_pointer_pos().and_then(cell);
        }
        colour_bar(ui, heat, h);
    });
    ui.small(format!("columns: neurons 0 … {}", d - 1));
    clicked
}

/// The `(row, column)` of a `rows × cols` image drawn in `rect` under `pos` (`None` outside).
pub fn cell_at(rect: egui::Rect, pos: egui::Pos2, rows: usize, cols: usize) -> Option<(usize, usize)> {
    if rows == 0 || cols == 0 || !rect.contains(pos) || rect.width() <= 0.0 || rect.height() <= 0.0 {
        return None;
    }
    let col = ((pos.x - rect.left()) / rect.width() * cols as f32).floor() as usize;
    let row = ((pos.y - rect.top()) / rect.height() * rows as f32).floor() as usize;
    Some((row.min(rows - 1), col.min(cols - 1)))
}

/// A vertical gradient with the values at its top, centre and bottom.
fn colour_bar(ui: &mut egui::Ui, heat: &Heat, h: f32) {
    ui.vertical(|ui| {
        ui.small(format!("≥ {:+.3}", heat.centre + heat.scale));
        let (rect, _) = ui.allocate_exact_size(egui::vec2(14.0, (h - 36.0).max(20.0)), egui::Sense::hover());
        let steps = 32;
        for i in 0..steps {
            let t = 1.0 - 2.0 * (i as f32 + 0.5) / steps as f32;
            let y0 = rect.top() + rect.height() * i as f32 / steps as f32;
            let y1 = rect.top() + rect.height() * (i + 1) as f32 / steps as f32;
            ui.painter().rect_filled(
                egui::Rect::from_min_max(egui::pos2(rect.left(), y0), egui::pos2(rect.right(), y1)),
                0.0,
                colour(t),
            );
        }
        ui.small(format!("≤ {:+.3}", heat.centre - heat.scale));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_outliers_do_not_set_the_scale() {
        let mut v: Vec<f32> = (0..1000).map(|i| 1.0 + (i % 10) as f32 * 0.01).collect();
        v.extend([1000.0, -500.0, f32::NAN]);
        let s = robust_scale(v.into_iter(), 1.0, CLIP_QUANTILE);
        assert!((s - 0.09).abs() < 1e-4, "{s}");
        assert_eq!(robust_scale(std::iter::empty(), 0.0, 0.99), 1e-6);
    }

    #[test]
    fn a_point_on_the_image_names_its_hook_point_and_neuron() {
        let r = egui::Rect::from_min_size(egui::pos2(10.0, 20.0), egui::vec2(576.0, 60.0));
        // 60 rows of 1 px, 576 columns of 1 px.
        assert_eq!(cell_at(r, egui::pos2(10.0, 20.0), 60, 576), Some((0, 0)));
        assert_eq!(
            cell_at(r, egui::pos2(10.5 + 312.0, 20.5 + 7.0), 60, 576),
            Some((7, 312))
        );
        assert_eq!(cell_at(r, egui::pos2(586.0, 80.0), 60, 576), Some((59, 575)));
        assert_eq!(cell_at(r, egui::pos2(9.0, 30.0), 60, 576), None);
        assert_eq!(cell_at(r, egui::pos2(20.0, 81.0), 60, 576), None);
        assert_eq!(cell_at(r, egui::pos2(20.0, 30.0), 0, 576), None);
    }

    #[test]
    fn the_colour_scale_is_white_at_the_centre_and_saturates() {
        assert_eq!(colour(0.0), egui::Color32::WHITE);
        assert_eq!(colour(5.0), egui::Color32::from_rgb(255, 0, 0));
        assert_eq!(colour(-5.0), egui::Color32::from_rgb(0, 0, 255));
    }
}
