//! The worker without egui: commands in, events out, on the demo model. A fit through the
//! worker is the same pipeline call as `act-studio fit` (`pipeline::fit_concept`), so its maps
//! equal the ones the function returns directly; bad requests come back as `Failed` events and
//! the worker keeps serving.

mod common;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use act_studio::pipeline::dataset::DatasetSpec;
use act_studio::pipeline::fit_concept::{FitRequest, fit_concept};
use act_studio::pipeline::fit_model::Estimation;
use act_studio::pipeline::generate_text::{Column, TextRequest};
use act_studio::pipeline::pooling::Pooling;
use act_studio::runtime::LoadedModel;
use act_studio::runtime::generate::GenerateOptions;
use act_studio::transport::Method;
use act_studio::transport::SteeringStack;
use act_studio::worker::{Command, Event, GenerateJob, JobError, Worker};

/// Events until the next `Idle` (the end of a job), or a panic after two minutes.
fn until_idle(w: &Worker) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        match w.events.recv_timeout(Duration::from_secs(120)) {
            Ok(Event::Idle) => return seen,
            Ok(e) => seen.push(e),
            Err(e) => panic!("no event from the worker: {e}"),
        }
    }
}

fn request(preset: &str) -> FitRequest {
    FitRequest {
        name: "football".into(),
        source: DatasetSpec::Builtin("neutral".into()),
        target: DatasetSpec::Builtin("football".into()),
        limit: Some(12),
        method: Method::LinearAct,
        preset: preset.into(),
        pooling: Pooling::Mean,
        support: None,
        estimation: Estimation::Causal,
        keep_samples: true,
    }
}

