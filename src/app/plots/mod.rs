//! Plots panel: for a chosen concept, hook point and neuron (default: the neuron the map moves
//! most), outlined histograms of the source, target and transported source activations with
//! the support and the prompt's activation, and the map line ([`distribution`]); per-layer
//! summaries split by hook kind ([`layers`]); a heatmap of ω or β over hook points × neurons
//! ([`heatmap`]). Every plot's data exports as CSV, the whole panel as PNG ([`export`]).

mod distribution;
mod export;
mod heatmap;
mod layers;

use eframe::egui;

use crate::transport::HookMap;

use super::StudioApp;

pub use export::{request_png, take_screenshot, write_text};

/// Plot choices and the cached heatmap texture.
#[derive(Default)]
pub struct PlotsState {
    /// Stack index of the concept shown.
    pub concept: usize,
    /// Hook point index within the concept's maps.
    pub hook: usize,
    /// Neuron (None: the one moved most).
    pub neuron: Option<usize>,
    /// Heatmap of β instead of ω.
    pub beta: bool,
    /// Histograms as densities instead of shares of samples.
    pub density: bool,
    /// What the per-hook curves show.
    pub metric: layers::Metric,
    /// Per-hook curves on a log scale.
    pub log: bool,
    heat: Option<heatmap::Heat>,
    /// A PNG of the panel is being taken, to this file.
    pub png: Option<std::path::PathBuf>,
    /// Where the panel was drawn last frame (what the PNG keeps).
    pub area: Option<egui::Rect>,
}

impl PlotsState {
    /// Forgets cached drawings (the concepts changed).
    pub fn invalidate(&mut self) {
        self.heat = None;
        self.neuron = None;
    }
}

/// The neuron whose source mean the map moves most: argmax |T(m)_k − m_k| for the source mean
/// vector `m` (per neuron inside the support; the whole vector for a joint map).
pub fn most_moved(map: &HookMap) -> usize {
    let means = map
        .diagnostics()
        .get("src_mean")
        .filter(|v| v.len() == map.dim())
        .cloned()
        .unwrap_or_else(|| vec![0.0; map.dim()]);
    let shift = |k: usize| (map.transport_neuron(k, &means) - means[k]).abs();
    (0..map.dim())
        .max_by(|&i, &j| shift(i).total_cmp(&shift(j)))
        .unwrap_or(0)
}

/// Draws the panel.
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
    app.plots.area = Some(ui.max_rect());
    if app.stack.is_empty() {
        ui.label("Fit a concept (or load maps) to see its activation distributions.");
        return;
    }
    let st = &mut app.plots;
    st.concept = st.concept.min(app.stack.len() - 1);
    let entry = app.stack[st.concept].clone();
    let maps = entry.concept.maps.clone();
    let hooks: Vec<(&str, &std::sync::Arc<HookMap>)> = maps.hooks().collect();
    if hooks.is_empty() {
        ui.label("These maps have no hook points.");
        return;
    }
    st.hook = st.hook.min(hooks.len() - 1);
    ui.horizontal_wrapped(|ui| {
        egui::ComboBox::from_label("concept")
            .selected_text(&entry.concept.name)
            .show_ui(ui, |ui| {
                for (i, e) in app.stack.iter().enumerate() {
                    if ui.selectable_value(&mut st.concept, i, &e.concept.name).changed() {
                        st.heat = None;
                        st.neuron = None;
                    }
                }
            });
        egui::ComboBox::from_label("hook point")
            .selected_text(hooks[st.hook].0)
            .height(400.0)
            .show_ui(ui, |ui| {
                for (i, (name, _)) in hooks.iter().enumerate() {
                    if ui.selectable_value(&mut st.hook, i, *name).changed() {
                        st.neuron = None;
                    }
                }
            });
    });
    let (hook_name, map) = (hooks[st.hook].0, hooks[st.hook].1.clone());
    let d = map.dim();
    if d == 0 {
        ui.label("This hook point has no neurons.");
        return;
    }
    let mut neuron = st
        .neuron
        .unwrap_or_else(|| most_moved(&map))
        .min(d.saturating_sub(1));
    ui.horizontal_wrapped(|ui| {
        ui.label("neuron");
        if ui
            .add(egui::DragValue::new(&mut neuron).range(0..=d.saturating_sub(1)))
            .changed()
        {
            st.neuron = Some(neuron);
        }
        if ui.small_button("most moved").clicked() {
            st.neuron = None;
            neuron = most_moved(&map);
        }
        ui.label(if map.matrix().is_some() {
            format!(
                "joint map x ↦ Ax + β: A[{neuron},{neuron}] = {:.3}, β = {:.3}",
                map.omega()[neuron],
                map.beta()[neuron]
            )
        } else {
            format!(
                "ω = {:.3}, β = {:.3}, support ({:.3}, {:.3})",
                map.omega()[neuron],
                map.beta()[neuron],
                map.lo()[neuron],
                map.hi()[neuron]
            )
        });
        ui.checkbox(&mut st.density, "density");
    });
    let prompt_value = app
        .prompt_acts
        .iter()
        .find(|(h, _)| h == hook_name)
        .and_then(|(_, v)| v.get(neuron).copied());
    let samples = entry
        .samples
        .as_ref()
        .and_then(|s| s.iter().find(|f| f.hook == hook_name))
        .map(|fs| {
            let col = |m: &crate::transport::SampleMatrix| -> Vec<f32> {
                (0..m.rows).map(|r| m.data[r * m.cols + neuron]).collect()
            };
            let source = col(&fs.source);
            let cols = fs.source.cols.max(1);
            let moved = fs
                .source
                .data
                .chunks_exact(cols)
                .map(|row| map.transport_neuron(neuron, row))
                .collect();
            distribution::NeuronSamples {
                source,
                target: col(&fs.target),
                moved,
            }
        });
    distribution::show(ui, &map, neuron, samples.as_ref(), prompt_value, st.density);
    layers::show(ui, &hooks, &mut st.metric, &mut st.log);
    if let Some((h, k)) = heatmap::show(ui, &mut st.heat, &mut st.beta, &entry.concept.name, &hooks) {
        st.hook = h;
        st.neuron = Some(k);
    }
    let neuron_csv = export::neuron_csv(&entry.concept.name, hook_name, &map, neuron, samples.as_ref());
    let hooks_csv = export::hooks_csv(&hooks);
    export::buttons(app, ui, neuron_csv, hooks_csv);
}
