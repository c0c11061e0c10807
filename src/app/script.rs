//! The screenshot script (`act-studio app --screenshot F`): load, fit a concept on a few
//! samples, generate at λ = 0.5, release the slider at λ = 1, and save a screenshot of each
//! tab (the README images), one step per frame. On the way it prints to stderr what the
//! real window measured: UI frame times while fitting (median, worst) and the time from the
//! slider release to the first steered token.

use std::time::Duration;

use eframe::egui;

use super::{StudioApp, Tab, fit_panel, image};

/// Steps of the screenshot script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Script {
    WaitModel,
    WaitFit,
    WaitGeneration,
    /// The slider was released at λ = 1: waiting for the steered column.
    WaitRelease,
    /// Waiting for screenshot `k` (0: output tab, 1: plots tab), `n` frames so far.
    Shoot(u8, u16),
    Done,
}

impl StudioApp {
    /// Advances the screenshot script by one frame.
    pub(super) fn run_script(&mut self, ctx: &egui::Context) {
        let Some((step, path)) = self.script.clone() else {
            return;
        };
        ctx.request_repaint_after(Duration::from_millis(50));
        let image = self.image_script;
        let next = match step {
            // Image mode (`--image-model` with `--screenshot`): fit an image concept on a few
            // prompts, then a λ strip.
            Script::WaitModel if image && self.image_model.is_some() && !self.busy() => {
                // The demo model's own style concept at its own settings; on other folders
                // (the random test folders) a built-in one, small and fast.
                let demo = self.image.builtin.iter().any(|(n, _)| n == "style:neon");
                let s = &mut self.settings.image;
                s.fit_builtin = true;
                if demo {
                    s.fit_concept = "style:neon".into();
                    s.fit_limit = 32;
                    s.prompt = "a red circle".into();
                    s.seed = 7;
                } else {
                    s.fit_concept = "style:impressionism".into();
                    s.fit_limit = 8;
                    s.steps = s.steps.min(4);
                    s.width = s.width.max(128);
                    s.height = s.height.max(128);
                }
                image::start_fit(self);
                Script::WaitFit
            }
            Script::WaitFit if image && !self.stack.is_empty() && !self.busy() => {
                let demo = self.image.builtin.iter().any(|(n, _)| n == "style:neon");
                self.settings.image.strip_lambdas = if demo {
                    "0, 0.25, 0.5, 0.75, 1".into()
                } else {
                    "0, 0.5, 1, 1.5".into()
                };
                image::generate(self, image::ImageAction::Strip);
                Script::WaitGeneration
            }
            Script::WaitGeneration if image && !self.busy() && !self.image.generating => {
                ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(egui::UserData::default()));
                Script::Shoot(1, 0)
            }
            Script::WaitModel if self.model.is_some() && !self.busy() => {
                self.fit.limit = 48;
                self.frame_ms.clear();
                fit_panel::start_fit(self);
                Script::WaitFit
            }
            Script::WaitFit if !self.stack.is_empty() && !self.busy() => {
                if let Some((median, worst)) = self.frame_stats() {
                    eprintln!(
                        "UI frame time while fitting: median {median:.2} ms, worst {worst:.2} ms over {} frames",
                        self.frame_ms.len()
                    );
                }
                self.settings.max_tokens = 40;
                self.stack[0].concept.lambda = 0.5;
                self.generate(false);
                Script::WaitGeneration
            }
            Script::WaitGeneration if !image && !self.busy() && !self.output.generating => {
                self.stack[0].concept.lambda = 1.0;
                self.output.release_to_token = None;
                self.lambda_released();
                Script::WaitRelease
            }
            Script::WaitRelease
                if !self.busy() && !self.output.generating && self.output.regenerate_at.is_none() =>
            {
                if let Some(t) = self.output.release_to_token {
                    eprintln!(
                        "slider release → first steered token: {:.0} ms",
                        t.as_secs_f64() * 1e3
                    );
                }
                ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(egui::UserData::default()));
                Script::Shoot(0, 0)
            }
            Script::Shoot(k, n) => {
                let shot = ctx.input(|i| {
                    i.raw.events.iter().find_map(|e| match e {
                        egui::Event::Screenshot { image, .. } => Some(image.clone()),
                        _ => None,
                    })
                });
                match shot {
                    Some(img) => {
                        let path = if k == 0 || image {
                            path.clone()
                        } else {
                            path.with_file_name(format!(
                                "{}-plots.png",
                                path.file_stem().map_or("app".into(), |s| s.to_string_lossy())
                            ))
                        };
                        let [w, h] = img.size;
                        let bytes: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
                        let r = ::image::RgbaImage::from_raw(w as u32, h as u32, bytes)
                            .ok_or_else(|| "bad screenshot size".to_string())
                            .and_then(|im| {
                                let mut png = std::io::Cursor::new(Vec::new());
                                im.write_to(&mut png, ::image::ImageFormat::Png)
                                    .map_err(|e| e.to_string())?;
                                crate::transport::atomic_write(&path, png.get_ref())
                                    .map_err(|e| e.to_string())
                            });
                        match r {
                            Ok(()) => eprintln!("screenshot saved to {}", path.display()),
                            Err(e) => eprintln!("screenshot failed: {e}"),
                        }
                        if k == 0 {
                            self.tab = Tab::Plots;
                            ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(
                                egui::UserData::default(),
                            ));
                            Script::Shoot(1, 0)
                        } else {
                            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                            Script::Done
                        }
                    }
                    None if n > 200 => {
                        eprintln!("no screenshot arrived");
                        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                        Script::Done
                    }
                    None => Script::Shoot(k, n + 1),
                }
            }
            s => s,
        };
        self.script = Some((next, path));
    }
}
