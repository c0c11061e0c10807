//! `act-studio serve` over HTTP on the demo model: a request whose samples could outgrow the
//! server's KV cache limit is refused with 400 `kv_cache_limit` (naming `max_tokens`), one
//! that fits is served, and the server stops on request; a request for a model the server
//! does not serve gets 404 `model_not_found`, unless the server takes any name.

mod common;

use std::sync::Arc;

use act_studio::pipeline::completion::{ConceptSet, kv_bytes_per_position};
use act_studio::runtime::LoadedModel;
use act_studio::serve::{ServeOptions, start};

#[test]
fn a_request_beyond_the_kv_cache_limit_is_refused_with_400_and_one_within_it_is_served() {
    let Some(path) = common::demo_model() else { return };
    let m = Arc::new(LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}")));
    let concepts = ConceptSet::load(&m, &[]).unwrap_or_else(|e| panic!("{e}"));
    // Room for 64 positions of one sample.
    let limit = 64 * kv_bytes_per_position(&m);
    let options = ServeOptions {
        port: 0,
        max_kv_bytes: limit,
        ..Default::default()
    };
    let server = start(m.clone(), concepts, &options, false).unwrap_or_else(|e| panic!("{e}"));
    let addr = server.addr().to_string();
    let ask = |max_tokens: usize, n: usize| {
        let body = format!(r#"{{"prompt":"The sea is","max_tokens":{max_tokens},"n":{n},"temperature":0}}"#);
        common::http(&addr, "POST", "/v1/completions", &body)
    };

    // A few prompt tokens + 8 fit in 64 positions.
    let (status, answer) = ask(8, 1);
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(v["usage"]["completion_tokens"], 8, "{answer}");

    // 100 new tokens cannot fit, nor can three samples of 30 (each reserves its own room).
    for (max_tokens, n) in [(100, 1), (30, 3)] {
        let (status, answer) = ask(max_tokens, n);
        assert_eq!(status, 400, "max_tokens {max_tokens}, n {n}: {answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(v["error"]["code"], "kv_cache_limit", "{answer}");
        assert_eq!(v["error"]["param"], "max_tokens", "{answer}");
    }

    // A refusal leaves the server serving.
    let (status, answer) = ask(8, 1);
    assert_eq!(status, 200, "{answer}");

    server.stop();
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the port still accepts connections after stop"
    );
}

#[test]
fn a_request_for_another_model_gets_404_unless_it_names_an_alias_or_the_server_takes_any_name() {
    let Some(path) = common::demo_model() else { return };
    let m = Arc::new(LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}")));
    let id = act_studio::serve::model_id(&m);
    let ask = |addr: &str, model: Option<&str>| {
        let field = model.map_or(String::new(), |n| format!(r#""model":"{n}","#));
        let body = format!(r#"{{{field}"prompt":"The sea is","max_tokens":2,"temperature":0}}"#);
        common::http(addr, "POST", "/v1/completions", &body)
    };
    let options = ServeOptions {
        port: 0,
        aliases: vec!["demo".into()],
        ..Default::default()
    };
    let concepts = ConceptSet::load(&m, &[]).unwrap_or_else(|e| panic!("{e}"));
    let server = start(m.clone(), concepts, &options, false).unwrap_or_else(|e| panic!("{e}"));
    let addr = server.addr().to_string();
    let (status, listed) = common::http(&addr, "GET", "/v1/models", "");
    assert_eq!(status, 200, "{listed}");
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap_or_else(|e| panic!("{e}: {listed}"));
    let ids: Vec<&str> = v["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [id.as_str(), "demo"], "{listed}");
    for name in [Some(id.as_str()), Some("demo"), None] {
        let (status, answer) = ask(&addr, name);
        assert_eq!(status, 200, "model {name:?}: {answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(v["model"], id.as_str(), "answers carry the id: {answer}");
    }
    let (status, answer) = ask(&addr, Some("gpt-4o-mini"));
    assert_eq!(status, 404, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(v["error"]["code"], "model_not_found", "{answer}");
    assert_eq!(v["error"]["param"], "model", "{answer}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("gpt-4o-mini") && message.contains(&id) && message.contains("demo"),
        "the message names the model asked for and the ones served: {message}"
    );
    // The server still answers.
    assert_eq!(ask(&addr, None).0, 200);
    server.stop();

    let options = ServeOptions {
        port: 0,
        any_model: true,
        ..Default::default()
    };
    let concepts = ConceptSet::load(&m, &[]).unwrap_or_else(|e| panic!("{e}"));
    let server = start(m, concepts, &options, false).unwrap_or_else(|e| panic!("{e}"));
    let addr = server.addr().to_string();
    let (status, answer) = ask(&addr, Some("gpt-4o-mini"));
    assert_eq!(status, 200, "any name is taken with any_model: {answer}");
    server.stop();
}
