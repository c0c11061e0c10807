//! Exports of the plots: the data behind them as CSV (the shown neuron's samples with its
//! map; every hook point's summary), and the panel as drawn as a PNG (a screenshot of the
//! window, cropped to the panel). Files are written atomically.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use eframe::egui;

use crate::transport::{HookMap, atomic_write};

use super::super::{DialogResult, StudioApp};
use super::distribution::NeuronSamples;
use super::layers::{Metric, layer_and_kind, value};

/// The shown neuron: one row per sample (`series,value`), after `#` lines with the map.
pub fn neuron_csv(concept: &str, hook: &str, map: &HookMap, k: usize, s: Option<&NeuronSamples>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# concept: {concept}, hook point: {hook}, neuron: {k}");
    match map.matrix() {
        // A joint map moves neuron k by a whole row of A: write the row, not a lone ω.
        Some(a) => {
            let d = map.dim();
            let row: Vec<String> = a[k * d..(k + 1) * d].iter().map(f32::to_string).collect();
            let _ = writeln!(
                out,
                "# joint map x -> A x + beta: beta[{k}]: {}, row {k} of A: {}",
                map.beta()[k],
                row.join(" ")
            );
        }
        None => {
            let _ = writeln!(
                out,
                "# omega: {}, beta: {}, support: ({}, {})",
                map.omega()[k],
                map.beta()[k],
                map.lo()[k],
                map.hi()[k]
            );
        }
    }
    out.push_str("series,value\n");
    if let Some(s) = s {
        for (name, v) in [
            ("source", &s.source),
            ("target", &s.target),
            ("transported", &s.moved),
        ] {
            for x in v.iter() {
                let _ = writeln!(out, "{name},{x}");
            }
        }
    }
    out
}

/// Every hook point: its layer and kind and the summaries the curves show.
pub fn hooks_csv(hooks: &[(&str, &std::sync::Arc<HookMap>)]) -> String {
    let mut out =
        String::from("hook_point,layer,kind,w1_before,w1_after,mean_abs_omega_minus_1,mean_abs_beta\n");
    let f = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    for (i, (name, m)) in hooks.iter().enumerate() {
        let (layer, kind) = layer_and_kind(name, i);
        let _ = writeln!(
            out,
            "{name},{layer},{kind},{},{},{},{}",
            f(value(m, Metric::W1, false)),
            f(value(m, Metric::W1, true)),
            f(value(m, Metric::Omega, false)),
            f(value(m, Metric::Beta, false)),
        );
    }
    out
}

/// The export buttons under the plots.
pub fn buttons(app: &mut StudioApp, ui: &mut egui::Ui, neuron: String, hooks: String) {
    ui.horizontal_wrapped(|ui| {
        ui.label("export:");
        if ui.button("neuron CSV…").clicked() {
            let d = rfd::FileDialog::new()
                .add_filter("CSV", &["csv"])
                .set_file_name("neuron.csv");
            app.dialog(d, true, false, move |p| DialogResult::WriteText(p, neuron));
        }
        if ui.button("hook points CSV…").clicked() {
            let d = rfd::FileDialog::new()
                .add_filter("CSV", &["csv"])
                .set_file_name("hook-points.csv");
            app.dialog(d, true, false, move |p| DialogResult::WriteText(p, hooks));
        }
        if ui.button("PNG…").clicked() {
            let d = rfd::FileDialog::new()
                .add_filter("PNG", &["png"])
                .set_file_name("plots.png");
            app.dialog(d, true, false, DialogResult::PlotsPng);
        }
    });
}

/// Writes `text` to `path` atomically; the outcome goes to the status line.
pub fn write_text(app: &mut StudioApp, path: &Path, text: &str) {
    match atomic_write(path, text.as_bytes()) {
        Ok(()) => app.info(format!("exported {}", path.display())),
        Err(e) => app.error(format!("{}: {e}", path.display())),
    }
}

/// Asks for a screenshot of the window; [`take_screenshot`] saves it when it arrives.
pub fn request_png(app: &mut StudioApp, ctx: &egui::Context, path: PathBuf) {
    app.plots.png = Some(path);
    app.tab = super::super::Tab::Plots;
    ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(egui::UserData::default()));
}

/// Saves a screenshot that arrived this frame for a pending PNG, cropped to the panel.
pub fn take_screenshot(app: &mut StudioApp, ctx: &egui::Context) {
    let Some(path) = app.plots.png.clone() else { return };
    let shot = ctx.input(|i| {
        i.raw.events.iter().find_map(|e| match e {
            egui::Event::Screenshot { image, .. } => Some(image.clone()),
            _ => None,
        })
    });
    let Some(img) = shot else { return };
    app.plots.png = None;
    let scale = ctx.pixels_per_point();
    let [w, h] = img.size;
    let bytes: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
    let r = ::image::RgbaImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| "the screenshot has a bad size".to_string())
        .and_then(|full| {
            let area = app.plots.area.unwrap_or(egui::Rect::from_min_size(
                egui::Pos2::ZERO,
                egui::vec2(w as f32 / scale, h as f32 / scale),
            ));
            let x = ((area.left() * scale).max(0.0) as u32).min(w as u32);
            let y = ((area.top() * scale).max(0.0) as u32).min(h as u32);
            let cw = ((area.width() * scale) as u32).min(w as u32 - x).max(1);
            let ch = ((area.height() * scale) as u32).min(h as u32 - y).max(1);
            let crop = ::image::imageops::crop_imm(&full, x, y, cw, ch).to_image();
            let mut png = std::io::Cursor::new(Vec::new());
            crop.write_to(&mut png, ::image::ImageFormat::Png)
                .map_err(|e| e.to_string())?;
            atomic_write(&path, png.get_ref()).map_err(|e| e.to_string())
        });
    match r {
        Ok(()) => app.info(format!("saved {}", path.display())),
        Err(e) => app.error(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_neuron_csv_has_one_row_per_sample_under_its_map() {
        let s = NeuronSamples {
            source: vec![1.0, 2.0],
            target: vec![3.0],
            moved: vec![1.5, 2.5],
        };
        let map = HookMap::new(
            crate::transport::Method::LinearAct,
            crate::transport::Support::Unbounded,
            vec![2.0],
            vec![0.5],
            vec![0.0],
            vec![4.0],
            Default::default(),
        );
        let Ok(map) = map else { panic!("a valid map") };
        let csv = neuron_csv("football", "layers.0.mlp_norm", &map, 0, Some(&s));
        let rows: Vec<&str> = csv.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rows,
            [
                "series,value",
                "source,1",
                "source,2",
                "target,3",
                "transported,1.5",
                "transported,2.5"
            ]
        );
        assert!(csv.contains("omega: 2, beta: 0.5, support: (0, 4)"), "{csv}");
        let joint = HookMap::joint(
            crate::transport::Method::JointGaussian,
            vec![2.0, -1.0, 0.5, 1.0],
            vec![0.25, 0.0],
            Default::default(),
        );
        let Ok(joint) = joint else {
            panic!("a valid joint map")
        };
        let csv = neuron_csv("negate:red", "unet.x.attn2", &joint, 1, None);
        assert!(csv.contains("beta[1]: 0, row 1 of A: 0.5 1"), "{csv}");
        assert!(!csv.contains("omega"), "{csv}");
    }
}
