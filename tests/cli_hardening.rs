//! What a flag or an output path can do wrong, end to end through the binary: out-of-range
//! numbers are refused with a clear message before any work, an output that is one of the
//! command's inputs is refused and the input left intact, a closed stdout ends a command
//! quietly, and ordinary errors never print a stack trace.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{run_cli as act, text};

fn write_csv(path: &Path, rows: usize, cols: usize, offset: f32) {
    let s: String = (0..rows)
        .map(|r| {
            let row: Vec<String> = (0..cols)
                .map(|c| format!("{}", offset + ((r * 7 + c * 3) % 11) as f32 * 0.5))
                .collect();
            row.join(",") + "\n"
        })
        .collect();
    std::fs::write(path, s).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs the binary with `RUST_BACKTRACE=1` and returns (success, stderr).
fn run_with_backtrace(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_act-studio"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    (out.status.success(), text(&out.stderr))
}

/// Each bad number fails at the command line with its rule in the message, and no panic.
#[test]
fn numbers_outside_their_ranges_are_refused_with_the_rule() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (s, t) = (dir.path().join("s.csv"), dir.path().join("t.csv"));
    write_csv(&s, 12, 3, 0.0);
    write_csv(&t, 12, 3, 2.0);
    let (s, t) = (s.to_string_lossy().into_owned(), t.to_string_lossy().into_owned());
    let out = dir.path().join("o.safetensors").to_string_lossy().into_owned();
    let model = "no-such-model.gguf";
    // `generate` on the missing model with a prompt, then `extra`.
    let generate = |extra: &[&'static str]| -> Vec<&'static str> {
        ["generate", "--model", model, "--prompt", "hi"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect()
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            generate(&["--temperature", "1e-45"]),
            "temperature 1e-45 is outside",
        ),
        (generate(&["--temperature", "-1"]), "temperature -1.0 is outside"),
        (generate(&["--top-p", "NaN"]), "top-p NaN is outside"),
        (
            generate(&["--repetition-penalty", "0"]),
            "repetition penalty 0.0 is outside",
        ),
        (
            generate(&["--frequency-penalty", "2.5"]),
            "frequency penalty 2.5 is outside",
        ),
        (
            generate(&["--presence-penalty", "-3"]),
            "presence penalty -3.0 is outside",
        ),
        (
            generate(&["--lambda", "x=1e30"]),
            "λ = 1e30 is not a number within ±2",
        ),
        (generate(&["--lambda", "x=NaN"]), "λ = NaN"),
        (
            vec!["sweep", "--model", model, "--maps", "m", "--lambdas", "-3,0,1"],
            "λ = -3.0 is not a number within ±2",
        ),
        (
            vec![
                "make-concept",
                "--model",
                model,
                "--description",
                "x",
                "--out",
                "x.txt",
                "--samples",
                "0",
            ],
            "--samples",
        ),
        (
            vec![
                "fit-arrays",
                "--source",
                &s,
                "--target",
                &t,
                "--out",
                &out,
                "--method",
                "det0:2",
            ],
            "det0's AP threshold must lie in [0, 1]",
        ),
    ];
    for (args, want) in cases {
        let (ok, err) = run_with_backtrace(&args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
        assert!(
            !err.contains("panicked") && !err.contains("stack backtrace"),
            "{args:?}: {err}"
        );
    }
    // Negative λ lists parse (and then fail for the missing model, not the flag).
    let (ok, err) = run_with_backtrace(&["sweep", "--model", model, "--maps", "m", "--lambdas", "-1,0,1"]);
    assert!(!ok && err.contains(model) && !err.contains("λ"), "{err}");
    // det0 with a threshold inside [0, 1] fits.
    let (ok, err) = run_with_backtrace(&[
        "fit-arrays",
        "--source",
        &s,
        "--target",
        &t,
        "--out",
        &out,
        "--method",
        "det0:0.5",
    ]);
    assert!(ok, "{err}");
}

/// `--out` naming an input (as such, through a symlink or a hard link) is refused before any
/// work, and the input keeps its bytes; an output folder that does not exist is refused
/// before any work.
#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (s, t) = (dir.path().join("s.csv"), dir.path().join("t.csv"));
    write_csv(&s, 12, 3, 0.0);
    write_csv(&t, 12, 3, 2.0);
    let before = std::fs::read(&s).unwrap_or_else(|e| panic!("{e}"));
    let link = dir.path().join("link.csv");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&s, &link).unwrap_or_else(|e| panic!("{e}"));
    #[cfg(not(unix))]
    std::fs::copy(&s, &link)
        .map(|_| ())
        .unwrap_or_else(|e| panic!("{e}"));
    let p = |p: &Path| p.to_string_lossy().into_owned();
    let mut outs = vec![p(&s)];
    if cfg!(unix) {
        outs.push(p(&link));
    }
    for out in &outs {
        let (ok, err) =
            run_with_backtrace(&["fit-arrays", "--source", &p(&s), "--target", &p(&t), "--out", out]);
        assert!(!ok && err.contains("writing it would replace it"), "{err}");
    }
    assert_eq!(std::fs::read(&s).unwrap_or_default(), before, "the input changed");
    // quantize --out = --model: refused before the model is read.
    let (ok, err) = run_with_backtrace(&["quantize", "--model", &p(&s), "--out", &p(&s), "--type", "q8_0"]);
    assert!(!ok && err.contains("is the input model itself"), "{err}");
    assert_eq!(std::fs::read(&s).unwrap_or_default(), before, "the input changed");
    let missing = dir.path().join("no-such-folder").join("o.safetensors");
    let (ok, err) = run_with_backtrace(&[
        "fit-arrays",
        "--source",
        &p(&s),
        "--target",
        &p(&t),
        "--out",
        &p(&missing),
    ]);
    assert!(!ok && err.contains("does not exist"), "{err}");
}

