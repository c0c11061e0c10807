//! The diffusion jobs: loading a pipeline, fitting an image concept and making images, each
//! translated into its pipeline call, with progress and images sent back as events.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::diffusion::pipeline::{LoadOptions, SdPipeline};
use crate::pipeline::fit_image_concept::{ImageConceptSource, ImageFitRequest, fit_image_concept};
use crate::pipeline::image_concepts::{builtin_image_concepts, image_concepts_for};
use crate::pipeline::image_sheet::{ImageJob, ImageSlot, PreviewSink, render_images_previewed};

use super::State;
use super::job_error::JobError;
use super::protocol::{Event, ImageModelInfo, ImagePreview, ImageProgress, ImageResult, Progress};

/// Shortest time between two previews sent to the app.
const PREVIEW_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Sends previews of job `id` as events, at most one per [`PREVIEW_EVERY`] and none of a
/// last step (the image itself follows).
struct SendPreviews<'a> {
    id: usize,
    last: Option<Instant>,
    send: &'a dyn Fn(Event),
}

impl PreviewSink for SendPreviews<'_> {
    fn wants(&mut self, _: ImageSlot, step: usize, steps: usize) -> bool {
        step + 1 < steps && self.last.is_none_or(|t| t.elapsed() >= PREVIEW_EVERY)
    }

    fn preview(&mut self, slot: ImageSlot, step: usize, steps: usize, image: image::RgbImage) {
        self.last = Some(Instant::now());
        (self.send)(Event::ImagePreview(Box::new(ImagePreview {
            id: self.id,
            slot,
            step: step + 1,
            steps,
            image,
        })));
    }
}

impl State {
    pub(super) fn image(&self) -> Result<Arc<SdPipeline>, JobError> {
        self.image.clone().ok_or_else(|| {
            JobError::failed("no diffusion model is loaded: open a diffusers folder in the model panel")
        })
    }

    pub(super) fn load_image_model(&mut self, path: PathBuf, half: bool) -> Result<(), JobError> {
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
        let pipe = SdPipeline::load(&path, &opts).map_err(|e| JobError::from(e).context(path.display()))?;
        let mut warnings = pipe.warnings().to_vec();
        let concepts = image_concepts_for(Some(&path)).unwrap_or_else(|e| {
            warnings.push(format!("its own concepts are not offered: {e}"));
            builtin_image_concepts()
        });
        let info = ImageModelInfo {
            concepts,
            path,
            name: pipe.name(),
            family: pipe.family().name().to_string(),
            hook_points: pipe.hook_sites().iter().map(|s| s.name.clone()).collect(),
            fingerprint: pipe.fingerprint().clone(),
            warnings,
            default_request: pipe.default_request(""),
            dtype: pipe.dtype().as_str().to_string(),
        };
        self.image = Some(Arc::new(pipe));
        self.send(Event::ImageModelLoaded(info));
        Ok(())
    }

    pub(super) fn fit_image(&mut self, req: &ImageFitRequest) -> Result<(), JobError> {
        let pipe = self.image()?;
        let started = Instant::now();
        self.progress("fitting image concept", 0, 0, started);
        let (events, notify, cancel) = (&self.events, &self.notify, &self.cancel);
        let name = match (&req.name, &req.concept) {
            (Some(n), _) if !n.trim().is_empty() => n.trim().to_string(),
            (_, ImageConceptSource::Builtin(n)) => n.trim().to_string(),
            _ => "image concept".to_string(),
        };
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
            !cancel.load(std::sync::atomic::Ordering::Relaxed)
        };
        let fitted = fit_image_concept(&pipe, req, &mut progress)?;
        self.send(Event::ImageFitted(Arc::new(fitted.maps)));
        Ok(())
    }

    pub(super) fn generate_images(&mut self, id: usize, job: &ImageJob) -> Result<(), JobError> {
        let pipe = self.image()?;
        let mut progress = |at| {
            self.send(Event::ImageProgress(ImageProgress { id, at }));
            !self.cancelled()
        };
        let mut on_image = |slot, image, meta| {
            self.send(Event::Image(Box::new(ImageResult {
                id,
                slot,
                image,
                meta,
            })))
        };
        let send = |e: Event| self.send(e);
        let mut previews = SendPreviews {
            id,
            last: None,
            send: &send,
        };
        render_images_previewed(&pipe, job, &mut progress, &mut on_image, &mut previews)?;
        Ok(())
    }
}
