//! Per-hook-point summaries of a concept's maps, one line per hook kind (attention-side and
//! MLP-side norms of the same layer would otherwise alternate into a saw-tooth): mean
//! Wasserstein-1 distance source → target before and after transport, mean |ω − 1| or mean
//! |β|, against the layer, on a linear or log scale.

use eframe::egui;
use egui_plot::{Legend, Line, LineStyle, Plot, PlotPoints};

use crate::transport::HookMap;
use crate::transport::hook_map::diag;

/// What the curves show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// Mean W1 before and after transport.
    #[default]
    W1,
    /// Mean |ω − 1|; for a joint map the mean row sum of |A − I| (the same for a diagonal A).
    Omega,
    /// Mean |β|.
    Beta,
}

/// `layers.12.mlp_norm` → (12, "mlp_norm"); names without a layer number keep their
/// position as x and share one kind.
pub fn layer_and_kind(name: &str, index: usize) -> (f64, String) {
    let parts: Vec<&str> = name.split('.').collect();
    for (i, p) in parts.iter().enumerate().skip(1) {
        if let Ok(l) = p.parse::<usize>() {
            let kind = parts[i + 1..].join(".");
            return (l as f64, if kind.is_empty() { "output".into() } else { kind });
        }
    }
    (index as f64, "hook point".into())
}

fn mean(v: Option<&Vec<f32>>) -> Option<f64> {
    let finite: Vec<f64> = v?.iter().filter(|x| x.is_finite()).map(|&x| x as f64).collect();
    (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64)
}

/// The value of `metric` at one hook point (`after`: W1 after transport).
pub fn value(m: &HookMap, metric: Metric, after: bool) -> Option<f64> {
    let d = m.dim().max(1) as f64;
    match metric {
        Metric::W1 if after => mean(m.diagnostics().get(diag::W1_AFTER)),
        Metric::W1 => mean(m.diagnostics().get(diag::W1_BEFORE)),
        Metric::Omega => match m.matrix() {
            Some(a) => {
                let n = m.dim();
                let off: f64 = a
                    .iter()
                    .enumerate()
                    .map(|(k, &v)| f64::from(v - if k / n == k % n { 1.0 } else { 0.0 }).abs())
                    .sum();
                Some(off / d)
            }
            None => Some(m.omega().iter().map(|w| (w - 1.0).abs() as f64).sum::<f64>() / d),
        },
        Metric::Beta => Some(m.beta().iter().map(|b| b.abs() as f64).sum::<f64>() / d),
    }
}

/// Series per hook kind: `(kind, points)` in first-seen order.
pub fn by_kind(
    hooks: &[(&str, &std::sync::Arc<HookMap>)],
    metric: Metric,
    after: bool,
    log: bool,
) -> Vec<(String, Vec<[f64; 2]>)> {
    let mut out: Vec<(String, Vec<[f64; 2]>)> = Vec::new();
    for (i, (name, m)) in hooks.iter().enumerate() {
        let (x, kind) = layer_and_kind(name, i);
        let Some(v) = value(m, metric, after) else {
            continue;
        };
        let y = if log { v.max(1e-12).log10() } else { v };
        match out.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, pts)) => pts.push([x, y]),
            None => out.push((kind, vec![[x, y]])),
        }
    }
    out
}

const PALETTE: [egui::Color32; 6] = [
    egui::Color32::from_rgb(86, 150, 230),
    egui::Color32::from_rgb(235, 130, 50),
    egui::Color32::from_rgb(60, 190, 120),
    egui::Color32::from_rgb(200, 80, 200),
    egui::Color32::from_rgb(220, 200, 60),
    egui::Color32::from_rgb(150, 150, 150),
];

/// Draws the metric choice and the plot.
pub fn show(
    ui: &mut egui::Ui,
    hooks: &[(&str, &std::sync::Arc<HookMap>)],
    metric: &mut Metric,
    log: &mut bool,
) {
    ui.horizontal_wrapped(|ui| {
        ui.strong("per hook point:");
        ui.selectable_value(metric, Metric::W1, "W1 source to target");
        ui.selectable_value(metric, Metric::Omega, "mean |ω − 1|");
        ui.selectable_value(metric, Metric::Beta, "mean |β|");
        ui.checkbox(log, "log scale");
    });
    let what = match metric {
        Metric::W1 => "mean W1",
        Metric::Omega => "mean |ω − 1|",
        Metric::Beta => "mean |β|",
    };
    Plot::new("summary")
        .height(180.0)
        .legend(Legend::default().position(egui_plot::Corner::LeftTop))
        .x_axis_label("layer")
        .y_axis_label(if *log {
            format!("log10 {what}")
        } else {
            what.to_string()
        })
        .show(ui, |p| {
            let passes: &[bool] = if *metric == Metric::W1 {
                &[false, true]
            } else {
                &[false]
            };
            for &after in passes {
                for (i, (kind, pts)) in by_kind(hooks, *metric, after, *log).into_iter().enumerate() {
                    let c = PALETTE[i % PALETTE.len()];
                    let name = match (*metric, after) {
                        (Metric::W1, false) => format!("{kind}, before"),
                        (Metric::W1, true) => format!("{kind}, after transport"),
                        _ => kind,
                    };
                    let style = if after {
                        LineStyle::Solid
                    } else if *metric == Metric::W1 {
                        LineStyle::dashed_dense()
                    } else {
                        LineStyle::Solid
                    };
                    p.line(
                        Line::new(name, PlotPoints::from(pts))
                            .color(c)
                            .style(style)
                            .width(2.0),
                    );
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_names_split_into_layer_and_kind() {
        assert_eq!(layer_and_kind("layers.12.mlp_norm", 0), (12.0, "mlp_norm".into()));
        assert_eq!(layer_and_kind("layers.3.attn_norm", 0), (3.0, "attn_norm".into()));
        assert_eq!(layer_and_kind("layers.3", 0), (3.0, "output".into()));
        assert_eq!(
            layer_and_kind("unet.down_blocks.1.attentions.0.norm", 0),
            (1.0, "attentions.0.norm".into())
        );
        assert_eq!(layer_and_kind("final_norm", 7), (7.0, "hook point".into()));
    }

    #[test]
    fn the_omega_metric_of_a_joint_map_counts_its_off_diagonal_coupling() {
        use crate::transport::Method;
        use std::collections::BTreeMap;
        // A = [[2, −1], [0.5, 1]]: rows |A − I| sum to 2 and 0.5, mean 1.25; diag(A) alone
        // would give (1 + 0) / 2 = 0.5.
        let m = HookMap::joint(
            Method::JointGaussian,
            vec![2.0, -1.0, 0.5, 1.0],
            vec![0.0; 2],
            BTreeMap::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value(&m, Metric::Omega, false), Some(1.25));
    }
}
