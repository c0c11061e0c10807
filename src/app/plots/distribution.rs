//! One neuron at one hook point: outlined histograms of the source, target and transported
//! source samples (share of samples per bin, or density), the transport support drawn as a
//! shaded band, the prompt's own activation, and the map line T(a) = ωa + β inside the
//! support (identity outside, so the jump at the support's edges shows). A joint map moves
//! whole vectors: its line is the slice through the source mean (every other neuron held at
//! its source mean). Loaded maps carry no samples: they get the map line alone.

use eframe::egui;
use egui_plot::{Legend, Line, LineStyle, Plot, PlotPoints, Polygon, VLine};

use crate::transport::HookMap;

/// Colours that stay apart on dark and light themes (and for common colour blindness).
pub const SOURCE: egui::Color32 = egui::Color32::from_rgb(86, 150, 230);
/// Target samples.
pub const TARGET: egui::Color32 = egui::Color32::from_rgb(235, 130, 50);
/// Transported source samples.
pub const MOVED: egui::Color32 = egui::Color32::from_rgb(60, 190, 120);

/// Bins of the histograms.
pub const BINS: usize = 30;

/// `a` moved by the map at λ = 1 (strictly inside the support), else unchanged. For a joint
/// map, neuron `k` of the moved source mean with `a` in place of its own value.
pub fn transport(map: &HookMap, k: usize, a: f32) -> f32 {
    if let Some(m) = map.matrix() {
        // (A x + β)_k with x = the source mean, x_k = a: linear in a, no vector to build.
        let d = map.dim();
        let means = map.diagnostics().get(crate::transport::hook_map::diag::SRC_MEAN);
        let mean = |j: usize| means.and_then(|v| v.get(j)).copied().unwrap_or(0.0);
        let row = &m[k * d..(k + 1) * d];
        let others: f32 = row
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != k)
            .map(|(j, &w)| w * mean(j))
            .sum();
        return map.beta()[k] + others + row[k] * a;
    }
    map.transport_scalar(k, a, 1.0)
}

/// Bin counts of `values` over `[lo, lo + bins·width)` (outliers go to the end bins).
pub fn counts(values: &[f32], lo: f32, width: f32, bins: usize) -> Vec<usize> {
    let mut c = vec![0usize; bins];
    for &v in values.iter().filter(|v| v.is_finite()) {
        let i = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        c[i] += 1;
    }
    c
}

/// A histogram as a stepped outline: `(x, height)` corners, heights as a share of samples
/// per bin, or as a density (share / bin width) when `density`.
pub fn outline(values: &[f32], lo: f32, width: f32, bins: usize, density: bool) -> Vec<[f64; 2]> {
    let n = values.len().max(1) as f64;
    let scale = if density { n * width as f64 } else { n };
    let mut pts = vec![[lo as f64, 0.0]];
    for (i, &c) in counts(values, lo, width, bins).iter().enumerate() {
        let (x0, x1) = (lo + i as f32 * width, lo + (i + 1) as f32 * width);
        let y = c as f64 / scale;
        pts.push([x0 as f64, y]);
        pts.push([x1 as f64, y]);
    }
    pts.push([(lo + bins as f32 * width) as f64, 0.0]);
    pts
}

/// The x range the map line is drawn over: the support widened by a fifth on each side, or
/// the samples' range when the support is unbounded.
pub fn line_range(map: &HookMap, k: usize, samples: Option<(f32, f32)>) -> (f32, f32) {
    let (lo, hi) = (map.lo()[k], map.hi()[k]);
    if lo.is_finite() && hi.is_finite() && hi > lo {
        let pad = 0.2 * (hi - lo);
        return (lo - pad, hi + pad);
    }
    match samples {
        Some((a, b)) if b > a => (a, b),
        _ => {
            let c = if lo.is_finite() {
                lo
            } else if hi.is_finite() {
                hi
            } else {
                0.0
            };
            (c - 1.0, c + 1.0)
        }
    }
}

/// `(x, T(x))` points of the map line over `[a, b]`, with the edges of the support as exact
/// break points so the jump back to the identity is vertical.
pub fn map_line(map: &HookMap, k: usize, a: f32, b: f32) -> Vec<[f64; 2]> {
    let mut xs: Vec<f32> = (0..=100).map(|i| a + (b - a) * i as f32 / 100.0).collect();
    for edge in [map.lo()[k], map.hi()[k]] {
        if edge.is_finite() && edge > a && edge < b {
            // Just inside and at the edge (where the identity holds again).
            xs.push(edge);
            xs.push(edge - (b - a) * 1e-4);
            xs.push(edge + (b - a) * 1e-4);
        }
    }
    xs.sort_by(f32::total_cmp);
    xs.into_iter()
        .map(|x| [x as f64, transport(map, k, x) as f64])
        .collect()
}

/// The data behind the histogram of one neuron (for the plot and its CSV export).
pub struct NeuronSamples {
    /// Source values.
    pub source: Vec<f32>,
    /// Target values.
    pub target: Vec<f32>,
    /// Source values moved by the map.
    pub moved: Vec<f32>,
}

fn support_band(map: &HookMap, k: usize, top: f64) -> Option<Polygon<'static>> {
    let (lo, hi) = (map.lo()[k] as f64, map.hi()[k] as f64);
    (lo.is_finite() && hi.is_finite() && hi > lo).then(|| {
        Polygon::new(
            "support",
            PlotPoints::from(vec![[lo, 0.0], [hi, 0.0], [hi, top], [lo, top]]),
        )
        .fill_color(egui::Color32::from_rgba_unmultiplied(160, 160, 160, 28))
        .stroke(egui::Stroke::new(1.0, egui::Color32::from_gray(140)))
    })
}

