//! The desktop app (eframe/egui): one window with the whole steering loop. Panels live in one
//! file each; every piece of model work goes to the [`crate::worker`] thread, and the UI thread
//! only drains its events and draws.

mod concepts_panel;
mod dialogs;
mod events;
mod fit_panel;
mod history;
mod image;
mod jobs;
mod lambda_bar;
mod model_panel;
mod output_panel;
mod path_bar;
mod plots;
mod restore;
pub mod run_settings;
mod script;
pub mod settings;
mod status_bar;
mod steering_panel;
mod sweep_panel;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;

use crate::pipeline::fit_model::FitSamples;
use crate::runtime::CachedModel;
use crate::transport::{SteeringStack, TokenScope};
use crate::worker::{Command, ImageModelInfo, JobKind, ModelInfo, Progress, Ticket, Worker};

pub use history::Run;
pub use image::{ImageAction, ImageState, ImageView, SaveWhat, SheetKind, Shown};
pub use run_settings::RunSettings;
pub use sweep_panel::SweepForm;

use dialogs::DialogResult;
use script::Script;
use settings::Settings;

/// Debounce of slider releases: a burst of releases (keyboard, quick drags) regenerates once.
const REGENERATE_DELAY_MS: u64 = 60;

/// The demo model's place, relative to the working folder.
pub const DEMO_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The demo text-to-image model's place (trained by tools/t2i/train.py), relative to the
/// working folder; loaded at start beside the demo model, without leaving text mode.
pub const DEMO_IMAGE_MODEL: &str = "models/act-shapes-t2i";

/// How the app starts.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// Load this model at start (the demo model when `None` and it exists).
    pub model: Option<PathBuf>,
    /// Load this diffusers folder (Stable Diffusion) at start and show image mode (default:
    /// the demo image model when it exists, in the background).
    pub image_model: Option<PathBuf>,
    /// Do not look for the demo model.
    pub no_autoload: bool,
    /// Ignore stored settings.
    pub fresh: bool,
    /// Demo script: fit the default concept on a few samples, generate at λ = 1, save a
    /// screenshot of the window to this PNG and close (for the README image).
    pub screenshot: Option<PathBuf>,
    /// Where concepts fitted in the app are kept so they come back at the next start
    /// (default: the app's data folder, `fitted/` under eframe's storage folder).
    pub data_dir: Option<PathBuf>,
}

/// One concept in the steering stack, with what the app knows about it.
#[derive(Clone)]
pub struct StackEntry {
    /// Name, maps, λ, on/off.
    pub concept: crate::transport::Concept,
    /// The samples it was fitted on (for plots), when fitted in this session.
    pub samples: Option<Arc<Vec<FitSamples>>>,
    /// Allow λ from −2 to 2 (extrapolation).
    pub extended: bool,
    /// The maps file it was loaded from or saved to (what restores it at the next start).
    pub path: Option<PathBuf>,
    /// The maps' data checksum (`data_sha256`), recorded with every run that used them.
    pub maps_sha256: String,
}

/// A dataset open in the editor.
#[derive(Debug, Clone, Default)]
pub struct Editor {
    /// Where it came from (a spec, or "made from …").
    pub origin: String,
    /// One sample per line.
    pub text: String,
    /// Token count per sample, when a model was loaded.
    pub token_lens: Vec<usize>,
}

/// Generation speed of one column.
#[derive(Debug, Clone, Copy, Default)]
pub struct ColumnRate {
    /// Tokens so far.
    pub tokens: usize,
    /// When the first token arrived.
    pub first: Option<Instant>,
    /// When the last token arrived.
    pub last: Option<Instant>,
}

impl ColumnRate {
    /// Counts a token.
    pub fn token(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.tokens += 1;
    }

    /// Tokens per second after the first token (`None` before two tokens).
    pub fn per_second(&self) -> Option<f64> {
        let s = self.last?.duration_since(self.first?).as_secs_f64();
        (self.tokens > 1 && s > 0.0).then(|| (self.tokens - 1) as f64 / s)
    }
}

