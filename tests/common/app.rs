//! Helpers for the app's egui_kittest tests.

use std::time::{Duration, Instant};

use act_studio::app::StudioApp;
use egui_kittest::Harness;

/// Steps frames until `done`, failing after `secs` with the status line.
pub fn wait(h: &mut Harness<'static, StudioApp>, what: &str, secs: u64, done: impl Fn(&StudioApp) -> bool) {
    let t = Instant::now();
    while !done(h.state()) {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}; status: {:?}",
            h.state().status
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.step();
}
