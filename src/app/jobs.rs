//! The app's side of the job model: every command sent to the worker is tracked by its
//! [`Ticket`], so Stop cancels generation only and a fit's Cancel only the fit. Text
//! generation is never queued behind another job: a Generate click while the worker is busy
//! waits here, and its request (prompt, sampling, the steering stack with its λs, scope) is
//! built when it is sent to an idle worker, so a generation asked for during a fit steers
//! with the concept that fit produces. A newer generation supersedes an older one: the older
//! is cancelled, not queued.

use std::time::Instant;

use crate::pipeline::generate_text::TextRequest;
use crate::runtime::generate::GenerateOptions;
use crate::runtime::linear::MatPath;
use crate::worker::{Command, GenerateJob, JobKind};

use super::StudioApp;
use super::run_settings::{AppliedConcept, RunSettings};

impl StudioApp {
    /// Sends a command to the worker and tracks it until its `Idle`.
    pub fn send(&mut self, cmd: Command) {
        match self.worker.submit(cmd) {
            Some(t) => self.jobs.push_back(t),
            None => self.error("the worker thread has stopped; restart the app".into()),
        }
    }

    /// Whether the worker is running (or has queued) something.
    pub fn busy(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Whether a job of `kind` is running or queued.
    pub fn has_job(&self, kind: JobKind) -> bool {
        self.jobs.iter().any(|t| t.kind == kind)
    }

    /// Asks the job the worker is running now (whatever it is) to stop.
    pub fn cancel(&self) {
        if let Some(t) = self.jobs.front() {
            t.cancel();
        }
    }

    /// Stops every job of `kind` (running or queued), and no other.
    pub fn cancel_kind(&self, kind: JobKind) {
        for t in self.jobs.iter().filter(|t| t.kind == kind) {
            t.cancel();
        }
    }

    /// Stop: ends the running generation and drops a waiting one; a fit or any other job
    /// goes on.
    pub fn stop_generation(&mut self) {
        self.output.queued = None;
        self.cancel_kind(JobKind::Generate);
    }

    /// Asks for a generation: both columns, or only the steered one when `steered_only` and
    /// the unsteered column is current. It starts as soon as the worker is free (a running
    /// generation is superseded: stopped at its next token).
    pub fn generate(&mut self, steered_only: bool) {
        if self.model.is_none() {
            self.error("load a model first".into());
            return;
        }
        if !self.settings.seed_locked && !steered_only {
            self.settings.seed = rand::random::<u32>() as u64;
        }
        // A waiting request for both columns stays one for both.
        let steered_only = steered_only && self.output.queued != Some(false);
        self.output.queued = Some(steered_only);
        self.output.requested = Some(Instant::now());
        self.cancel_kind(JobKind::Generate);
        self.pump();
    }

    /// Starts a waiting generation (text or images) once nothing else is running (called
    /// every frame).
    pub(super) fn pump(&mut self) {
        if let Some(steered_only) = self.output.queued
            && self.jobs.is_empty()
        {
            self.output.queued = None;
            self.start_generation(steered_only);
        }
        if let Some(action) = self.image.queued
            && self.jobs.is_empty()
        {
            self.image.queued = None;
            super::image::generate(self, action);
        }
    }

    /// What a generation started now would depend on.
    pub fn run_settings(&self) -> RunSettings {
        let s = &self.settings;
        let stack = self.steering_stack();
        RunSettings {
            prompt: s.prompt.clone(),
            chat: s.chat,
            system: if s.chat { s.system.clone() } else { String::new() },
            max_tokens: s.max_tokens.max(1),
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            seed: s.seed,
            scope: stack.scope.name().to_string(),
            concepts: self
                .stack
                .iter()
                .filter(|e| e.concept.enabled && stack.concepts.iter().any(|c| c.name == e.concept.name))
                .map(|e| AppliedConcept {
                    name: e.concept.name.clone(),
                    lambda: e.concept.lambda,
                    maps_sha256: e.maps_sha256.clone(),
                })
                .collect(),
        }
    }

    /// Sends the generation, built from the settings and stack as they are now.
    fn start_generation(&mut self, steered_only: bool) {
        let run = self.run_settings();
        let unsteered = !(steered_only
            && self.output.unsteered_run.as_ref().map(RunSettings::unsteered) == Some(run.unsteered()));
        if unsteered {
            self.output.unsteered.clear();
            self.output.unsteered_run = None;
            self.output.unsteered_runs += 1;
        }
        self.output.steered.clear();
        self.output.steered_run = None;
        self.output.pending_run = Some(run.clone());
        self.output.generating = true;
        self.output.started += 1;
        self.output.first_steered_token = None;
        self.output.rates = Default::default();
        let s = &self.settings;
        let job = GenerateJob {
            id: self.output.started,
            request: TextRequest {
                prompt: run.prompt.clone(),
                chat: run.chat,
                system: run.system.clone(),
                options: GenerateOptions {
                    max_tokens: run.max_tokens,
                    sampling: s.sampling(),
                    path: MatPath::Quantized,
                },
                stack: self.steering_stack(),
                unsteered,
            },
            record_prompt: unsteered,
        };
        self.send(Command::Generate(Box::new(job)));
    }
}
