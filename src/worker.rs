//! The background worker: the one thread that runs model work for the app. Commands come in
//! over a crossbeam channel, events go out over another; after each event the worker calls
//! the `notify` callback (the app passes `ctx.request_repaint()`), so the UI thread only
//! drains events and draws. A shared cancel flag stops long jobs between steps.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::pipeline::collect::hook_points;
use crate::pipeline::dataset::{Dataset, DatasetSpec, load_dataset};
use crate::pipeline::describe::{DescribeOptions, concept_from_description};
use crate::pipeline::fit_model::{Estimation, FitSamples, fit_on_model_with_samples};
use crate::pipeline::pooling::{Pooling, PoolingRecorder};
use crate::pipeline::sweep::{SweepConfig, SweepRow, run_sweep};
use crate::runtime::generate::{GenerateOptions, generate};
use crate::runtime::linear::MatPath;
use crate::runtime::llama::{Batch, LogitsMode};
use crate::runtime::steer::SteeringHooks;
use crate::runtime::tokenizer::ChatMessage;
use crate::runtime::{Hooks, LoadedModel, NoHooks};
use crate::transport::{DatasetInfo, FitConfig, MapsFile, MapsMeta, Method, SteeringStack, Support};

/// What the model panel shows about a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Where it came from.
    pub path: PathBuf,
    /// Architecture name (e.g. `llama`).
    pub architecture: String,
    /// Decoder layers.
    pub n_layers: usize,
    /// Hidden size (neurons per hook point).
    pub hidden_size: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Every hook point name, in forward order.
    pub hook_points: Vec<String>,
    /// The fingerprint maps files are checked against, as text.
    pub fingerprint: String,
    /// Whether the tokenizer has a chat template.
    pub has_chat_template: bool,
}

/// A fit request.
#[derive(Debug, Clone)]
pub struct FitJob {
    /// Concept name.
    pub name: String,
    /// Source and target datasets.
    pub source: DatasetSpec,
    /// Target dataset.
    pub target: DatasetSpec,
    /// Use at most this many samples of each.
    pub limit: Option<usize>,
    /// Estimator.
    pub method: Method,
    /// Hook preset, range or names.
    pub preset: String,
    /// Pooling.
    pub pooling: Pooling,
    /// Support (`None`: the method's default).
    pub support: Option<Support>,
    /// Causal or simultaneous.
    pub estimation: Estimation,
}

/// Which output column a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    /// No steering.
    Unsteered,
    /// The stack applied.
    Steered,
}

/// Which kind of job the worker is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Loading a model.
    LoadModel,
    /// Reading a dataset.
    LoadDataset,
    /// Fitting.
    Fit,
    /// Generating the output columns.
    Generate,
    /// A λ sweep.
    Sweep,
    /// Making a concept dataset.
    MakeConcept,
    /// Saving or loading maps.
    Maps,
}

/// A generation request: both columns (or only the steered one, when the unsteered text for
/// the same prompt and settings is already on screen).
#[derive(Debug, Clone)]
pub struct GenerateJob {
    /// Caller's id, echoed in the job's events (events of older jobs can be told apart).
    pub id: usize,
    /// User prompt.
    pub prompt: String,
    /// Wrap in the chat template.
    pub chat: bool,
    /// Settings (the same seed for both columns).
    pub options: GenerateOptions,
    /// The steering stack.
    pub stack: SteeringStack,
    /// Generate the unsteered column too.
    pub unsteered: bool,
    /// Also send the prompt's pooled activations (for the plots).
    pub record_prompt: bool,
}

/// Commands to the worker.
#[derive(Debug)]
pub enum Command {
    /// Load a GGUF file or HF folder.
    LoadModel(PathBuf),
    /// Read a dataset (for viewing and editing).
    LoadDataset(DatasetSpec),
    /// Fit a concept.
    Fit(Box<FitJob>),
    /// Generate text.
    Generate(Box<GenerateJob>),
    /// A λ sweep (the flag: render the prompts through the chat template).
    Sweep(Box<(SteeringStack, SweepConfig, bool)>),
    /// Make a concept dataset from a description.
    MakeConcept {
        /// What about.
        description: String,
        /// How many sentences.
        samples: usize,
    },
    /// Save maps atomically.
    SaveMaps(Arc<MapsFile>, PathBuf),
    /// Load maps, checked against the loaded model.
    LoadMaps(PathBuf),
}

/// A long job's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// What is running.
    pub stage: String,
    /// Units done.
    pub done: usize,
    /// All units (0 when unknown).
    pub total: usize,
    /// When the job started.
    pub started: Instant,
}