#[test]
fn a_fit_through_the_worker_equals_the_pipeline_call_and_errors_keep_it_alive() {
    let Some(path) = common::demo_model() else { return };
    let w = Worker::spawn(|| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(w.send(Command::LoadModel(path.clone())));
    let loaded = until_idle(&w);
    assert!(
        loaded.iter().any(|e| matches!(e, Event::ModelLoaded(_))),
        "model not loaded"
    );

    // A preset that does not exist: a clear error, then the worker takes the next job.
    assert!(w.send(Command::Fit(Box::new(request("no-such-preset")))));
    let failed = until_idle(&w);
    let msg = failed.iter().find_map(|e| match e {
        Event::Failed(JobError::Failed(m)) => Some(m.clone()),
        _ => None,
    });
    assert!(
        msg.as_deref().is_some_and(|m| m.contains("no-such-preset")),
        "expected an error naming the preset, got {failed:?}"
    );

    let req = request("post-ln:0-3");
    assert!(w.send(Command::Fit(Box::new(req.clone()))));
    let events = until_idle(&w);
    let progress = events.iter().filter(|e| matches!(e, Event::Progress(_))).count();
    let (maps, samples) = events
        .iter()
        .find_map(|e| match e {
            Event::Fitted(m, s) => Some((m.clone(), s.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Fitted event: {events:?}"));
    assert!(progress >= 4, "{progress} progress events for 4 hook points");
    assert_eq!(samples.len(), 4, "pooled activations kept for the plots");
    let meta = maps.meta();
    assert_eq!(
        (meta.concept.as_str(), meta.source.count, meta.target.count),
        ("football", 12, 12)
    );

    let m = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let direct =
        fit_concept(&m, &req, &AtomicBool::new(false), &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    for ((name, a), (_, b)) in maps.hooks().zip(direct.maps.hooks()) {
        assert!(
            a.omega() == b.omega() && a.beta() == b.beta(),
            "{name}: worker and pipeline differ"
        );
    }
    // The same datasets (by content hash) are recorded in both files' metadata.
    let (a, b) = (maps.meta(), direct.maps.meta());
    assert!(!a.source.sha256.is_empty() && !a.target.sha256.is_empty());
    assert_eq!(
        (&a.source.sha256, &a.target.sha256, &a.method, &a.estimation),
        (&b.source.sha256, &b.target.sha256, &b.method, &b.estimation)
    );
}

#[test]
fn a_stopped_job_ends_as_cancelled_and_the_next_one_runs() {
    let Some(path) = common::demo_model() else { return };
    let w = Worker::spawn(|| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(w.send(Command::LoadModel(path)));
    until_idle(&w);
    let job = |id| GenerateJob {
        id,
        request: TextRequest {
            prompt: "Write a long story about a ship lost at sea.".into(),
            chat: true,
            system: String::new(),
            options: GenerateOptions {
                max_tokens: 400,
                ..Default::default()
            },
            stack: SteeringStack::default(),
            unsteered: true,
        },
        record_prompt: false,
    };
    // Stop the generation once its first piece of text arrives.
    assert!(w.send(Command::Generate(Box::new(job(1)))));
    let mut seen = Vec::new();
    loop {
        match w.events.recv_timeout(Duration::from_secs(120)) {
            Ok(Event::Idle) => break,
            Ok(e) => {
                if matches!(e, Event::Token(1, Column::Unsteered, _)) {
                    w.cancel_running();
                }
                seen.push(e);
            }
            Err(e) => panic!("no event from the worker: {e}"),
        }
    }
    let failures: Vec<&JobError> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Failed(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(failures, [&JobError::Cancelled], "{seen:?}");
    assert!(
        seen.iter().any(|e| matches!(
            e,
            Event::ColumnDone {
                id: 1,
                column: Column::Unsteered,
                complete: false
            }
        )),
        "the stopped column is marked incomplete"
    );
    assert!(
        seen.iter().any(|e| matches!(
            e,
            Event::ColumnDone {
                id: 1,
                column: Column::Steered,
                complete: false
            }
        )),
        "the steered column, streaming beside it, is marked incomplete too"
    );
    // The flag is cleared for the next job, which runs to its end.
    let mut short = job(2);
    short.request.options.max_tokens = 4;
    assert!(w.send(Command::Generate(Box::new(short))));
    let next = until_idle(&w);
    assert!(!next.iter().any(|e| matches!(e, Event::Failed(_))), "{next:?}");
    assert!(next.iter().any(|e| matches!(
        e,
        Event::ColumnDone {
            id: 2,
            column: Column::Steered,
            complete: true
        }
    )));
}

#[test]
fn the_serve_toggle_serves_the_stacks_concepts_and_stops_with_a_new_model() {
    let Some(path) = common::demo_model() else { return };
    let w = Worker::spawn(|| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(w.send(Command::LoadModel(path.clone())));
    until_idle(&w);
    assert!(w.send(Command::Fit(Box::new(request("post-ln:0-3")))));
    let maps = until_idle(&w)
        .into_iter()
        .find_map(|e| match e {
            Event::Fitted(m, _) => Some(m),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no maps fitted"));
    let options = act_studio::serve::ServeOptions {
        port: 0,
        ..Default::default()
    };
    let serve = act_studio::worker::ServeRequest {
        concepts: vec![maps],
        options,
    };
    assert!(w.send(Command::Serve(Some(Box::new(serve)))));
    let info = until_idle(&w)
        .into_iter()
        .find_map(|e| match e {
            Event::Serving(Some(info)) => Some(info),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the server did not start"));
    assert_eq!(info.concepts, vec!["football".to_string()]);
    let addr = info
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string();
    let body = r#"{"prompt":"I like to","max_tokens":6,"temperature":0,"steering":{"football":1}}"#;
    let (status, answer) = common::http(&addr, "POST", "/v1/completions", body);
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(v["usage"]["completion_tokens"], 6, "{answer}");
    let (status, answer) = common::http(
        &addr,
        "POST",
        "/v1/completions",
        &body.replace("football", "cooking"),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("unknown_concept"), "{answer}");

    // Loading a model stops the server (it would go on serving the old one).
    assert!(w.send(Command::LoadModel(path)));
    let events = until_idle(&w);
    assert!(
        events.iter().any(|e| matches!(e, Event::Serving(None))),
        "no stop event: {events:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the port still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
