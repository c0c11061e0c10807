//! The background worker: the one thread that runs model work for the app. Commands come in
//! over a crossbeam channel, events go out over another; after each event the worker calls
//! the `notify` callback (the app passes `ctx.request_repaint()`), so the UI thread only
//! drains events and draws. A shared cancel flag stops long jobs between steps.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use image::RgbImage;

use crate::diffusion::image_io::{ImageMeta, tensor_to_images};
use crate::diffusion::pipeline::{ImageRequest, LoadOptions, SdPipeline};
use crate::diffusion::steer::StepWindow;
use crate::pipeline::diffusion_fit::{ImageFitOptions, fit_image_maps};
use crate::pipeline::image_concepts::{PromptPair, builtin_image_concept};

use crate::pipeline::dataset::{Dataset, DatasetSpec, load_dataset};
use crate::pipeline::describe::{DescribeOptions, concept_from_description};
use crate::pipeline::fit_concept::{FitRequest, fit_concept};
use crate::pipeline::fit_model::FitSamples;
use crate::pipeline::pooling::{Pooling, PoolingRecorder};
use crate::pipeline::steering::{SteeringTarget, check_maps_for};
use crate::pipeline::sweep::{SweepConfig, SweepRow, run_sweep};
use crate::runtime::forward::{Batch, LogitsMode};
use crate::runtime::generate::{GenerateOptions, generate};
use crate::runtime::linear::MatPath;
use crate::runtime::steer::SteeringHooks;
use crate::runtime::tokenizer::ChatMessage;
use crate::runtime::{Hooks, LoadedModel, NoHooks};
use crate::transport::{FitConfig, MapsFile, Method, ModelFingerprint, SteeringStack, Support};

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

/// What the model panel shows about a loaded diffusion pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageModelInfo {
    /// The diffusers folder.
    pub path: PathBuf,
    /// Display name (the folder's name).
    pub name: String,
    /// `sd1`, `sd2` or `sdxl`.
    pub family: String,
    /// Every hook point name (text encoders first, then the UNet).
    pub hook_points: Vec<String>,
    /// What maps fitted on it are tied to.
    pub fingerprint: ModelFingerprint,
    /// The model's sensible settings (steps, guidance, size, sampler).
    pub default_request: ImageRequest,
    /// What in the folder is not honoured (e.g. Karras σ in the scheduler config).
    pub warnings: Vec<String>,
    /// Weights' precision: `f32` or `f16`.
    pub dtype: String,
}

/// Where the prompts of an image concept come from.
#[derive(Debug, Clone)]
pub enum ImageConceptSource {
    /// A built-in concept (`style:NAME`, `negate:NAME`, `remove:trees`).
    Builtin(String),
    /// Two text files, one prompt per line.
    Files {
        /// Prompts moved away from.
        source: PathBuf,
        /// Prompts moved towards.
        target: PathBuf,
    },
    /// Prompts given directly.
    Prompts(PromptPair),
}

/// An image-concept fit request (the CLI's `fit-image`).
#[derive(Debug, Clone)]
pub struct ImageFitJob {
    /// The prompts.
    pub concept: ImageConceptSource,
    /// Concept name (default: the built-in name or the target file's stem).
    pub name: Option<String>,
    /// Hook preset, or names / `prefix*` patterns, comma-separated.
    pub hooks: String,
    /// Estimator.
    pub method: Method,
    /// Support (`Unbounded` suits images: maps fitted at one step act at every step).
    pub support: Support,
    /// Use at most this many prompts per side.
    pub limit: Option<usize>,
    /// Latent size of the fitting step, in pixels (`None`: the model's).
    pub size: Option<usize>,
    /// Schedule length whose first step the activations come from (`None`: the model's).
    pub steps: Option<usize>,
    /// Seed of the shared initial latents.
    pub seed: u64,
}

/// What an image job makes.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageJobKind {
    /// The steered image, and the unsteered one too when `unsteered` (same request).
    Pair {
        /// Also make the unsteered image.
        unsteered: bool,
    },
    /// One image per λ of `concept` (the rest of the stack as it is).
    Strip {
        /// The concept whose λ varies.
        concept: String,
        /// λ values, one image each.
        lambdas: Vec<f32>,
    },
    /// A λ × seed grid: one row per seed, one column per λ.
    Grid {
        /// The concept whose λ varies.
        concept: String,
        /// λ values (columns).
        lambdas: Vec<f32>,
        /// Seeds (rows).
        seeds: Vec<u64>,
    },
}