/// A reader that goes away (`| head`) ends a printing command successfully, without a panic.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_act-studio"))
        .args(["concepts"])
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    // Close our end of stdout before the command writes.
    drop(child.stdout.take());
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "exit {status}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A full disk behind stdout is an error, not a panic.
#[cfg(target_os = "linux")]
#[test]
fn a_full_stdout_is_an_error() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        println!("skipped: no /dev/full");
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_act-studio"))
        .args(["concepts"])
        .env("RUST_BACKTRACE", "1")
        .stdout(full)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("writing to stdout") && !err.contains("panicked"),
        "{err}"
    );
}

/// On the demo model: a max-token count that would wrap around is refused at once, and a
/// perplexity window below two tokens is refused instead of silently changed.
#[test]
fn lengths_past_the_context_are_refused_on_the_demo_model() {
    let Some(model) = common::demo_model() else { return };
    let m = model.to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    let out = act(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "hi",
        "--max-tokens",
        "18446744073709551615",
    ]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("exceed the context length"),
        "{err}"
    );
    println!("refused in {:.1} s", started.elapsed().as_secs_f64());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = dir.path().join("t.txt");
    std::fs::write(&f, "one two three four five six").unwrap_or_else(|e| panic!("{e}"));
    let out = act(&[
        "perplexity",
        "--model",
        &m,
        "--file",
        &f.to_string_lossy(),
        "--window",
        "0",
    ]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("window of 0 tokens is outside 2"),
        "{err}"
    );
}

/// A broken model file is an ordinary error: with `RUST_BACKTRACE=1` the message carries no
/// stack trace (candle appends one to its errors when backtraces are on).
#[test]
fn a_truncated_model_is_an_error_without_a_stack_trace() {
    let Some(model) = common::demo_model() else { return };
    let bytes = std::fs::read(&model).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..2 << 20]).unwrap_or_else(|e| panic!("{e}"));
    let (ok, err) = run_with_backtrace(&["generate", "--model", &cut.to_string_lossy(), "--prompt", "hi"]);
    assert!(!ok && err.contains("ends past the end of the file"), "{err}");
    assert!(!err.contains("   0: ") && !err.contains("backtrace"), "{err}");
}
