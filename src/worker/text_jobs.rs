//! The language-model jobs: each command translated into its pipeline call, with progress
//! and results sent back as events.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::pipeline::concepts::load_dataset;
use crate::pipeline::dataset::DatasetSpec;
use crate::pipeline::describe::{DescribeOptions, concept_from_description};
use crate::pipeline::fit_concept::{FitRequest, fit_concept};
use crate::pipeline::generate_text::{TextEvent, generate_text, prompt_activations, prompt_ids};
use crate::pipeline::steering::{SteeringTarget, check_maps_for};
use crate::pipeline::sweep_request::{SweepRequest, sweep};
use crate::runtime::LoadedModel;
use crate::transport::MapsFile;

use super::State;
use super::job_error::JobError;
use super::protocol::{Event, GenerateJob, ModelInfo, Progress};

impl State {
    pub(super) fn model(&self) -> Result<Arc<LoadedModel>, JobError> {
        self.model
            .clone()
            .ok_or_else(|| JobError::failed("no model is loaded: open one in the model panel"))
    }

    pub(super) fn load_model(&mut self, path: PathBuf) -> Result<(), JobError> {
        let started = Instant::now();
        // A server would go on serving the old model.
        self.stop_server();
        self.progress("loading model", 0, 0, started);
        let m = LoadedModel::load(&path).map_err(|e| JobError::from(e).context(path.display()))?;
        let c = m.config();
        let info = ModelInfo {
            path: path.clone(),
            architecture: m.fingerprint.architecture.clone(),
            n_layers: c.n_layers,
            hidden_size: c.hidden_size,
            vocab_size: c.vocab_size,
            hook_points: m.hook_points().iter().map(|p| p.name()).collect(),
            fingerprint: m.fingerprint.to_string(),
            has_chat_template: m.tokenizer.chat_template().is_some(),
        };
        self.model = Some(Arc::new(m));
        self.send(Event::ModelLoaded(info));
        Ok(())
    }

    pub(super) fn load_dataset(&mut self, spec: &DatasetSpec) -> Result<(), JobError> {
        let d = load_dataset(spec)?;
        let lens = match &self.model {
            Some(m) => d
                .samples
                .iter()
                .map(|s| m.tokenizer.encode(s).map(|v| v.len()).unwrap_or(0))
                .collect(),
            None => Vec::new(),
        };
        self.send(Event::DatasetLoaded(d, lens));
        Ok(())
    }

    pub(super) fn fit(&mut self, req: &FitRequest) -> Result<(), JobError> {
        let m = self.model()?;
        let started = Instant::now();
        self.progress("fitting", 0, 0, started);
        let (events, notify) = (&self.events, &self.notify);
        let fitted = fit_concept(&m, req, &self.cancel, &mut |p| {
            let stage = format!("fitting: layer {} of {}", p.layer + 1, p.n_layers);
            let p = Progress {
                stage,
                done: p.done,
                total: p.total,
                started,
            };
            if events.send(Event::Progress(p)).is_ok() {
                notify();
            }
        })?;
        self.send(Event::Fitted(Arc::new(fitted.maps), Arc::new(fitted.samples)));
        Ok(())
    }

    pub(super) fn generate(&mut self, job: &GenerateJob) -> Result<(), JobError> {
        let m = self.model()?;
        let ids = prompt_ids(&m, &job.request.prompt, job.request.chat, &job.request.system)?;
        if job.record_prompt {
            self.send(Event::PromptActivations(prompt_activations(&m, &ids)?));
        }
        let id = job.id;
        generate_text(&m, &job.request, &ids, &self.cancel, &mut |e| match e {
            TextEvent::Piece(col, text) => self.send(Event::Token(id, col, text.to_string())),
            TextEvent::ColumnDone(column, complete) => self.send(Event::ColumnDone { id, column, complete }),
        })?;
        Ok(())
    }

    pub(super) fn sweep(&mut self, req: &SweepRequest) -> Result<(), JobError> {
        let m = self.model()?;
        let started = Instant::now();
        let rows = sweep(&m, req, &self.cancel, &mut |p| {
            self.progress(&format!("sweep, λ = {}", p.lambda), p.done, p.total, started)
        })?;
        self.send(Event::SweepDone(rows));
        Ok(())
    }

    pub(super) fn make_concept(&mut self, description: String, samples: usize) -> Result<(), JobError> {
        let m = self.model()?;
        let started = Instant::now();
        let opts = DescribeOptions {
            samples,
            ..Default::default()
        };
        let lines = concept_from_description(&m, &description, &opts, &self.cancel, &mut |d, t| {
            self.progress("writing sentences", d, t, started)
        })?;
        self.send(Event::ConceptMade(description, lines));
        Ok(())
    }

    /// Loads maps and checks them against the model they were fitted on: the language model,
    /// or the diffusion pipeline when the file's fingerprint says so.
    pub(super) fn load_maps(&mut self, path: PathBuf) -> Result<(), JobError> {
        let maps = MapsFile::load(&path).map_err(|e| JobError::from(e).context(path.display()))?;
        let fp = &maps.meta().fingerprint;
        let pipe;
        let model;
        let target = if fp.is_diffusion() {
            pipe = self.image().map_err(|e| {
                e.context(format!(
                    "{}: these maps were fitted on a diffusion model ({fp})",
                    path.display()
                ))
            })?;
            SteeringTarget::diffusion(&pipe)
        } else {
            model = self.model()?;
            SteeringTarget::language_model(&model)
        };
        check_maps_for(&maps, &path, &target)?;
        self.send(Event::MapsLoaded(Arc::new(maps), path));
        Ok(())
    }
}