/// An image generation request.
#[derive(Debug, Clone)]
pub struct ImageJob {
    /// Caller's id, echoed in the job's events.
    pub id: usize,
    /// What to make.
    pub kind: ImageJobKind,
    /// The settings (every image of the job starts from them).
    pub request: ImageRequest,
    /// The steering stack.
    pub stack: SteeringStack,
    /// Steer only these denoising steps (`None`: every step).
    pub window: Option<StepWindow>,
}

/// Where an image of a job goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSlot {
    /// The unsteered image of a pair.
    Unsteered,
    /// The steered image of a pair.
    Steered,
    /// A cell of a strip (row 0) or grid.
    Cell {
        /// Row (seed index).
        row: usize,
        /// Column (λ index).
        col: usize,
    },
}

/// One finished image.
#[derive(Debug, Clone)]
pub struct ImageResult {
    /// The job's id.
    pub id: usize,
    /// Where it goes.
    pub slot: ImageSlot,
    /// The pixels.
    pub image: RgbImage,
    /// The settings that reproduce it.
    pub meta: ImageMeta,
}

/// Progress of an image job: image `image` (0-based) of `images`, step `step` of `steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageProgress {
    /// The job's id.
    pub id: usize,
    /// Image being made (0-based).
    pub image: usize,
    /// Images in the job.
    pub images: usize,
    /// Denoising steps done for this image.
    pub step: usize,
    /// Denoising steps per image.
    pub steps: usize,
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
    /// Loading a diffusion pipeline.
    LoadImageModel,
    /// Fitting an image concept.
    FitImage,
    /// Generating images.
    GenerateImages,
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
    Fit(Box<FitRequest>),
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
    /// Load maps, checked against the model they belong to (the language model, or the
    /// diffusion pipeline for maps fitted on sd1/sd2/sdxl).
    LoadMaps(PathBuf),
    /// Load a diffusers folder (Stable Diffusion 1.x/2.x/XL), in f16 when `half`.
    LoadImageModel {
        /// The folder.
        path: PathBuf,
        /// Weights and activations in f16 (half the memory) instead of f32.
        half: bool,
    },
    /// Fit an image concept on the diffusion pipeline.
    FitImage(Box<ImageFitJob>),
    /// Generate images (a pair, a λ strip or a λ × seed grid).
    GenerateImages(Box<ImageJob>),
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
    /// A diffusion pipeline is loaded.
    ImageModelLoaded(ImageModelInfo),
    /// The diffusion pipeline was dropped (a new one failed to load).
    ImageModelUnloaded,
    /// An image concept was fitted.
    ImageFitted(Arc<MapsFile>),
    /// Progress of image job.
    ImageProgress(ImageProgress),
    /// An image of a job is ready.
    Image(Box<ImageResult>),
    /// Image job `id` ended; `complete` when every image was made.
    ImagesDone {
        /// The job's id.
        id: usize,
        /// Finished normally.
        complete: bool,
    },
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
            Command::LoadImageModel { .. } => JobKind::LoadImageModel,
            Command::FitImage(_) => JobKind::FitImage,
            Command::GenerateImages(_) => JobKind::GenerateImages,
        }
    }
}

