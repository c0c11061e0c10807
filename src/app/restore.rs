//! The steering stack across sessions. Every stack entry has a maps file: a loaded concept
//! its own, a concept fitted in the app one written (atomically, by the worker) into the
//! app's data folder as soon as the fit ends. At exit the stack (paths, λ, on/off, range) is
//! stored with the settings; at the next start each entry is loaded again when the model it
//! belongs to is (checked against that model like any maps file), and gets its λ back.

use std::path::PathBuf;
use std::sync::Arc;

use crate::transport::MapsFile;
use crate::worker::Command;

use super::settings::{SavedConcept, Settings};
use super::{StackEntry, StudioApp};

impl StudioApp {
    /// The settings as they should be stored: the form, plus the stack as it is now (entries
    /// still waiting to be restored are kept, so a session without their model loses none).
    pub fn settings_to_save(&self) -> Settings {
        let mut s = self.settings.clone();
        s.scope = self.scope.name().to_string();
        s.stack = Self::saved_entries(&self.stack);
        for r in &self.restore {
            if !s.stack.iter().any(|c| c.path == r.path) {
                s.stack.push(r.clone());
            }
        }
        s
    }

    /// Stack entries as they are stored (those with a maps file).
    pub(super) fn saved_entries(stack: &[StackEntry]) -> Vec<SavedConcept> {
        stack
            .iter()
            .filter_map(|e| {
                Some(SavedConcept {
                    path: e.path.clone()?,
                    name: e.concept.name.clone(),
                    fingerprint: e.concept.maps.meta().fingerprint.to_string(),
                    lambda: e.concept.lambda,
                    enabled: e.concept.enabled,
                    extended: e.extended,
                })
            })
            .collect()
    }

    /// Loads the saved stack entries that belong to the model with `fingerprint` (the
    /// language model's, or a diffusion pipeline's); they join the stack in their old order.
    pub(super) fn restore_stack_for(&mut self, fingerprint: &str) {
        let due: Vec<PathBuf> = self
            .restore
            .iter()
            .filter(|c| c.fingerprint == fingerprint)
            .map(|c| c.path.clone())
            .collect();
        for p in due {
            self.send(Command::LoadMaps(p));
        }
    }

    /// After maps from `path` joined the stack: give a restored entry its λ, on/off and
    /// range back (true when it was one).
    pub(super) fn apply_restored(&mut self, path: &PathBuf) -> bool {
        let Some(i) = self.restore.iter().position(|c| &c.path == path) else {
            return false;
        };
        let saved = self.restore.remove(i);
        if let Some(e) = self.stack.iter_mut().find(|e| e.path.as_ref() == Some(path)) {
            e.concept.lambda = saved.lambda.clamp(-2.0, 2.0);
            e.concept.enabled = saved.enabled;
            e.extended = saved.extended || saved.lambda.abs() > 1.0;
        }
        true
    }

    /// Forgets a saved entry that could not be loaded (its error is on screen).
    pub(super) fn drop_restore(&mut self, path: &PathBuf) {
        self.restore.retain(|c| &c.path != path);
    }

    /// Writes a concept fitted in the app into the data folder (through the worker, atomically)
    /// and records the path in its stack entry; without a data folder it lives only as long
    /// as the session.
    pub(super) fn keep_fitted(&mut self, maps: &Arc<MapsFile>) {
        let Some(dir) = self.data_dir.clone() else { return };
        let meta = maps.meta();
        let sha = &meta.data_sha256;
        let stem: String = meta
            .concept
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{stem}-{}.safetensors", sha.get(..12).unwrap_or("maps")));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            self.error(format!(
                "cannot keep `{}` for the next session: {}: {e}",
                meta.concept,
                dir.display()
            ));
            return;
        }
        if let Some(e) = self.stack.iter_mut().find(|e| Arc::ptr_eq(&e.concept.maps, maps)) {
            e.path = Some(path.clone());
        }
        self.keeping.push(path.clone());
        self.send(Command::SaveMaps(maps.clone(), path));
    }
}