/// Events from the worker.
#[derive(Debug)]
pub enum Event {
    /// A model is loaded.
    ModelLoaded(ModelInfo),
    /// A dataset was read, with each sample's token count (empty without a model).
    DatasetLoaded(Dataset, Vec<usize>),
    /// Progress of the running job.
    Progress(Progress),
    /// The worker started a job.
    JobStarted(JobKind),
    /// New text in a column of generation `id`.
    Token(usize, Column, String),
    /// A column of generation `id` ended; `complete` when it was not stopped or failed.
    ColumnDone {
        /// Generation id.
        id: usize,
        /// Which column.
        column: Column,
        /// Finished normally.
        complete: bool,
    },
    /// Pooled activations of the prompt at every hook point (`[hooks][d]`, unsteered).
    PromptActivations(Vec<(String, Vec<f32>)>),
    /// A fit finished: the concept's maps and the samples it was fitted on.
    Fitted(Arc<MapsFile>, Arc<Vec<FitSamples>>),
    /// A sweep finished.
    SweepDone(Vec<SweepRow>),
    /// Sentences made from a description.
    ConceptMade(String, Vec<String>),
    /// Maps saved.
    MapsSaved(PathBuf),
    /// Maps loaded.
    MapsLoaded(Arc<MapsFile>, PathBuf),
    /// The running job ended (finished, failed or cancelled).
    Idle,
    /// Something failed; the message says what and why.
    Failed(String),
}

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
                        Err(_) => state.send(Event::Failed(
                            "internal error: the job panicked (see stderr)".into(),
                        )),
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

impl Command {
    /// The kind of job this command starts.
    pub fn kind(&self) -> JobKind {
        match self {
            Command::LoadModel(_) => JobKind::LoadModel,
            Command::LoadDataset(_) => JobKind::LoadDataset,
            Command::Fit(_) => JobKind::Fit,
            Command::Generate(_) => JobKind::Generate,
            Command::Sweep(_) => JobKind::Sweep,
            Command::MakeConcept { .. } => JobKind::MakeConcept,
            Command::SaveMaps(..) | Command::LoadMaps(_) => JobKind::Maps,
        }
    }
}

struct State {
    model: Option<Arc<LoadedModel>>,
    events: Sender<Event>,
    notify: Box<dyn Fn() + Send + Sync>,
    cancel: Arc<AtomicBool>,
}