/// The two output columns.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Unsteered text.
    pub unsteered: String,
    /// Steered text.
    pub steered: String,
    /// What the unsteered column was made with (set when it is complete).
    pub unsteered_run: Option<RunSettings>,
    /// What the steered column was made with (set when it is complete).
    pub steered_run: Option<RunSettings>,
    /// What the running generation was started with.
    pub pending_run: Option<RunSettings>,
    /// A generation waits for the worker (`Some(steered_only)`).
    pub queued: Option<bool>,
    /// When the current generation was asked for.
    pub requested: Option<Instant>,
    /// Time from the request to the first steered token, last generation.
    pub first_steered_token: Option<Duration>,
    /// A generation is running.
    pub generating: bool,
    /// Regenerate the steered column at this time (debounced slider release).
    pub regenerate_at: Option<Instant>,
    /// Generations started so far.
    pub started: usize,
    /// Unsteered columns generated so far.
    pub unsteered_runs: usize,
    /// When a slider was last released (cleared at the next steered token).
    pub released: Option<Instant>,
    /// Time from releasing a slider to the first steered token, last time.
    pub release_to_token: Option<Duration>,
    /// Speed of the unsteered and steered columns of the last generation.
    pub rates: [ColumnRate; 2],
}

/// Central tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tab {
    /// Two-column output and sweeps.
    #[default]
    Output,
    /// Activation plots.
    Plots,
}

/// Text or image generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The language model.
    #[default]
    Text,
    /// The diffusion pipeline.
    Image,
}

/// The app.
pub struct StudioApp {
    worker: Worker,
    dialogs: (
        crossbeam_channel::Sender<DialogResult>,
        crossbeam_channel::Receiver<DialogResult>,
    ),
    ctx: egui::Context,
    /// Persisted settings.
    pub settings: Settings,
    /// The loaded model.
    pub model: Option<ModelInfo>,
    /// The loaded diffusion pipeline.
    pub image_model: Option<ImageModelInfo>,
    /// Text or image mode.
    pub mode: Mode,
    /// Image mode: results and form state.
    pub image: ImageState,
    /// Models in the local Hugging Face cache.
    pub hf_cache: Vec<CachedModel>,
    /// Commands sent and not finished, oldest (the running one) first.
    pub jobs: VecDeque<Ticket>,
    /// The job the worker is running.
    pub running: Option<JobKind>,
    /// Progress of the running job.
    pub progress: Option<Progress>,
    /// Last message (error = true shows it in red).
    pub status: Option<(String, bool)>,
    /// Every error shown so far (newest last).
    pub errors: Vec<String>,
    /// The steering stack.
    pub stack: Vec<StackEntry>,
    /// Which tokens are steered.
    pub scope: TokenScope,
    /// Dataset editor.
    pub editor: Option<Editor>,
    /// "Make a concept" description.
    pub describe: String,
    /// Sentences to make.
    pub describe_samples: usize,
    /// Fit form.
    pub fit: fit_panel::FitForm,
    /// Output columns.
    pub output: Output,
    /// Sweep.
    pub sweep: SweepForm,
    /// Plot choices.
    pub plots: plots::PlotsState,
    /// The prompt's pooled activations per hook point (unsteered).
    pub prompt_acts: Vec<(String, Vec<f32>)>,
    /// Central tab.
    pub tab: Tab,
    /// UI frame times (ms), the last 2000 frames.
    pub frame_ms: Vec<f32>,
    /// Finished generations, oldest first (at most [`history::MAX_RUNS`]).
    pub history: Vec<Run>,
    /// Stack entries of the last session still to be loaded (restored when their model is).
    pub restore: Vec<settings::SavedConcept>,
    /// Where fitted concepts are kept between sessions.
    pub data_dir: Option<PathBuf>,
    /// Maps files of fitted concepts being written to the data folder.
    keeping: Vec<PathBuf>,
    /// The OpenAI-compatible server started from the steering panel, while it runs.
    pub serving: Option<crate::worker::ServingInfo>,
    /// The API key the Serve toggle's server asks for (empty: none); kept for this session
    /// only, never written to the settings.
    pub serve_key: String,
    /// The path bar's text.
    pub path_bar: String,
    script: Option<(Script, PathBuf)>,
    /// The screenshot script runs in image mode.
    image_script: bool,
}

impl StudioApp {
    /// Creates the app from eframe's creation context.
    pub fn new(cc: &eframe::CreationContext<'_>, opts: AppOptions) -> Self {
        let settings: Settings = if opts.fresh {
            Settings::default()
        } else {
            cc.storage
                .and_then(|s| eframe::get_value::<Settings>(s, eframe::APP_KEY))
                .map(Settings::migrated)
                .unwrap_or_default()
        };
        Self::with_settings(&cc.egui_ctx, settings, opts)
    }

