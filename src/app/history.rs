//! The run history: every finished generation (prompt, settings, both columns), newest shown
//! first in the output panel, reopened with a click, and exported as JSON Lines with what
//! reproduces each run (the model's file and fingerprint, each concept's maps hash).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::transport::atomic_write;

use super::StudioApp;
use super::run_settings::RunSettings;

/// Runs kept (the oldest are dropped).
pub const MAX_RUNS: usize = 200;

/// One finished generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Seconds since the Unix epoch when it finished.
    pub finished_unix_s: u64,
    /// The model file.
    pub model: String,
    /// The model's fingerprint (what maps are checked against).
    pub fingerprint: String,
    /// Settings and steering of the steered column.
    pub settings: RunSettings,
    /// The unsteered column.
    pub unsteered: String,
    /// The steered column.
    pub steered: String,
}

impl Run {
    /// One line for the history list.
    pub fn title(&self) -> String {
        let prompt: String = self
            .settings
            .prompt
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let short: String = prompt.chars().take(40).collect();
        let more = if prompt.chars().count() > 40 { "…" } else { "" };
        let l: Vec<String> = self
            .settings
            .concepts
            .iter()
            .map(|c| format!("{}={:.2}", c.name, c.lambda))
            .collect();
        format!("“{short}{more}” {}", l.join(" "))
    }
}

/// The runs as JSON Lines (one object per line).
pub fn to_jsonl(runs: &[Run]) -> Result<String, serde_json::Error> {
    let mut out = String::new();
    for r in runs {
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    Ok(out)
}

impl StudioApp {
    /// Records the generation that just finished (both columns complete).
    pub(super) fn record_run(&mut self) {
        let (Some(settings), Some(model)) = (self.output.steered_run.clone(), self.model.as_ref()) else {
            return;
        };
        let run = Run {
            finished_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.path.display().to_string(),
            fingerprint: model.fingerprint.clone(),
            settings,
            unsteered: self.output.unsteered.clone(),
            steered: self.output.steered.clone(),
        };
        self.history.push(run);
        if self.history.len() > MAX_RUNS {
            self.history.remove(0);
        }
    }

    /// Shows run `i` of the history in the columns and puts its settings in the form (the
    /// stack is left as it is: its λs are in the run's line).
    pub fn reopen_run(&mut self, i: usize) {
        let Some(r) = self.history.get(i).cloned() else {
            return;
        };
        let s = &mut self.settings;
        s.prompt = r.settings.prompt.clone();
        s.chat = r.settings.chat;
        s.system = r.settings.system.clone();
        s.max_tokens = r.settings.max_tokens;
        s.temperature = r.settings.temperature;
        s.top_k = r.settings.top_k;
        s.top_p = r.settings.top_p;
        s.seed = r.settings.seed;
        self.output.unsteered = r.unsteered;
        self.output.steered = r.steered;
        self.output.unsteered_run = Some(r.settings.unsteered());
        self.output.steered_run = Some(r.settings);
    }

    /// Writes the history as JSON Lines, atomically.
    pub fn export_history(&mut self, path: &Path) {
        let r = to_jsonl(&self.history)
            .map_err(|e| e.to_string())
            .and_then(|t| atomic_write(path, t.as_bytes()).map_err(|e| e.to_string()));
        match r {
            Ok(()) => self.info(format!(
                "exported {} runs to {}",
                self.history.len(),
                path.display()
            )),
            Err(e) => self.error(format!("{}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::run_settings::AppliedConcept;

    #[test]
    fn history_lines_are_json_objects_that_read_back() {
        let run = Run {
            finished_unix_s: 1,
            model: "m.gguf".into(),
            fingerprint: "llama:30x576".into(),
            settings: RunSettings {
                prompt: "Once\nupon".into(),
                chat: false,
                system: String::new(),
                max_tokens: 4,
                temperature: 0.0,
                top_k: 50,
                top_p: 0.9,
                seed: 1,
                scope: "all".into(),
                concepts: vec![AppliedConcept {
                    name: "football".into(),
                    lambda: 1.0,
                    maps_sha256: "00ff".into(),
                }],
            },
            unsteered: "a \"quoted\"\nline".into(),
            steered: "b".into(),
        };
        let text = to_jsonl(&[run.clone(), run.clone()]).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let back: Run = serde_json::from_str(lines[1]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, run);
        assert_eq!(run.title(), "“Once upon” football=1.00");
    }
}
