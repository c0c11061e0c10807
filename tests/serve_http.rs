//! `act-studio serve` over HTTP on the demo model: a request whose samples could outgrow the
//! server's KV cache limit is refused with 400 `kv_cache_limit` (naming `max_tokens`), one
//! that fits is served, and the server stops on request.

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
