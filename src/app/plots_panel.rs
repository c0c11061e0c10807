//! Plots panel: for a chosen concept, hook point and neuron (default: the neuron the map moves
//! most), histograms of the source, target and transported source activations with the
//! prompt's activation, the map line; per-layer summaries (W1 before and after transport,
//! mean |ω − 1| and |β|) and a heatmap of ω or β over hook points × neurons.

use eframe::egui;
use egui_plot::{Bar, BarChart, Legend, Line, Plot, PlotPoints, VLine};

use crate::transport::HookMap;

use super::StudioApp;

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
    heat: Option<(String, egui::TextureHandle)>,
}

impl PlotsState {
    /// Forgets cached drawings (the concepts changed).
    pub fn invalidate(&mut self) {
        self.heat = None;
        self.neuron = None;
    }
}

/// The neuron whose source mean the map moves most: argmax |ω·m + β − m| inside the support.
pub fn most_moved(map: &HookMap) -> usize {
    let means = map.diagnostics().get("src_mean");
    let (o, b) = (map.omega(), map.beta());
    (0..map.dim())
        .max_by(|&i, &j| {
            let shift = |k: usize| {
                let m = means.and_then(|v| v.get(k)).copied().unwrap_or(0.0);
                (o[k] * m + b[k] - m).abs()
            };
            shift(i).total_cmp(&shift(j))
        })
        .unwrap_or(0)
}

/// `a` moved by the map at λ = 1 (strictly inside the support), else unchanged.
fn transport(map: &HookMap, k: usize, a: f32) -> f32 {
    if a > map.lo()[k] && a < map.hi()[k] {
        map.omega()[k] * a + map.beta()[k]
    } else {
        a
    }
}

fn histogram(name: &str, values: &[f32], lo: f32, width: f32, bins: usize, color: egui::Color32) -> BarChart {
    let mut counts = vec![0usize; bins];
    for &v in values {
        let i = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let n = values.len().max(1) as f64;
    let bars = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| Bar::new((lo + (i as f32 + 0.5) * width) as f64, c as f64 / n).width(width as f64))
        .collect();
    BarChart::new(name, bars).color(color)
}

/// Draws the panel.
pub fn show(app: &mut StudioApp, ui: &mut egui::Ui) {
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
    ui.horizontal(|ui| {
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
    ui.horizontal(|ui| {
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
        ui.label(format!(
            "ω = {:.3}, β = {:.3}, support ({:.3}, {:.3})",
            map.omega()[neuron],
            map.beta()[neuron],
            map.lo()[neuron],
            map.hi()[neuron]
        ));
    });
    let prompt_value = app
        .prompt_acts
        .iter()
        .find(|(h, _)| h == hook_name)
        .and_then(|(_, v)| v.get(neuron).copied());
    let samples = entry
        .samples
        .as_ref()
        .and_then(|s| s.iter().find(|f| f.hook == hook_name));
    let height = 220.0;
    match samples {
        Some(fs) => {
            let col = |m: &crate::transport::SampleMatrix| -> Vec<f32> {
                (0..m.rows).map(|r| m.data[r * m.cols + neuron]).collect()
            };
            let src = col(&fs.source);
            let tgt = col(&fs.target);
            let moved: Vec<f32> = src.iter().map(|&a| transport(&map, neuron, a)).collect();
            let all = src.iter().chain(&tgt).chain(&moved).chain(prompt_value.iter());
            let (lo, hi) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
            let bins = 30;
            let width = ((hi - lo) / bins as f32).max(1e-6);
            ui.columns(2, |cols| {
                Plot::new("hist")
                    .height(height)
                    .legend(Legend::default())
                    .x_axis_label("activation (pooled)")
                    .y_axis_label("share of samples")
                    .show(&mut cols[0], |p| {
                        p.bar_chart(histogram(
                            "source",
                            &src,
                            lo,
                            width,
                            bins,
                            egui::Color32::from_rgba_unmultiplied(90, 140, 230, 150),
                        ));
                        p.bar_chart(histogram(
                            "target",
                            &tgt,
                            lo,
                            width,
                            bins,
                            egui::Color32::from_rgba_unmultiplied(230, 120, 60, 150),
                        ));
                        p.bar_chart(histogram(
                            "transported source",
                            &moved,
                            lo,
                            width,
                            bins,
                            egui::Color32::from_rgba_unmultiplied(80, 200, 120, 150),
                        ));
                        if let Some(v) = prompt_value {
                            p.vline(VLine::new("your prompt", v as f64).color(egui::Color32::WHITE));
                        }
                    });
                let (slo, shi) = src.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                    (l.min(v), h.max(v))
                });
                let line: PlotPoints = (0..=50)
                    .map(|i| {
                        let a = slo + (shi - slo) * i as f32 / 50.0;
                        [a as f64, transport(&map, neuron, a) as f64]
                    })
                    .collect();
                let identity: PlotPoints = vec![[slo as f64, slo as f64], [shi as f64, shi as f64]].into();
                Plot::new("map-line")
                    .height(height)
                    .legend(Legend::default())
                    .x_axis_label("source activation a")
                    .y_axis_label("T(a)")
                    .show(&mut cols[1], |p| {
                        p.line(Line::new("T(a) = ωa + β", line));
                        p.line(Line::new("identity", identity).color(egui::Color32::GRAY));
                    });
            });
        }
        None => {
            ui.label("Histograms need the samples of a fit made in this session (loaded maps carry only their parameters).");
        }
    }
    summary(ui, &hooks);
    heatmap(ui, st, &entry.concept.name, &hooks);
}