/// Draws the histogram (when there are samples) and the map line side by side.
pub fn show(
    ui: &mut egui::Ui,
    map: &HookMap,
    k: usize,
    samples: Option<&NeuronSamples>,
    prompt: Option<f32>,
    density: bool,
) {
    let height = 220.0;
    let range = samples.map(|s| {
        s.source
            .iter()
            .chain(&s.target)
            .chain(&s.moved)
            .chain(prompt.iter())
            .filter(|v| v.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            })
    });
    ui.columns(2, |cols| {
        match (samples, range) {
            (Some(s), Some((lo, hi))) if lo.is_finite() && hi.is_finite() => {
                let width = ((hi - lo) / BINS as f32).max(1e-6);
                let series = [
                    ("source", &s.source, SOURCE),
                    ("target", &s.target, TARGET),
                    ("transported source", &s.moved, MOVED),
                ];
                let top = series
                    .iter()
                    .flat_map(|(_, v, _)| outline(v, lo, width, BINS, density))
                    .map(|p| p[1])
                    .fold(0.0, f64::max);
                Plot::new("hist")
                    .height(height)
                    .legend(Legend::default().position(egui_plot::Corner::RightTop))
                    .x_axis_label("activation (pooled over tokens)")
                    .y_axis_label(if density { "density" } else { "share of samples" })
                    .show(&mut cols[0], |p| {
                        if let Some(band) = support_band(map, k, top * 1.05) {
                            p.polygon(band);
                        }
                        for (name, v, c) in series {
                            let pts = outline(v, lo, width, BINS, density);
                            p.line(Line::new(name, PlotPoints::from(pts)).color(c).width(2.0));
                        }
                        if let Some(v) = prompt {
                            p.vline(
                                VLine::new("your prompt", v as f64)
                                    .color(egui::Color32::from_rgb(200, 80, 200))
                                    .style(LineStyle::dashed_loose()),
                            );
                        }
                    });
            }
            _ => {
                cols[0].label(
                    "Histograms need the samples of a fit made in this session (loaded maps carry \
                     only their parameters: their map line is on the right).",
                );
            }
        }
        let (a, b) = line_range(map, k, range);
        let identity: PlotPoints = vec![[a as f64, a as f64], [b as f64, b as f64]].into();
        Plot::new("map-line")
            .height(height)
            .legend(Legend::default().position(egui_plot::Corner::LeftTop))
            .x_axis_label("activation a")
            .y_axis_label("T(a) at λ = 1")
            .show(&mut cols[1], |p| {
                p.line(
                    Line::new("identity", identity)
                        .color(egui::Color32::GRAY)
                        .style(LineStyle::dashed_dense()),
                );
                let line = PlotPoints::from(map_line(map, k, a, b));
                let name = if map.matrix().is_some() {
                    "T(a): joint map, other neurons at their source mean"
                } else {
                    "T(a) = ωa + β inside the support"
                };
                p.line(Line::new(name, line).width(2.0));
                for edge in [map.lo()[k], map.hi()[k]] {
                    if edge.is_finite() {
                        p.vline(
                            VLine::new("support edge", edge as f64)
                                .color(egui::Color32::from_gray(140))
                                .style(LineStyle::dashed_loose()),
                        );
                    }
                }
            });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlines_sum_to_one_as_shares_and_integrate_to_one_as_densities() {
        let v: Vec<f32> = (0..100).map(|i| i as f32 / 10.0).collect();
        let width = 10.0 / BINS as f32;
        let share = outline(&v, 0.0, width, BINS, false);
        // Every bin appears as two corners at the same height.
        let total: f64 = share[1..share.len() - 1].chunks(2).map(|c| c[0][1]).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let dens = outline(&v, 0.0, width, BINS, true);
        let area: f64 = dens[1..dens.len() - 1]
            .chunks(2)
            .map(|c| c[0][1] * width as f64)
            .sum();
        assert!((area - 1.0).abs() < 1e-6, "{area}");
    }

    #[test]
    fn counts_keep_outliers_in_the_end_bins_and_skip_nan() {
        let c = counts(&[-5.0, 0.5, 99.0, f32::NAN], 0.0, 1.0, 3);
        assert_eq!(c, [2, 0, 1]);
    }

    #[test]
    fn a_joint_map_s_line_is_its_slice_through_the_source_mean() {
        use crate::transport::Method;
        use crate::transport::hook_map::diag;
        let mut d = std::collections::BTreeMap::new();
        d.insert(diag::SRC_MEAN.to_string(), vec![1.0, -2.0]);
        let m = HookMap::joint(
            Method::JointGaussian,
            vec![2.0, 0.5, 3.0, 1.0],
            vec![0.25, -1.0],
            d,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for a in [-1.0f32, 0.0, 4.0] {
            // Neuron 0 at a, neuron 1 at its source mean −2; and the other way round.
            assert_eq!(transport(&m, 0, a), m.transport_neuron(0, &[a, -2.0]));
            assert_eq!(transport(&m, 1, a), m.transport_neuron(1, &[1.0, a]));
        }
        assert_eq!(transport(&m, 0, 4.0), 0.25 + 2.0 * 4.0 + 0.5 * -2.0);
    }
}