/// Errors as the user reads them: the whole cause chain on one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
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

    fn model(&self) -> Result<Arc<LoadedModel>, String> {
        self.model
            .clone()
            .ok_or_else(|| "no model is loaded: open one in the model panel".to_string())
    }

    fn run(&mut self, cmd: Command) -> Result<(), String> {
        match cmd {
            Command::LoadModel(path) => self.load_model(path),
            Command::LoadDataset(spec) => {
                let d = load_dataset(&spec).map_err(|e| describe(&e))?;
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
            Command::Fit(job) => self.fit(&job),
            Command::Generate(job) => self.generate(&job),
            Command::Sweep(job) => {
                let m = self.model()?;
                let (stack, mut cfg, chat) = *job;
                if chat {
                    for p in &mut cfg.prompts {
                        *p = m
                            .tokenizer
                            .render_chat(&[ChatMessage::user(p)], true)
                            .map_err(|e| describe(&e))?;
                    }
                }
                let started = Instant::now();
                let rows = run_sweep(&m, &stack, &cfg, &self.cancel, &mut |p| {
                    self.progress(&format!("sweep, λ = {}", p.lambda), p.done, p.total, started)
                })
                .map_err(|e| describe(&e))?;
                self.send(Event::SweepDone(rows));
                Ok(())
            }
            Command::MakeConcept { description, samples } => {
                let m = self.model()?;
                let started = Instant::now();
                let opts = DescribeOptions {
                    samples,
                    ..Default::default()
                };
                let lines = concept_from_description(&m, &description, &opts, &self.cancel, &mut |d, t| {
                    self.progress("writing sentences", d, t, started)
                })
                .map_err(|e| describe(&e))?;
                self.send(Event::ConceptMade(description, lines));
                Ok(())
            }
            Command::SaveMaps(maps, path) => {
                maps.save(&path)
                    .map_err(|e| format!("saving {}: {}", path.display(), describe(&e)))?;
                self.send(Event::MapsSaved(path));
                Ok(())
            }
            Command::LoadMaps(path) => {
                let m = self.model()?;
                let maps = MapsFile::load_for(&path, &m.fingerprint)
                    .map_err(|e| format!("{}: {}", path.display(), describe(&e)))?;
                let d = m.config().hidden_size;
                if let Some(h) = maps.meta().hook_points.iter().find(|h| h.dim != d) {
                    return Err(format!(
                        "{}: hook point {} has {} neurons, this model {d}",
                        path.display(),
                        h.name,
                        h.dim
                    ));
                }
                self.send(Event::MapsLoaded(Arc::new(maps), path));
                Ok(())
            }
        }
    }

    fn load_model(&mut self, path: PathBuf) -> Result<(), String> {
        let started = Instant::now();
        self.progress("loading model", 0, 0, started);
        let m = LoadedModel::load(&path).map_err(|e| format!("{}: {}", path.display(), describe(&e)))?;
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

    fn fit(&mut self, job: &FitJob) -> Result<(), String> {
        let m = self.model()?;
        let read = |spec: &DatasetSpec| -> Result<Dataset, String> {
            let mut d = load_dataset(spec).map_err(|e| describe(&e))?;
            if let Some(n) = job.limit {
                d.samples.truncate(n);
            }
            Ok(d)
        };
        let (source, target) = (read(&job.source)?, read(&job.target)?);
        let points = hook_points(&job.preset, m.config().n_layers)?;
        let config = FitConfig {
            method: job.method,
            support: job.support.unwrap_or_else(|| job.method.default_support()),
        };
        let started = Instant::now();
        self.progress("fitting", 0, points.len(), started);
        let (maps, samples) = fit_on_model_with_samples(
            &m,
            &source.samples,
            &target.samples,
            &points,
            job.pooling,
            &config,
            job.estimation,
            &self.cancel,
            &mut |done, total| {
                let layer = points.get(done.saturating_sub(1)).map_or(0, |p| p.layer);
                let stage = format!("fitting: layer {} of {}", layer + 1, m.config().n_layers);
                self.events
                    .send(Event::Progress(Progress {
                        stage,
                        done,
                        total,
                        started,
                    }))
                    .ok();
                (self.notify)();
            },
        )
        .map_err(|e| describe(&e))?;
        let info = |d: &Dataset| DatasetInfo {
            name: d.origin.clone(),
            sha256: d.sha256(),
            count: d.samples.len(),
        };
        let meta = MapsMeta::new(
            &job.name,
            config.method,
            config.support,
            job.pooling.name(),
            job.estimation.name(),
            m.fingerprint.clone(),
            info(&source),
            info(&target),
        );
        let file = MapsFile::new(meta, maps).map_err(|e| describe(&e))?;
        self.send(Event::Fitted(Arc::new(file), Arc::new(samples)));
        Ok(())
    }

    fn generate(&mut self, job: &GenerateJob) -> Result<(), String> {
        let m = self.model()?;
        let text = if job.chat {
            m.tokenizer
                .render_chat(&[ChatMessage::user(&job.prompt)], true)
                .map_err(|e| describe(&e))?
        } else {
            job.prompt.clone()
        };
        let ids = m.tokenizer.encode(&text).map_err(|e| describe(&e))?;
        if ids.is_empty() {
            return Err("the prompt is empty".into());
        }
        let c = m.config();
        if job.record_prompt {
            self.record_prompt(&m, &ids)?;
        }
        let mut columns: Vec<Column> = Vec::new();
        if job.unsteered {
            columns.push(Column::Unsteered);
        }
        columns.push(Column::Steered);
        for col in columns {
            let mut steering = match col {
                Column::Steered => Some(
                    SteeringHooks::new(&job.stack, c.n_layers, c.hidden_size).map_err(|e| describe(&e))?,
                ),
                Column::Unsteered => None,
            };
            let hooks: &mut dyn Hooks = match steering.as_mut() {
                Some(h) => h,
                None => &mut NoHooks,
            };
            let id = job.id;
            let r = generate(&m, &ids, &job.options, hooks, &self.cancel, &mut |piece| {
                self.send(Event::Token(id, col, piece.to_string()));
                true
            });
            self.send(Event::ColumnDone {
                id,
                column: col,
                complete: r.is_ok(),
            });
            r.map_err(|e| describe(&e))?;
        }
        Ok(())
    }

    /// Sends the prompt's own activations at every hook point (unsteered, mean-pooled).
    fn record_prompt(&self, m: &LoadedModel, ids: &[u32]) -> Result<(), String> {
        let mut rec = PoolingRecorder::new(&m.hook_points(), Pooling::Mean);
        let n = ids.len();
        let batch = Batch {
            tokens: ids,
            batch: 1,
            seq: n,
            valid: &[n],
            prompt_lens: &[n],
        };
        m.model
            .forward(
                &batch,
                &mut [m.transient_cache()],
                &mut rec,
                MatPath::Dense,
                LogitsMode::None,
            )
            .map_err(|e| describe(&e))?;
        self.send(Event::PromptActivations(
            rec.pooled.into_iter().map(|(p, v)| (p.name(), v)).collect(),
        ));
        Ok(())
    }
}