fn mean_of(v: Option<&Vec<f32>>) -> Option<f64> {
    let v = v?;
    let finite: Vec<f64> = v.iter().filter(|x| x.is_finite()).map(|&x| x as f64).collect();
    (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64)
}

fn summary(ui: &mut egui::Ui, hooks: &[(&str, &std::sync::Arc<HookMap>)]) {
    let series = |f: &dyn Fn(&HookMap) -> Option<f64>| -> PlotPoints {
        hooks
            .iter()
            .enumerate()
            .filter_map(|(i, (_, m))| f(m).map(|v| [i as f64, v]))
            .collect()
    };
    let w1b = series(&|m| mean_of(m.diagnostics().get("w1_before")));
    let w1a = series(&|m| mean_of(m.diagnostics().get("w1_after")));
    let dw = series(&|m| {
        Some(m.omega().iter().map(|w| (w - 1.0).abs() as f64).sum::<f64>() / m.dim().max(1) as f64)
    });
    let db = series(&|m| Some(m.beta().iter().map(|b| b.abs() as f64).sum::<f64>() / m.dim().max(1) as f64));
    ui.label("per hook point (x = hook index in forward order)");
    Plot::new("summary")
        .height(180.0)
        .legend(Legend::default())
        .show(ui, |p| {
            p.line(Line::new("mean W1 source to target, before", w1b));
            p.line(Line::new("mean W1, after transport", w1a));
            p.line(Line::new("mean |ω − 1|", dw));
            p.line(Line::new("mean |β|", db));
        });
}

fn heatmap(
    ui: &mut egui::Ui,
    st: &mut PlotsState,
    concept: &str,
    hooks: &[(&str, &std::sync::Arc<HookMap>)],
) {
    ui.horizontal(|ui| {
        ui.label("heatmap over hook points (rows) × neurons (columns):");
        if ui.selectable_label(!st.beta, "ω").clicked() {
            st.beta = false;
        }
        if ui.selectable_label(st.beta, "β").clicked() {
            st.beta = true;
        }
    });
    let key = format!("{concept}|{}|{}", st.beta, hooks.len());
    if st.heat.as_ref().is_none_or(|(k, _)| k != &key) {
        let d = hooks.iter().map(|(_, m)| m.dim()).max().unwrap_or(1).max(1);
        let centre = if st.beta { 0.0 } else { 1.0 };
        let vals = |m: &HookMap| {
            if st.beta {
                m.beta().to_vec()
            } else {
                m.omega().to_vec()
            }
        };
        let scale = hooks
            .iter()
            .flat_map(|(_, m)| vals(m))
            .filter(|v| v.is_finite())
            .map(|v| (v - centre).abs())
            .fold(0.0f32, f32::max)
            .max(1e-6);
        let mut px = Vec::with_capacity(d * hooks.len());
        for (_, m) in hooks {
            let v = vals(m);
            for k in 0..d {
                let t = v.get(k).map_or(0.0, |x| ((x - centre) / scale).clamp(-1.0, 1.0));
                let c = |a: f32| (255.0 * (1.0 - a)) as u8;
                px.push(if t >= 0.0 {
                    egui::Color32::from_rgb(255, c(t), c(t))
                } else {
                    egui::Color32::from_rgb(c(-t), c(-t), 255)
                });
            }
        }
        let img = egui::ColorImage::new([d, hooks.len()], px);
        let tex = ui
            .ctx()
            .load_texture("maps-heatmap", img, egui::TextureOptions::NEAREST);
        st.heat = Some((key, tex));
    }
    if let Some((_, tex)) = &st.heat {
        let w = ui.available_width();
        let h = (hooks.len() as f32 * 4.0).clamp(60.0, 320.0);
        ui.add(egui::Image::new((tex.id(), egui::vec2(w, h))));
        ui.small("blue: below the centre (ω < 1, β < 0), red: above; white: the identity");
    }
}
