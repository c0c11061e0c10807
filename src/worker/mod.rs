//! The background worker: the one thread that runs model work for the app. Commands come in
//! over a crossbeam channel, events go out over another; after each event the worker calls
//! the `notify` callback (the app passes `ctx.request_repaint()`), so the UI thread only
//! drains events and draws. Every job has its own cancel flag (its [`Ticket`]), so stopping one
//! kind of job never stops another; a job cancelled before it starts is skipped.
//!
//! - [`protocol`]: the commands (pipeline requests plus ids) and events;
//! - [`job_error`]: how a job ends when it does not succeed (cancelled or failed);
//! - `text_jobs` / `image_jobs`: each command translated into its pipeline call;
//! - `serve_jobs`: the app's Serve toggle, which starts [`crate::serve`] on the loaded model.

pub mod job_error;
pub mod protocol;

mod image_jobs;
mod serve_jobs;
mod text_jobs;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::diffusion::pipeline::SdPipeline;
use crate::runtime::LoadedModel;

pub use job_error::JobError;
pub use protocol::{
    Command, Event, GenerateJob, ImageModelInfo, ImagePreview, ImageProgress, ImageResult, JobKind,
    ModelInfo, Progress, ServeRequest, ServingInfo,
};

/// The app's handle to the worker thread.
pub struct Worker {
    /// Commands in, each with its own cancel flag.
    commands: Sender<(Command, Arc<AtomicBool>)>,
    /// Events out.
    pub events: Receiver<Event>,
    /// The cancel flag of the job running now.
    running: Arc<Mutex<Option<Arc<AtomicBool>>>>,
}

/// A job sent to the worker: its kind and the flag that stops it (before it starts: it is
/// skipped; while it runs: it ends at its next check as [`JobError::Cancelled`]).
#[derive(Debug, Clone)]
pub struct Ticket {
    /// What the job does.
    pub kind: JobKind,
    cancel: Arc<AtomicBool>,
}

impl Ticket {
    /// Asks this job (and no other) to stop.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Whether it was asked to stop.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

impl Worker {
    /// Starts the worker thread (`act-worker`); `notify` is called after every event.
    pub fn spawn(notify: impl Fn() + Send + Sync + 'static) -> std::io::Result<Self> {
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded::<(Command, Arc<AtomicBool>)>();
        let (evt_tx, evt_rx) = crossbeam_channel::unbounded::<Event>();
        let running = Arc::new(Mutex::new(None));
        let current = running.clone();
        std::thread::Builder::new()
            .name("act-worker".into())
            .spawn(move || {
                let mut state = State {
                    model: None,
                    image: None,
                    server: None,
                    events: evt_tx,
                    notify: Box::new(notify),
                    cancel: Arc::new(AtomicBool::new(false)),
                };
                for (cmd, flag) in cmd_rx {
                    state.send(Event::JobStarted(cmd.kind()));
                    if flag.load(Ordering::Relaxed) {
                        // Superseded or stopped before it began: its columns or images end
                        // unfinished, and nothing runs.
                        state.skip(&cmd);
                        state.send(Event::Failed(JobError::Cancelled));
                        state.send(Event::Idle);
                        continue;
                    }
                    if let Ok(mut r) = current.lock() {
                        *r = Some(flag.clone());
                    }
                    state.cancel = flag;
                    // A bug in a job must not take the worker (and every later job) down.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.run(cmd)));
                    match outcome {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => state.send(Event::Failed(e)),
                        Err(_) => state.send(Event::Failed(JobError::failed(
                            "internal error: the job panicked (see stderr)",
                        ))),
                    }
                    if let Ok(mut r) = current.lock() {
                        *r = None;
                    }
                    state.send(Event::Idle);
                }
            })?;
        Ok(Self {
            commands: cmd_tx,
            events: evt_rx,
            running,
        })
    }

    /// Sends a command; its ticket stops it (`None` when the worker is gone).
    pub fn submit(&self, cmd: Command) -> Option<Ticket> {
        let ticket = Ticket {
            kind: cmd.kind(),
            cancel: Arc::new(AtomicBool::new(false)),
        };
        self.commands.send((cmd, ticket.cancel.clone())).ok()?;
        Some(ticket)
    }

    /// Sends a command (false when the worker is gone).
    pub fn send(&self, cmd: Command) -> bool {
        self.submit(cmd).is_some()
    }

    /// Asks the job running now, whichever it is, to stop.
    pub fn cancel_running(&self) {
        if let Ok(r) = self.running.lock()
            && let Some(flag) = r.as_ref()
        {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// What the worker thread holds between jobs.
struct State {
    model: Option<Arc<LoadedModel>>,
    image: Option<Arc<SdPipeline>>,
    /// The OpenAI-compatible server the app started, serving `model`.
    server: Option<crate::serve::RunningServer>,
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

    /// The end events of a job that never ran (so the app closes its columns or images).
    fn skip(&self, cmd: &Command) {
        match cmd {
            Command::Generate(job) => {
                let id = job.id;
                if job.request.unsteered {
                    self.send(Event::ColumnDone {
                        id,
                        column: crate::pipeline::generate_text::Column::Unsteered,
                        complete: false,
                    });
                }
                self.send(Event::ColumnDone {
                    id,
                    column: crate::pipeline::generate_text::Column::Steered,
                    complete: false,
                });
            }
            Command::GenerateImages(id, _) => self.send(Event::ImagesDone {
                id: *id,
                complete: false,
            }),
            _ => {}
        }
    }

    fn run(&mut self, cmd: Command) -> Result<(), JobError> {
        match cmd {
            Command::LoadModel(path) => self.load_model(path),
            Command::Serve(req) => self.serve(req.map(|r| *r)),
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
    fn a_job_cancelled_before_it_starts_is_skipped_and_others_run() {
        // The worker waits inside its first event until the gate opens, so both jobs are
        // queued before the first one runs.
        let (open, gate) = crossbeam_channel::bounded::<()>(1);
        let first = std::sync::atomic::AtomicBool::new(true);
        let w = Worker::spawn(move || {
            if first.swap(false, Ordering::Relaxed) {
                let _ = gate.recv_timeout(Duration::from_secs(30));
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let a = w.submit(Command::LoadDataset(DatasetSpec::Builtin("football".into())));
        let b = w.submit(Command::LoadDataset(DatasetSpec::Builtin("neutral".into())));
        let (Some(a), Some(b)) = (a, b) else {
            panic!("the worker is gone")
        };
        b.cancel();
        assert!(b.cancelled() && !a.cancelled(), "a ticket stops its own job only");
        let _ = open.send(());
        let mut loaded = Vec::new();
        let mut failures = Vec::new();
        let mut idle = 0;
        while idle < 2 {
            match w.events.recv_timeout(Duration::from_secs(60)) {
                Ok(Event::Idle) => idle += 1,
                Ok(Event::DatasetLoaded(d, _)) => loaded.push(d.origin),
                Ok(Event::Failed(f)) => failures.push(f),
                Ok(_) => {}
                Err(e) => panic!("no event from the worker: {e}"),
            }
        }
        assert_eq!(loaded.len(), 1, "{loaded:?}");
        assert!(loaded[0].contains("football"), "{loaded:?}");
        assert_eq!(failures, [JobError::Cancelled]);
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
