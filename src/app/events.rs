//! Worker events arriving on the UI thread: each one updates the app's state (columns,
//! stack, plots, messages). Nothing here runs model work.

use std::sync::Arc;

use crate::pipeline::fit_model::FitSamples;
use crate::pipeline::generate_text::Column;
use crate::transport::MapsFile;
use crate::worker::{Event, JobError};

use super::{Editor, Output, StackEntry, StudioApp, image};

impl StudioApp {
    /// Applies one worker event.
    pub(super) fn handle(&mut self, e: Event) {
        match e {
            Event::ModelLoaded(info) => {
                self.settings.remember_model(info.path.clone());
                self.info(format!(
                    "loaded {} ({}, {} layers, hidden size {})",
                    info.path.display(),
                    info.architecture,
                    info.n_layers,
                    info.hidden_size
                ));
                // Concepts fitted for another model no longer apply (image concepts of the
                // loaded diffusion pipeline stay).
                let fp = &info.fingerprint;
                let image_fp = self.image_model.as_ref().map(|m| &m.fingerprint);
                self.stack.retain(|c| {
                    let f = &c.concept.maps.meta().fingerprint;
                    &f.to_string() == fp || Some(f) == image_fp
                });
                self.output = Output::default();
                self.prompt_acts.clear();
                self.sweep.rows.clear();
                self.plots.invalidate();
                self.model = Some(info);
            }
            Event::DatasetLoaded(d, lens) => {
                self.editor = Some(Editor {
                    origin: d.origin.clone(),
                    // One sample per line: line breaks inside a sample become spaces.
                    text: d
                        .samples
                        .iter()
                        .map(|x| x.split_whitespace().collect::<Vec<_>>().join(" "))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    token_lens: lens,
                });
            }
            Event::Progress(p) => self.progress = Some(p),
            Event::JobStarted(kind) => self.running = Some(kind),
            // Text of an older, stopped generation does not belong in the columns.
            Event::Token(id, _, _) | Event::ColumnDone { id, .. } if id != self.output.started => {}
            Event::Token(_, col, text) => match col {
                Column::Unsteered => self.output.unsteered.push_str(&text),
                Column::Steered => {
                    if self.output.first_steered_token.is_none()
                        && let Some(t) = self.output.requested
                    {
                        self.output.first_steered_token = Some(t.elapsed());
                        if let Some(r) = self.output.released.take() {
                            self.output.release_to_token = Some(r.elapsed());
                        }
                    }
                    self.output.steered.push_str(&text);
                }
            },
            Event::ColumnDone { column, complete, .. } => match column {
                Column::Unsteered if complete => self.output.unsteered_key = self.output.pending_key.take(),
                Column::Unsteered => self.output.pending_key = None,
                Column::Steered => self.output.generating = false,
            },
            Event::PromptActivations(a) => self.prompt_acts = a,
            Event::Fitted(maps, samples) => {
                let name = maps.meta().concept.clone();
                self.info(format!(
                    "fitted `{name}` at {} hook points",
                    maps.meta().hook_points.len()
                ));
                self.add_concept(maps, Some(samples));
            }
            Event::SweepDone(rows) => {
                self.info(format!("sweep done: {} λ values", rows.len()));
                self.sweep.rows = rows;
            }
            Event::ConceptMade(description, lines) => {
                self.info(format!(
                    "{} sentences about `{description}`: edit, then save",
                    lines.len()
                ));
                self.editor = Some(Editor {
                    origin: format!("made from: {description}"),
                    text: lines.join("\n"),
                    token_lens: Vec::new(),
                });
            }
            Event::MapsSaved(p) => self.info(format!("saved {}", p.display())),
            Event::MapsLoaded(maps, p) => {
                self.info(format!("loaded maps {}", p.display()));
                self.add_concept(maps, None);
            }
            Event::ImageModelLoaded(info) => image::model_loaded(self, info),
            Event::ImageModelUnloaded => image::model_unloaded(self),
            Event::ImageFitted(maps) => {
                let m = maps.meta();
                self.info(format!(
                    "fitted `{}` at {} hook points on {} + {} prompts",
                    m.concept,
                    m.hook_points.len(),
                    m.source.count,
                    m.target.count
                ));
                self.add_concept(maps, None);
            }
            Event::ImageProgress(p) => image::progress(self, p),
            Event::Image(r) => image::image_arrived(self, *r),
            Event::ImagesDone { id, complete } => image::job_done(self, id, complete),
            Event::Idle => {
                self.pending = self.pending.saturating_sub(1);
                self.running = None;
                if self.pending == 0 {
                    self.progress = None;
                    self.output.generating = false;
                    self.image.generating = false;
                }
            }
            Event::Failed(JobError::Cancelled) => self.info("stopped".into()),
            Event::Failed(JobError::Failed(msg)) => self.error(msg),
        }
    }

    /// Adds (or replaces, by name) a concept at λ = 1.
    pub(super) fn add_concept(&mut self, maps: Arc<MapsFile>, samples: Option<Arc<Vec<FitSamples>>>) {
        let name = maps.meta().concept.clone();
        let entry = StackEntry {
            concept: crate::transport::Concept {
                name: name.clone(),
                maps,
                lambda: 1.0,
                enabled: true,
            },
            samples,
            extended: false,
        };
        match self.stack.iter_mut().find(|e| e.concept.name == name) {
            Some(e) => *e = entry,
            None => self.stack.push(entry),
        }
        self.plots.concept = self
            .stack
            .iter()
            .position(|e| e.concept.name == name)
            .unwrap_or(0);
        self.plots.invalidate();
    }
}
