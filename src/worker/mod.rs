//! The background worker: the one thread that runs model work for the app. Commands come in
//! over a crossbeam channel, events go out over another; after each event the worker calls
//! the `notify` callback (the app passes `ctx.request_repaint()`), so the UI thread only
//! drains events and draws. A shared cancel flag stops long jobs between steps.
//!
//! - [`protocol`]: the commands (pipeline requests plus ids) and events;
//! - [`job_error`]: how a job ends when it does not succeed (cancelled or failed);
//! - `text_jobs` / `image_jobs`: each command translated into its pipeline call.

pub mod job_error;
pub mod protocol;

mod image_jobs;
mod text_jobs;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::diffusion::pipeline::SdPipeline;
use crate::runtime::LoadedModel;

pub use job_error::JobError;
pub use protocol::{
    Command, Event, GenerateJob, ImageModelInfo, ImageProgress, ImageResult, JobKind, ModelInfo, Progress,
};

/// The app's handle to the worker thread.
pub struct Worker {
    /// Commands in.
    pub commands: Sender<Command>,
    /// Events out.
    pub events: Receiver<Event>,
    /// Set to stop the running job.
    pub cancel: Arc<AtomicBool>,
}

impl Worker {
    /// Starts the worker thread (`act-worker`); `notify` is called after every event.
    pub fn spawn(notify: impl Fn() + Send + Sync + 'static) -> std::io::Result<Self> {
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded::<Command>();
        let (evt_tx, evt_rx) = crossbeam_channel::unbounded::<Event>();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        std::thread::Builder::new()
            .name("act-worker".into())
            .spawn(move || {
                let mut state = State {
                    model: None,
                    image: None,
                    events: evt_tx,
                    notify: Box::new(notify),
                    cancel: flag,
                };
                for cmd in cmd_rx {
                    state.cancel.store(false, Ordering::Relaxed);
                    state.send(Event::JobStarted(cmd.kind()));
                    // A bug in a job must not take the worker (and every later job) down.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.run(cmd)));
                    match outcome {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => state.send(Event::Failed(e)),
                        Err(_) => state.send(Event::Failed(JobError::failed(
                            "internal error: the job panicked (see stderr)",
                        ))),
                    }
                    state.send(Event::Idle);
                }
            })?;
        Ok(Self {
            commands: cmd_tx,
            events: evt_rx,
            cancel,
        })
    }

    /// Sends a command (false when the worker is gone).
    pub fn send(&self, cmd: Command) -> bool {
        self.commands.send(cmd).is_ok()
    }
}

/// What the worker thread holds between jobs.
struct State {
    model: Option<Arc<LoadedModel>>,
    image: Option<Arc<SdPipeline>>,
    events: Sender<Event>,
    notify: Box<dyn Fn() + Send + Sync>,
    cancel: Arc<AtomicBool>,
}

impl State {
    fn send(&self, e: Event) {
        if self.events.send(e).is_ok() {
            (self.notify)();
        }
    }

    fn progress(&self, stage: &str, done: usize, total: usize, started: Instant) {
        self.send(Event::Progress(Progress {
            stage: stage.to_string(),
            done,
            total,
            started,
        }));
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn run(&mut self, cmd: Command) -> Result<(), JobError> {
        match cmd {
            Command::LoadModel(path) => self.load_model(path),
            Command::LoadDataset(spec) => self.load_dataset(&spec),
            Command::Fit(req) => self.fit(&req),
            Command::Generate(job) => self.generate(&job),
            Command::Sweep(req) => self.sweep(&req),
            Command::MakeConcept { description, samples } => self.make_concept(description, samples),
            Command::SaveMaps(maps, path) => {
                maps.save(&path)
                    .map_err(|e| JobError::from(e).context(format!("saving {}", path.display())))?;
                self.send(Event::MapsSaved(path));
                Ok(())
            }
            Command::LoadMaps(path) => self.load_maps(path),
            Command::LoadImageModel { path, half } => self.load_image_model(path, half),
            Command::FitImage(req) => self.fit_image(&req),
            Command::GenerateImages(id, job) => {
                let r = self.generate_images(id, &job);
                self.send(Event::ImagesDone {
                    id,
                    complete: r.is_ok(),
                });
                r
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pipeline::dataset::DatasetSpec;
    use crate::pipeline::fit_concept::FitRequest;
    use crate::pipeline::fit_image_concept::{ImageConceptSource, ImageFitRequest};
    use crate::pipeline::fit_model::Estimation;
    use crate::pipeline::pooling::Pooling;
    use crate::transport::Method;

    /// Events of the next job, up to its `Idle`.
    fn job(w: &Worker, cmd: Command) -> Vec<Event> {
        assert!(w.send(cmd));
        let mut seen = Vec::new();
        loop {
            match w.events.recv_timeout(Duration::from_secs(60)) {
                Ok(Event::Idle) => return seen,
                Ok(e) => seen.push(e),
                Err(e) => panic!("no event from the worker: {e}"),
            }
        }
    }

    fn failure(events: &[Event]) -> Option<JobError> {
        events.iter().find_map(|e| match e {
            Event::Failed(f) => Some(f.clone()),
            _ => None,
        })
    }

    #[test]
    fn jobs_without_a_model_fail_clearly_and_the_worker_keeps_serving() {
        let w = Worker::spawn(|| {}).unwrap_or_else(|e| panic!("{e}"));
        let fit = FitRequest {
            name: "football".into(),
            source: DatasetSpec::Builtin("neutral".into()),
            target: DatasetSpec::Builtin("football".into()),
            limit: Some(4),
            method: Method::LinearAct,
            preset: "post-ln".into(),
            pooling: Pooling::Mean,
            support: None,
            estimation: Estimation::Causal,
            keep_samples: false,
        };
        let events = job(&w, Command::Fit(Box::new(fit)));
        assert!(matches!(events.first(), Some(Event::JobStarted(JobKind::Fit))));
        let f = failure(&events);
        assert!(
            matches!(&f, Some(JobError::Failed(m)) if m.contains("no model is loaded")),
            "{f:?}"
        );

        let img = ImageFitRequest::new(ImageConceptSource::Builtin("remove:trees".into()));
        let f = failure(&job(&w, Command::FitImage(Box::new(img))));
        assert!(
            matches!(&f, Some(JobError::Failed(m)) if m.contains("no diffusion model")),
            "{f:?}"
        );

        // A dataset needs no model: it loads, with no token counts.
        let events = job(&w, Command::LoadDataset(DatasetSpec::Builtin("football".into())));
        let loaded = events.iter().find_map(|e| match e {
            Event::DatasetLoaded(d, lens) => Some((d.samples.len(), lens.len())),
            _ => None,
        });
        assert!(matches!(loaded, Some((n, 0)) if n > 0), "{loaded:?}");

        let f = failure(&job(&w, Command::LoadModel("/no/such/model.gguf".into())));
        assert!(
            matches!(&f, Some(JobError::Failed(m)) if m.contains("/no/such/model.gguf")),
            "{f:?}"
        );
        let f = failure(&job(&w, Command::LoadMaps("/no/such/maps.safetensors".into())));
        assert!(
            matches!(&f, Some(JobError::Failed(m)) if m.contains("/no/such/maps.safetensors")),
            "{f:?}"
        );
        let f = failure(&job(
            &w,
            Command::LoadImageModel {
                path: "/no/such/sd".into(),
                half: false,
            },
        ));
        assert!(
            matches!(&f, Some(JobError::Failed(m)) if m.contains("/no/such/sd")),
            "{f:?}"
        );
    }
}
