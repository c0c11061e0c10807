//! File dialogs: each runs on its own thread (rfd blocks), and its result comes back to the
//! UI thread as a [`DialogResult`] over a channel.

use std::path::PathBuf;
use std::sync::Arc;

use crate::transport::MapsFile;
use crate::worker::Command;

use super::{SaveWhat, StudioApp, concepts_panel, output_panel};

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
}

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
                let picked = if folder {
                    dialog.pick_folder()
                } else if save {
                    dialog.save_file()
                } else {
                    dialog.pick_file()
                };
                if let Some(p) = picked {
                    let _ = tx.send(wrap(p));
                    ctx.request_repaint();
                }
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
            DialogResult::ExportSweep(p) => output_panel::export_sweep(self, &p),
        }
    }
}
