//! `act-studio`: a subcommand runs the CLI; `app` or no subcommand opens the desktop app.

use act_studio::app::{AppOptions, run as run_app};
use act_studio::cli::{AppArgs, Cli, Command, exit_code, run as run_command};
use clap::Parser;

fn main() -> std::process::ExitCode {
    // candle counts the physical cores (by reading /proc/cpuinfo) on every tensor operation
    // that may use threads, unless RAYON_NUM_THREADS is set; a decode step runs dozens of such
    // small operations (measured: ≈ 9 % of decode time). Pin it once to what rayon picks anyway.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: this is the first statement of `main`; no other thread exists yet that could
        // read the environment concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    let result = match Cli::parse().command {
        Some(Command::App(a)) => run_app(app_options(a)),
        None => run_app(AppOptions::default()),
        Some(command) => run_command(command),
    };
    // Errors go to stderr with their context chain.
    exit_code(result)
}

/// The app's start options from the `app` command's flags (a screenshot starts fresh).
fn app_options(a: AppArgs) -> AppOptions {
    AppOptions {
        model: a.model,
        image_model: a.image_model,
        no_autoload: false,
        fresh: a.fresh || a.screenshot.is_some(),
        // A screenshot run must not add to (or restore) the user's stack.
        data_dir: a
            .screenshot
            .as_ref()
            .map(|_| std::env::temp_dir().join("act-studio-screenshot")),
        screenshot: a.screenshot,
    }
}
