//! What goes over the worker's channels: [`Command`]s in, [`Event`]s out. Every job a command
//! carries is a pipeline request type ([`FitRequest`], [`TextRequest`], [`SweepRequest`],
//! [`ImageFitRequest`], [`ImageJob`]); the worker adds only the caller's ids, so events of an
//! older job can be told apart from the latest one's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;

use crate::diffusion::image_io::ImageMeta;
use crate::diffusion::pipeline::ImageRequest;
use crate::pipeline::dataset::{Dataset, DatasetSpec};
use crate::pipeline::fit_concept::FitRequest;
use crate::pipeline::fit_image_concept::ImageFitRequest;
use crate::pipeline::fit_model::FitSamples;
use crate::pipeline::generate_text::{Column, TextRequest};
use crate::pipeline::image_sheet::{ImageJob, ImageSlot, RenderProgress};
use crate::pipeline::sweep::SweepRow;
use crate::pipeline::sweep_request::SweepRequest;
use crate::serve::ServeOptions;
use crate::transport::{MapsFile, ModelFingerprint};

use super::job_error::JobError;

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
    /// The image concepts to offer (name, description): the folder's own, then the built-in
    /// ones ([`crate::pipeline::image_concepts::image_concepts_for`]).
    pub concepts: Vec<(String, String)>,
}

/// A text generation: the pipeline request and what the app wants besides.
#[derive(Debug, Clone)]
pub struct GenerateJob {
    /// Caller's id, echoed in the job's events.
    pub id: usize,
    /// What to generate.
    pub request: TextRequest,
    /// Also send the prompt's pooled activations (for the plots).
    pub record_prompt: bool,
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

/// A per-step preview of the image job `id` is making for `slot`.
#[derive(Debug, Clone)]
pub struct ImagePreview {
    /// The job's id.
    pub id: usize,
    /// Where the image goes.
    pub slot: ImageSlot,
    /// Steps done (1-based) of `steps`.
    pub step: usize,
    /// Denoising steps of the image.
    pub steps: usize,
    /// The picture: the predicted clean image after `step` steps.
    pub image: RgbImage,
}

/// Progress of image job `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageProgress {
    /// The job's id.
    pub id: usize,
    /// Image and step.
    pub at: RenderProgress,
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
    /// Starting or stopping the server.
    Serve,
    /// Generating images.
    GenerateImages,
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
    /// A λ sweep.
    Sweep(Box<SweepRequest>),
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
    FitImage(Box<ImageFitRequest>),
    /// Generate images (a pair, a λ strip or a λ × seed grid); the id is echoed in events.
    GenerateImages(usize, Box<ImageJob>),
    /// Start the OpenAI-compatible server on the loaded language model with these concepts
    /// (restarting it if it runs), or stop it (`None`).
    Serve(Option<Box<ServeRequest>>),
}

/// What the app's Serve toggle starts.
#[derive(Debug, Clone)]
pub struct ServeRequest {
    /// The concepts requests may steer with (the text concepts of the steering stack).
    pub concepts: Vec<Arc<MapsFile>>,
    /// Address, key and limits.
    pub options: ServeOptions,
}

/// A running server, as the app shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingInfo {
    /// The API's base URL (`http://127.0.0.1:8080/v1`).
    pub url: String,
    /// The model name requests give (`model`), as `/v1/models` lists it.
    pub model: String,
    /// The concepts it serves, by name.
    pub concepts: Vec<String>,
}

impl JobKind {
    /// What the job does, in words ("the fit").
    pub fn describe(self) -> &'static str {
        match self {
            JobKind::LoadModel => "the model to load",
            JobKind::LoadDataset => "the dataset to load",
            JobKind::Fit => "the fit",
            JobKind::Generate => "the generation",
            JobKind::Sweep => "the sweep",
            JobKind::MakeConcept => "the concept sentences",
            JobKind::Maps => "the maps file",
            JobKind::LoadImageModel => "the diffusion model to load",
            JobKind::FitImage => "the image fit",
            JobKind::GenerateImages => "the images",
            JobKind::Serve => "the server",
        }
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
            Command::GenerateImages(..) => JobKind::GenerateImages,
            Command::Serve(_) => JobKind::Serve,
        }
    }
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
    /// The server started (with its address) or stopped (`None`).
    Serving(Option<ServingInfo>),
    /// A diffusion pipeline is loaded.
    ImageModelLoaded(ImageModelInfo),
    /// The diffusion pipeline was dropped (a new one failed to load).
    ImageModelUnloaded,
    /// An image concept was fitted.
    ImageFitted(Arc<MapsFile>),
    /// Progress of an image job.
    ImageProgress(ImageProgress),
    /// An image of a job is ready.
    Image(Box<ImageResult>),
    /// A preview of an image a job is making (a few per second at most).
    ImagePreview(Box<ImagePreview>),
    /// Image job `id` ended; `complete` when every image was made.
    ImagesDone {
        /// The job's id.
        id: usize,
        /// Finished normally.
        complete: bool,
    },
    /// The running job ended (finished, failed or cancelled).
    Idle,
    /// The running job failed or was cancelled.
    Failed(JobError),
}