struct State {
    model: Option<Arc<LoadedModel>>,
    image: Option<Arc<SdPipeline>>,
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
            Command::LoadMaps(path) => self.load_maps(path),
            Command::LoadImageModel { path, half } => self.load_image_model(path, half),
            Command::FitImage(job) => self.fit_image(&job),
            Command::GenerateImages(job) => {
                let id = job.id;
                let r = self.generate_images(&job);
                self.send(Event::ImagesDone {
                    id,
                    complete: r.is_ok(),
                });
                r
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

    fn fit(&mut self, job: &FitRequest) -> Result<(), String> {
        let m = self.model()?;
        let started = Instant::now();
        self.progress("fitting", 0, 0, started);
        let (events, notify) = (&self.events, &self.notify);
        let fitted = fit_concept(&m, job, &self.cancel, &mut |p| {
            let stage = format!("fitting: layer {} of {}", p.layer + 1, p.n_layers);
            events
                .send(Event::Progress(Progress {
                    stage,
                    done: p.done,
                    total: p.total,
                    started,
                }))
                .ok();
            notify();
        })
        .map_err(|e| describe(&e))?;
        self.send(Event::Fitted(Arc::new(fitted.maps), Arc::new(fitted.samples)));
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

/// Reads prompts, one per line (blank lines skipped).
fn read_prompts(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading prompts {}: {e}", path.display()))?;
    let v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if v.is_empty() {
        return Err(format!("{} has no prompts", path.display()));
    }
    Ok(v)
}

/// `stack` with every concept at λ = 0 (the unsteered image's settings keep the names).
fn at_zero(stack: &SteeringStack) -> SteeringStack {
    let mut s = stack.clone();
    for c in &mut s.concepts {
        c.lambda = 0.0;
    }
    s
}

impl State {
    fn image(&self) -> Result<Arc<SdPipeline>, String> {
        self.image.clone().ok_or_else(|| {
            "no diffusion model is loaded: open a diffusers folder in the model panel".to_string()
        })
    }

    fn load_maps(&mut self, path: PathBuf) -> Result<(), String> {
        let maps = MapsFile::load(&path).map_err(|e| format!("{}: {}", path.display(), describe(&e)))?;
        // Which loaded model the maps are for: the file's fingerprint says text or image.
        let fp = &maps.meta().fingerprint;
        let target = if fp.is_diffusion() {
            let pipe = self.image().map_err(|e| {
                format!(
                    "{}: these maps were fitted on a diffusion model ({fp}); {e}",
                    path.display()
                )
            })?;
            SteeringTarget::diffusion(&pipe)
        } else {
            SteeringTarget::language_model(&*self.model()?)
        };
        check_maps_for(&maps, &path, &target).map_err(|e| describe(&e))?;
        self.send(Event::MapsLoaded(Arc::new(maps), path));
        Ok(())
    }

    fn load_image_model(&mut self, path: PathBuf, half: bool) -> Result<(), String> {
        let started = Instant::now();
        self.progress("loading diffusion model", 0, 0, started);
        // Free the old pipeline first: two Stable Diffusion models rarely fit in memory.
        if self.image.take().is_some() {
            self.send(Event::ImageModelUnloaded);
        }
        let opts = LoadOptions {
            dtype: if half {
                candle_core::DType::F16
            } else {
                candle_core::DType::F32
            },
            ..LoadOptions::default()
        };
        let pipe =
            SdPipeline::load(&path, &opts).map_err(|e| format!("{}: {}", path.display(), describe(&e)))?;
        let info = ImageModelInfo {
            path,
            name: pipe.name(),
            family: pipe.family().name().to_string(),
            hook_points: pipe.hook_sites().iter().map(|s| s.name.clone()).collect(),
            fingerprint: pipe.fingerprint().clone(),
            warnings: pipe.warnings().to_vec(),
            default_request: pipe.default_request(""),
            dtype: pipe.dtype().as_str().to_string(),
        };
        self.image = Some(Arc::new(pipe));
        self.send(Event::ImageModelLoaded(info));
        Ok(())
    }

    fn fit_image(&mut self, job: &ImageFitJob) -> Result<(), String> {
        let pipe = self.image()?;
        let mut pair = match &job.concept {
            ImageConceptSource::Builtin(name) => builtin_image_concept(name).map_err(|e| describe(&e))?,
            ImageConceptSource::Files { source, target } => PromptPair {
                name: target
                    .file_stem()
                    .map_or("concept".into(), |s| s.to_string_lossy().into_owned()),
                source: read_prompts(source)?,
                target: read_prompts(target)?,
            },
            ImageConceptSource::Prompts(p) => p.clone(),
        };
        if let Some(n) = job.limit {
            pair.limit(n);
        }
        if let Some(n) = job.name.as_ref().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            pair.name = n.to_string();
        }
        let opts = ImageFitOptions::new(
            &pipe,
            FitConfig {
                method: job.method,
                support: job.support,
            },
            &job.hooks,
            job.seed,
            job.size,
            job.steps,
        );
        let started = Instant::now();
        self.progress("fitting image concept", 0, 0, started);
        let (events, notify, cancel) = (&self.events, &self.notify, &self.cancel);
        let name = pair.name.clone();
        let mut progress = |done: usize, total: usize| {
            let p = Progress {
                stage: format!("fitting `{name}`: hook points"),
                done,
                total,
                started,
            };
            if events.send(Event::Progress(p)).is_ok() {
                notify();
            }
            !cancel.load(Ordering::Relaxed)
        };
        let maps = fit_image_maps(&pipe, &pair, &opts, &mut progress).map_err(|e| describe(&e))?;
        self.send(Event::ImageFitted(Arc::new(maps)));
        Ok(())
    }

    /// Makes one image, sending per-step progress; `false` from the cancel flag stops it.
    fn render(
        &self,
        pipe: &SdPipeline,
        req: &ImageRequest,
        stack: &SteeringStack,
        window: Option<StepWindow>,
        at: (usize, usize, usize),
    ) -> Result<RgbImage, String> {
        let (id, image, images) = at;
        let mut progress = |step: usize, steps: usize| {
            self.send(Event::ImageProgress(ImageProgress {
                id,
                image,
                images,
                step,
                steps,
            }));
            !self.cancel.load(Ordering::Relaxed)
        };
        let x = pipe
            .generate(req, stack, window.unwrap_or(StepWindow::ALL), &mut progress)
            .map_err(|e| describe(&e))?;
        tensor_to_images(&x)
            .map_err(|e| describe(&e))?
            .into_iter()
            .next()
            .ok_or_else(|| "the VAE returned no image".to_string())
    }

    fn send_image(&self, id: usize, slot: ImageSlot, image: RgbImage, meta: ImageMeta) {
        self.send(Event::Image(Box::new(ImageResult {
            id,
            slot,
            image,
            meta,
        })));
    }

    fn generate_images(&mut self, job: &ImageJob) -> Result<(), String> {
        let pipe = self.image()?;
        pipe.validate(&job.request).map_err(|e| describe(&e))?;
        if let Some(w) = job.window
            && w.end <= w.start
        {
            return Err(format!("the steered steps {}..{} are empty", w.start, w.end));
        }
        // Only the concepts fitted on this pipeline steer it.
        let mut stack = job.stack.clone();
        stack
            .concepts
            .retain(|c| &c.maps.meta().fingerprint == pipe.fingerprint());
        let (id, req, window) = (job.id, &job.request, job.window);
        match &job.kind {
            ImageJobKind::Pair { unsteered } => {
                let images = 1 + usize::from(*unsteered);
                let steered_is_plain = pipe
                    .steering(&stack, window.unwrap_or(StepWindow::ALL))
                    .map_err(|e| describe(&e))?
                    .is_empty();
                if *unsteered {
                    let plain =
                        self.render(&pipe, req, &SteeringStack::default(), window, (id, 0, images))?;
                    let meta = pipe.image_meta(req, &at_zero(&stack), window);
                    self.send_image(id, ImageSlot::Unsteered, plain.clone(), meta);
                    if steered_is_plain {
                        // Nothing steers (every λ is 0): the steered image is the same.
                        let meta = pipe.image_meta(req, &stack, window);
                        self.send_image(id, ImageSlot::Steered, plain, meta);
                        return Ok(());
                    }
                }
                let img = self.render(&pipe, req, &stack, window, (id, images - 1, images))?;
                self.send_image(id, ImageSlot::Steered, img, pipe.image_meta(req, &stack, window));
                Ok(())
            }
            ImageJobKind::Strip { concept, lambdas } => {
                self.sheet(&pipe, job, &mut stack, concept, lambdas, &[req.seed])
            }
            ImageJobKind::Grid {
                concept,
                lambdas,
                seeds,
            } => self.sheet(&pipe, job, &mut stack, concept, lambdas, seeds),
        }
    }

    /// A λ strip (one seed) or a λ × seed grid, one image at a time, row by row.
    fn sheet(
        &self,
        pipe: &SdPipeline,
        job: &ImageJob,
        stack: &mut SteeringStack,
        concept: &str,
        lambdas: &[f32],
        seeds: &[u64],
    ) -> Result<(), String> {
        if lambdas.is_empty() || seeds.is_empty() {
            return Err("give at least one λ and one seed".into());
        }
        if let Some(l) = lambdas.iter().find(|l| !l.is_finite()) {
            return Err(format!("λ = {l} is not a finite number"));
        }
        match stack.concepts.iter_mut().find(|c| c.name == concept) {
            Some(c) => c.enabled = true,
            None => {
                return Err(format!(
                    "no concept named `{concept}` fitted on {} is in the steering stack",
                    pipe.name()
                ));
            }
        }
        let images = lambdas.len() * seeds.len();
        for (row, &seed) in seeds.iter().enumerate() {
            let mut req = job.request.clone();
            req.seed = seed;
            for (col, &l) in lambdas.iter().enumerate() {
                stack.set_lambda(concept, l);
                let k = row * lambdas.len() + col;
                let img = self.render(pipe, &req, stack, job.window, (job.id, k, images))?;
                let meta = pipe.image_meta(&req, stack, job.window);
                self.send_image(job.id, ImageSlot::Cell { row, col }, img, meta);
            }
        }
        Ok(())
    }
}