    /// Creates the app with given settings (tests start from defaults).
    pub fn with_settings(ctx: &egui::Context, settings: Settings, opts: AppOptions) -> Self {
        let repaint = ctx.clone();
        let worker = match Worker::spawn(move || repaint.request_repaint()) {
            Ok(w) => w,
            // Without a worker thread nothing can run; the OS refusing one thread is fatal.
            Err(e) => panic!("cannot start the worker thread: {e}"),
        };
        let restore = settings.stack.clone();
        let mut app = Self {
            worker,
            dialogs: crossbeam_channel::unbounded(),
            ctx: ctx.clone(),
            fit: fit_panel::FitForm::from_settings(&settings),
            settings,
            model: None,
            image_model: None,
            mode: Mode::Text,
            image: ImageState::default(),
            hf_cache: crate::runtime::discover_hf_cache(None),
            jobs: VecDeque::new(),
            running: None,
            progress: None,
            status: None,
            errors: Vec::new(),
            stack: Vec::new(),
            scope: TokenScope::All,
            editor: None,
            describe: String::new(),
            describe_samples: 24,
            output: Output::default(),
            sweep: SweepForm::default(),
            plots: plots::PlotsState::default(),
            prompt_acts: Vec::new(),
            tab: Tab::Output,
            frame_ms: Vec::new(),
            history: Vec::new(),
            restore: Vec::new(),
            path_bar: String::new(),
            keeping: Vec::new(),
            serving: None,
            serve_key: String::new(),
            data_dir: opts
                .data_dir
                .clone()
                .or_else(|| eframe::storage_dir("act-studio").map(|d| d.join("fitted"))),
            script: opts.screenshot.clone().map(|p| (Script::WaitModel, p)),
            image_script: opts.screenshot.is_some() && opts.image_model.is_some(),
        };
        let start = opts.model.clone().or_else(|| {
            let demo = PathBuf::from(DEMO_MODEL);
            (!opts.no_autoload && demo.exists()).then_some(demo)
        });
        app.restore = restore;
        if let Ok(scope) = app.settings.scope.parse::<TokenScope>() {
            app.scope = scope;
        }
        if let Some(p) = start {
            app.load_model(p);
        }
        if let Some(p) = opts.image_model.clone() {
            app.load_image_model(p);
        } else {
            let demo = PathBuf::from(DEMO_IMAGE_MODEL);
            if !opts.no_autoload && demo.join("model_index.json").exists() {
                app.image.show_on_load = false;
                app.load_image_model(demo);
            }
        }
        app
    }

    /// Shows an error in the status line (and keeps it in the error list).
    pub fn error(&mut self, msg: String) {
        self.errors.push(msg.clone());
        self.status = Some((msg, true));
    }

    /// Shows a message in the status line.
    pub fn info(&mut self, msg: String) {
        self.status = Some((msg, false));
    }

    /// Loads a model on the worker.
    pub fn load_model(&mut self, path: PathBuf) {
        self.info(format!("loading {} …", path.display()));
        self.send(Command::LoadModel(path));
    }

    /// Loads a diffusers folder on the worker.
    pub fn load_image_model(&mut self, path: PathBuf) {
        self.info(format!("loading diffusion model {} …", path.display()));
        let half = self.settings.image_half;
        self.send(Command::LoadImageModel { path, half });
    }

    /// The text concepts of the stack as the transport core sees it.
    pub fn steering_stack(&self) -> SteeringStack {
        SteeringStack {
            concepts: self
                .stack
                .iter()
                .filter(|e| !e.concept.maps.meta().fingerprint.is_diffusion())
                .map(|e| e.concept.clone())
                .collect(),
            scope: self.scope,
        }
    }

    /// The image concepts of the stack (fitted on the loaded diffusion pipeline).
    pub fn image_stack(&self) -> SteeringStack {
        let fp = self.image_model.as_ref().map(|m| &m.fingerprint);
        SteeringStack {
            concepts: self
                .stack
                .iter()
                .filter(|e| Some(&e.concept.maps.meta().fingerprint) == fp)
                .map(|e| e.concept.clone())
                .collect(),
            scope: TokenScope::All,
        }
    }

    /// Starts an image job (a pair, a λ strip or a λ × seed grid) from the image settings.
    pub fn generate_images(&mut self, action: ImageAction) {
        image::generate(self, action);
    }

    /// Writes the shown image(s) to a PNG carrying their settings (atomically); errors go to
    /// the status line.
    pub fn save_image_png(&mut self, path: &Path, what: SaveWhat) {
        image::save(self, path, what);
    }

    /// Fills the image settings (and λ of same-named stack concepts) from a PNG this app or
    /// the CLI wrote; errors go to the status line.
    pub fn load_image_settings(&mut self, path: &Path) {
        image::load_settings(self, path);
    }

