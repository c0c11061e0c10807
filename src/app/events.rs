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
                let (keep, leave): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.stack).into_iter().partition(|c| {
                        let f = &c.concept.maps.meta().fingerprint;
                        &f.to_string() == fp || Some(f) == image_fp
                    });
                self.stack = keep;
                // They come back if their model is loaded again (this session or the next).
                let mut park = StudioApp::saved_entries(&leave);
                park.retain(|c| !self.restore.iter().any(|r| r.path == c.path));
                self.restore.extend(park);
                self.output = Output::default();
                self.prompt_acts.clear();
                self.sweep.rows.clear();
                self.plots.invalidate();
                let fp = info.fingerprint.clone();
                self.model = Some(info);
                self.restore_stack_for(&fp);
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
                Column::Unsteered => {
                    self.output.rates[0].token();
                    self.output.unsteered.push_str(&text);
                }
                Column::Steered => {
                    self.output.rates[1].token();
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
            Event::ColumnDone { column, complete, .. } => {
                let run = self.output.pending_run.clone();
                match column {
                    Column::Unsteered if complete => self.output.unsteered_run = run.map(|r| r.unsteered()),
                    Column::Unsteered => {}
                    Column::Steered => {
                        self.output.generating = false;
                        self.output.pending_run = None;
                        if complete {
                            self.output.steered_run = run;
                            if self.output.unsteered_run.is_some() {
                                self.record_run();
                            }
                        }
                    }
                }
            }
            Event::PromptActivations(a) => self.prompt_acts = a,
            Event::Fitted(maps, samples) => {
                let name = maps.meta().concept.clone();
                self.info(format!(
                    "fitted `{name}` at {} hook points",
                    maps.meta().hook_points.len()
                ));
                self.add_concept(maps.clone(), Some(samples), None);
                self.keep_fitted(&maps);
                self.lambda_released();
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
            Event::MapsSaved(p) => {
                // Concepts kept for the next session are saved without a word.
                let kept = self.keeping.iter().position(|k| k == &p);
                if let Some(i) = kept {
                    self.keeping.remove(i);
                } else {
                    self.info(format!("saved {}", p.display()));
                    self.settings.remember_maps(p);
                }
            }
            Event::MapsLoaded(maps, p) => {
                self.add_concept(maps, None, Some(p.clone()));
                if self.apply_restored(&p) {
                    self.info(format!("restored {}", p.display()));
                } else {
                    self.info(format!("loaded maps {}", p.display()));
                    self.settings.remember_maps(p);
                }
                self.lambda_released();
            }
            Event::ImageModelLoaded(info) => image::model_loaded(self, info),
            Event::ImageModelUnloaded => image::model_unloaded(self),
            Event::Serving(info) => {
                match &info {
                    Some(s) => self.info(format!("serving the OpenAI API at {}", s.url)),
                    None if self.serving.is_some() => self.info("the server stopped".into()),
                    None => {}
                }
                self.serving = info;
            }
            Event::ImageFitted(maps) => {
                let m = maps.meta();
                self.info(format!(
                    "fitted `{}` at {} hook points on {} + {} prompts",
                    m.concept,
                    m.hook_points.len(),
                    m.source.count,
                    m.target.count
                ));
                self.add_concept(maps, None, None);
            }
            Event::ImageProgress(p) => image::progress(self, p),
            Event::Image(r) => image::image_arrived(self, *r),
            Event::ImagePreview(p) => image::preview_arrived(self, *p),
            Event::ImagesDone { id, complete } => image::job_done(self, id, complete),
            Event::Idle => {
                self.jobs.pop_front();
                self.running = None;
                if self.jobs.is_empty() {
                    self.progress = None;
                    self.output.generating = false;
                    self.image.generating = false;
                }
            }
            Event::Failed(JobError::Cancelled) => self.info("stopped".into()),
            Event::Failed(JobError::Failed(msg)) => {
                // A stack entry of the last session that no longer loads is forgotten.
                let gone: Vec<_> = self
                    .restore
                    .iter()
                    .filter(|c| msg.contains(&c.path.display().to_string()))
                    .map(|c| c.path.clone())
                    .collect();
                for p in &gone {
                    self.drop_restore(p);
                }
                self.error(msg);
            }
        }
    }

    /// Adds (or replaces, by name) a concept at λ = 1; `path` is its maps file, when it has
    /// one.
    pub(super) fn add_concept(
        &mut self,
        maps: Arc<MapsFile>,
        samples: Option<Arc<Vec<FitSamples>>>,
        path: Option<std::path::PathBuf>,
    ) {
        let name = maps.meta().concept.clone();
        let maps_sha256 = maps.meta().data_sha256.clone();
        let entry = StackEntry {
            concept: crate::transport::Concept {
                name: name.clone(),
                maps,
                lambda: 1.0,
                enabled: true,
            },
            samples,
            extended: false,
            path,
            maps_sha256,
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
