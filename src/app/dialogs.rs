//! File dialogs: each runs on its own thread (rfd blocks), and its result comes back to the
//! UI thread as a [`DialogResult`] over a channel. Where the desktop has no file-picker
//! service (no xdg-desktop-portal, a bare X server), rfd returns at once with nothing: that
//! is reported, pointing to the path bar of the model panel, which does every file action by
//! typed path.

use std::path::PathBuf;
use std::sync::Arc;

use crate::transport::MapsFile;
use crate::worker::Command;

use super::{SaveWhat, StudioApp, concepts_panel, output_panel, plots, sweep_panel};

/// Results of file dialogs, which run on their own threads.
pub(super) enum DialogResult {
    OpenModel(PathBuf),
    OpenImageModel(PathBuf),
    SaveImage(PathBuf, SaveWhat),
    LoadImageSettings(PathBuf),
    ImageSourceFile(PathBuf),
    ImageTargetFile(PathBuf),
    SourceFile(PathBuf),
    TargetFile(PathBuf),
    AddDataset(PathBuf),
    SaveDataset(PathBuf),
    SaveMaps(Arc<MapsFile>, PathBuf),
    LoadMaps(PathBuf),
    ExportOutput(PathBuf),
    ExportSweep(PathBuf),
    ExportSweepSamples(PathBuf),
    ExportHistory(PathBuf),
    /// Write this text (an export prepared when the button was pressed) to the file.
    WriteText(PathBuf, String),
    /// Save the plots panel as a PNG.
    PlotsPng(PathBuf),
    /// The dialog came back at once with nothing: no dialog could be shown.
    Unavailable,
}

/// A dialog that returns with nothing faster than this was never shown (nobody cancels a
/// file picker within a quarter of a second).
const NO_DIALOG_MS: u128 = 250;

impl StudioApp {
    /// Runs a file dialog on its own thread; `wrap` turns the chosen path into a result.
    pub(super) fn dialog(
        &self,
        dialog: rfd::FileDialog,
        save: bool,
        folder: bool,
        wrap: impl FnOnce(PathBuf) -> DialogResult + Send + 'static,
    ) {
        let tx = self.dialogs.0.clone();
        let ctx = self.ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("act-dialog".into())
            .spawn(move || {
                let t = std::time::Instant::now();
                let picked = if folder {
                    dialog.pick_folder()
                } else if save {
                    dialog.save_file()
                } else {
                    dialog.pick_file()
                };
                let result = match picked {
                    Some(p) => wrap(p),
                    None if t.elapsed().as_millis() < NO_DIALOG_MS => DialogResult::Unavailable,
                    None => return,
                };
                let _ = tx.send(result);
                ctx.request_repaint();
            });
        if spawned.is_err() {
            // Without a thread for the dialog there is no dialog; nothing else is affected.
        }
    }

    pub(super) fn handle_dialog(&mut self, r: DialogResult) {
        match r {
            DialogResult::OpenModel(p) => self.load_model(p),
            DialogResult::OpenImageModel(p) => self.load_image_model(p),
            DialogResult::SaveImage(p, what) => self.save_image_png(&p, what),
            DialogResult::LoadImageSettings(p) => self.load_image_settings(&p),
            DialogResult::ImageSourceFile(p) => self.settings.image.fit_source = p.display().to_string(),
            DialogResult::ImageTargetFile(p) => self.settings.image.fit_target = p.display().to_string(),
            DialogResult::SourceFile(p) => {
                self.settings.source = p.display().to_string();
                self.settings.add_dataset(self.settings.source.clone());
            }
            DialogResult::TargetFile(p) => {
                self.settings.target = p.display().to_string();
                self.settings.add_dataset(self.settings.target.clone());
            }
            DialogResult::AddDataset(p) => self.settings.add_dataset(p.display().to_string()),
            DialogResult::SaveDataset(p) => concepts_panel::save_editor(self, &p),
            DialogResult::SaveMaps(maps, p) => self.send(Command::SaveMaps(maps, p)),
            DialogResult::LoadMaps(p) => self.send(Command::LoadMaps(p)),
            DialogResult::ExportOutput(p) => output_panel::export_output(self, &p),
            DialogResult::ExportSweep(p) => sweep_panel::export(self, &p, false),
            DialogResult::ExportSweepSamples(p) => sweep_panel::export(self, &p, true),
            DialogResult::ExportHistory(p) => self.export_history(&p),
            DialogResult::WriteText(p, text) => plots::write_text(self, &p, &text),
            DialogResult::PlotsPng(p) => {
                let ctx = self.ctx.clone();
                plots::request_png(self, &ctx, p);
            }
            DialogResult::Unavailable => self.error(
                "no file dialog is available on this desktop (it needs xdg-desktop-portal or GTK): \
                 type the path in the path bar of the Model panel instead"
                    .into(),
            ),
        }
    }
}