    /// Starts the image-concept fit of the fit form.
    pub fn fit_image(&mut self) {
        image::start_fit(self);
    }

    /// Called when a λ slider is released: regenerate the steered column (or image) shortly
    /// after.
    pub fn lambda_released(&mut self) {
        if self.mode == Mode::Image {
            image::lambda_released(self, Duration::from_millis(REGENERATE_DELAY_MS));
            return;
        }
        let has_output =
            self.output.unsteered_runs > 0 || self.output.queued.is_some() || self.output.generating;
        if self.settings.live && self.model.is_some() && has_output {
            self.output.regenerate_at = Some(Instant::now() + Duration::from_millis(REGENERATE_DELAY_MS));
            self.output.released = Some(Instant::now());
        }
    }

    /// Ctrl+Enter (⌘+Enter) generates, Esc stops the generation.
    fn shortcuts(&mut self, ctx: &egui::Context) {
        // Keys are taken only when they do something here (Esc still closes menus otherwise).
        let can_generate = self.mode == Mode::Text && self.model.is_some();
        if can_generate && ctx.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter)) {
            self.generate(false);
        }
        let can_stop = self.output.generating || self.output.queued.is_some();
        if can_stop && ctx.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::Escape)) {
            self.stop_generation();
        }
    }

    /// Median and worst UI frame time (ms) over the recorded frames.
    pub fn frame_stats(&self) -> Option<(f32, f32)> {
        if self.frame_ms.is_empty() {
            return None;
        }
        let mut v = self.frame_ms.clone();
        v.sort_by(f32::total_cmp);
        Some((v[v.len() / 2], v[v.len() - 1]))
    }
}

impl eframe::App for StudioApp {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        let t0 = Instant::now();
        while let Ok(e) = self.worker.events.try_recv() {
            self.handle(e);
        }
        while let Ok(r) = self.dialogs.1.try_recv() {
            self.handle_dialog(r);
        }
        self.run_script(ctx);
        self.shortcuts(ctx);
        self.pump();
        plots::take_screenshot(self, ctx);
        if let Some(at) = self.output.regenerate_at {
            if Instant::now() >= at {
                self.output.regenerate_at = None;
                self.generate(true);
            } else {
                ctx.request_repaint_after(at - Instant::now());
            }
        }
        if let Some(at) = self.image.regenerate_at {
            if Instant::now() >= at {
                self.image.regenerate_at = None;
                self.generate_images(ImageAction::Pair { steered_only: true });
            } else {
                ctx.request_repaint_after(at - Instant::now());
            }
        }
        egui::TopBottomPanel::bottom("status").show(ctx, |ui| status_bar::show(self, ui));
        egui::SidePanel::left("controls")
            .resizable(true)
            .default_width(360.0)
            .show(ctx, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    egui::CollapsingHeader::new("Model")
                        .default_open(true)
                        .show(ui, |ui| model_panel::show(self, ui));
                    egui::CollapsingHeader::new("Concepts")
                        .default_open(true)
                        .show(ui, |ui| concepts_panel::show(self, ui));
                    egui::CollapsingHeader::new("Fit")
                        .default_open(true)
                        .show(ui, |ui| fit_panel::show(self, ui));
                    egui::CollapsingHeader::new("Steering")
                        .default_open(true)
                        .show(ui, |ui| steering_panel::show(self, ui));
                });
            });
        egui::CentralPanel::default().show(ctx, |ui| {
            ui.horizontal(|ui| {
                ui.selectable_value(&mut self.tab, Tab::Output, "Output");
                ui.selectable_value(&mut self.tab, Tab::Plots, "Plots");
            });
            ui.separator();
            match self.tab {
                Tab::Output => output_panel::show(self, ui),
                Tab::Plots => plots::show(self, ui),
            }
        });
        if self.frame_ms.len() >= 2000 {
            self.frame_ms.drain(..1000);
        }
        self.frame_ms.push(t0.elapsed().as_secs_f32() * 1e3);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings_to_save());
    }
}

/// Opens the app window (blocks until it is closed).
pub fn run(opts: AppOptions) -> anyhow::Result<()> {
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1400.0, 900.0])
            .with_min_inner_size([900.0, 600.0])
            .with_title("AcT Studio"),
        renderer: eframe::Renderer::Glow,
        ..Default::default()
    };
    eframe::run_native(
        "act-studio",
        native,
        Box::new(move |cc| Ok(Box::new(StudioApp::new(cc, opts)))),
    )
    .map_err(|e| {
        anyhow::anyhow!("cannot open the app window: {e} (use a subcommand for the CLI: act-studio --help)")
    })
}
