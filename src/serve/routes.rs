//! The HTTP routes: each handler checks the key, parses the body, builds a
//! [`CompletionJob`] and hands it to the [`BatchEngine`]; the answer is gathered (or streamed
//! as server-sent events) from the job's events. No model work runs on the async threads.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::mpsc;

use crate::pipeline::batch_engine::{BatchEngine, MAX_QUEUED, SubmitError};
use crate::pipeline::completion::{
    CompletionError, CompletionEvent, CompletionJob, CompletionSink, ConceptSet,
};
use crate::runtime::LoadedModel;
use crate::runtime::tokenizer::ChatMessage;

use super::api_error::ApiError;
use super::api_request::{
    ChatBody, CompletionBody, PromptIn, Settings, chat_role, message_text, parse, prompt_in, settings,
};
use super::responses::{Collector, Endpoint, Envelope};

/// What every handler shares.
pub struct ServerState {
    pub model: Arc<LoadedModel>,
    /// The names `/v1/models` lists: the model's id (which answers carry) first, then its
    /// aliases. A request's `model` must be one of them unless `any_model`.
    pub model_names: Vec<String>,
    pub any_model: bool,
    pub concepts: ConceptSet,
    pub engine: BatchEngine,
    pub api_key: Option<String>,
    pub next_id: AtomicU64,
}

type Shared = Arc<ServerState>;

/// The router over `state`, with bodies limited to `max_body_bytes`.
pub fn router(state: Shared, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/concepts", get(concepts))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/health", get(health))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Refuses a request without the server's key (`Authorization: Bearer KEY`), when it has one.
fn authorize(st: &ServerState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &st.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same_key(g.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::invalid(None, "incorrect API key provided")
            .with_status(StatusCode::UNAUTHORIZED)
            .with_code("invalid_api_key")),
        None => Err(ApiError::invalid(
            None,
            "no API key provided: send it as `Authorization: Bearer KEY`",
        )
        .with_status(StatusCode::UNAUTHORIZED)
        .with_code("invalid_api_key")),
    }
}

/// Key comparison whose time does not depend on where the first wrong byte is.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Liveness, the rows being decoded (`running`: a client that went away leaves none), the
/// jobs waiting for a row (`queued`), the rows dropped because their client went away
/// (`abandoned`, since the start), and the prompt cache (prompts and bytes held, prompt
/// tokens it gave since the start).
async fn health(State(st): State<Shared>) -> Json<serde_json::Value> {
    let cache = st.engine.prompt_cache();
    Json(json!({
        "status": "ok",
        "running": st.engine.running(),
        "queued": st.engine.queued(),
        "abandoned": st.engine.abandoned(),
        "prompt_cache": {
            "prompts": cache.prompts.load(Ordering::Relaxed),
            "bytes": cache.bytes.load(Ordering::Relaxed),
            "reused_tokens": cache.reused_tokens.load(Ordering::Relaxed),
        },
    }))
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::invalid(
        None,
        format!(
            "no endpoint {method} {} (this server has GET /v1/models, GET /v1/concepts, \
             POST /v1/chat/completions, POST /v1/completions, GET /health)",
            uri.path()
        ),
    )
    .with_status(StatusCode::NOT_FOUND)
}

async fn models(State(st): State<Shared>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&st, &headers)?;
    let data: Vec<serde_json::Value> = st
        .model_names
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "act-studio"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// The id answers carry.
fn model_id(st: &ServerState) -> String {
    st.model_names.first().cloned().unwrap_or_default()
}

/// Refuses a request for a model this server does not serve (OpenAI's 404
/// `model_not_found`), unless the server takes any name. A request without `model` gets the
/// served one.
fn check_model(st: &ServerState, asked: Option<&str>) -> Result<(), ApiError> {
    match asked {
        Some(name) if !st.any_model && !st.model_names.iter().any(|n| n == name) => {
            let served: Vec<String> = st.model_names.iter().map(|n| format!("`{n}`")).collect();
            Err(ApiError::invalid(
                Some("model"),
                format!(
                    "the model `{}` is not served here; this server serves {} (GET /v1/models)",
                    name.chars().take(200).collect::<String>(),
                    served.join(", ")
                ),
            )
            .with_status(StatusCode::NOT_FOUND)
            .with_code("model_not_found"))
        }
        _ => Ok(()),
    }
}

async fn concepts(State(st): State<Shared>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&st, &headers)?;
    let data: Vec<serde_json::Value> = st
        .concepts
        .concepts()
        .iter()
        .map(|maps| {
            let m = maps.meta();
            json!({
                "name": m.concept,
                "object": "concept",
                "method": m.method.name(),
                "support": m.support,
                "pooling": m.pooling,
                "estimation": m.estimation,
                "hook_points": m.hook_points.iter().map(|h| h.name.clone()).collect::<Vec<_>>(),
                "datasets": {"source": m.source, "target": m.target},
                "fingerprint": m.fingerprint,
                "data_sha256": m.data_sha256,
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn chat_completions(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(st, headers, body, run_chat).await
}

async fn completions(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(st, headers, body, run_completion).await
}

/// How an endpoint turns a request into a queued job.
type Prepare = fn(&Shared, &HeaderMap, Result<Bytes, BytesRejection>) -> Result<Running, ApiError>;

/// Prepares the request off the async threads (parsing, chat template and tokenizing run on
/// tokio's blocking pool), then answers it.
async fn respond(
    st: Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    prepare: Prepare,
) -> Response {
    match tokio::task::spawn_blocking(move || prepare(&st, &headers, body)).await {
        Ok(Ok(r)) => answer(r).await,
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::invalid(None, "internal error while reading the request")
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response(),
    }
}

/// A job queued on the engine, with what its answer needs.
struct Running {
    envelope: Envelope,
    settings: Settings,
    prompt_tokens: usize,
    events: mpsc::UnboundedReceiver<CompletionEvent>,
}

/// The body, or the OpenAI-style error for a body that could not be read (413 over the limit).
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than this server accepts".to_string()
        } else {
            format!("the request body could not be read: {}", r.body_text())
        };
        ApiError::invalid(None, message).with_status(status)
    })
}

fn random_seed(st: &ServerState) -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ st
        .next_id
        .load(Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn run_chat(
    st: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Running, ApiError> {
    authorize(st, headers)?;
    let body: ChatBody = parse(&body_bytes(body)?)?;
    check_model(st, body.common.model.as_deref())?;
    let s = settings(&body.common, Endpoint::Chat, random_seed(st))?;
    if body.messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "messages is empty"));
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for m in &body.messages {
        messages.push(ChatMessage {
            role: chat_role(&m.role)?.into(),
            content: message_text(m)?,
        });
    }
    let tok = &st.model.tokenizer;
    let text = tok
        .render_chat(&messages, true)
        .map_err(|e| ApiError::invalid(Some("messages"), format!("the chat template failed: {e}")))?;
    let ids = tok
        .encode(&text)
        .map_err(|e| ApiError::invalid(Some("messages"), format!("tokenizing the messages failed: {e}")))?;
    queue(st, Endpoint::Chat, ids, s)
}

fn run_completion(
    st: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Running, ApiError> {
    authorize(st, headers)?;
    let body: CompletionBody = parse(&body_bytes(body)?)?;
    check_model(st, body.common.model.as_deref())?;
    let s = settings(&body.common, Endpoint::Completion, random_seed(st))?;
    let ids =
        match prompt_in(&body.prompt)? {
            PromptIn::Text(t) => st.model.tokenizer.encode(&t).map_err(|e| {
                ApiError::invalid(Some("prompt"), format!("tokenizing the prompt failed: {e}"))
            })?,
            PromptIn::Tokens(ids) => {
                let vocab = st.model.config().vocab_size;
                if let Some(t) = ids.iter().find(|&&t| t as usize >= vocab) {
                    return Err(ApiError::invalid(
                        Some("prompt"),
                        format!("token id {t} is outside the vocabulary ({vocab})"),
                    ));
                }
                ids
            }
        };
    if ids.is_empty() {
        return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
    }
    queue(st, Endpoint::Completion, ids, s)
}

/// Passes a job's events into a channel the answer reads; a dropped reader (the client went
/// away) ends the job.
struct ChannelSink(mpsc::UnboundedSender<CompletionEvent>);

impl CompletionSink for ChannelSink {
    fn send(&mut self, event: CompletionEvent) -> bool {
        self.0.send(event).is_ok()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// A gathered (not streamed) answer's sink: each piece of text waits on the engine's thread and
/// goes on with the next event that is not text (its sample's end), so the answer's handler
/// wakes once per sample, not once per token. Eight gathered rows had woken the async runtime
/// eight times a decode step, each wake taking one of the model's cores for a moment.
struct GatherSink {
    tx: mpsc::UnboundedSender<CompletionEvent>,
    held: Vec<CompletionEvent>,
}

impl CompletionSink for GatherSink {
    fn send(&mut self, event: CompletionEvent) -> bool {
        if matches!(event, CompletionEvent::Text { .. }) {
            self.held.push(event);
            return !self.tx.is_closed();
        }
        for e in self.held.drain(..) {
            if self.tx.send(e).is_err() {
                return false;
            }
        }
        self.tx.send(event).is_ok()
    }
    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Builds the job (steering plan, token budget, checks) and queues it.
fn queue(st: &Shared, endpoint: Endpoint, ids: Vec<u32>, s: Settings) -> Result<Running, ApiError> {
    let limit = st.model.config().max_position;
    super::api_request::check_logit_bias(&s, st.model.config().vocab_size)?;
    let param = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Completion => "prompt",
    };
    let max_tokens = match s.max_tokens {
        Some(v) => v,
        // Up to the end of the context, as the OpenAI API does when no budget is given.
        None if ids.len() < limit => limit - ids.len(),
        None => {
            return Err(ApiError::from(CompletionError::ContextLength {
                prompt: ids.len(),
                max_tokens: 1,
                limit,
            }));
        }
    };
    let steering = st.concepts.plan(&s.steering, s.scope)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let job = CompletionJob {
        prompt: ids,
        n: s.n,
        max_tokens,
        sampling: s.sampling,
        logit_bias: s.logit_bias.clone(),
        stop: s.stop.clone(),
        steering,
        logprobs: s.logprobs,
        echo: s.echo,
        sink: if s.stream {
            Box::new(ChannelSink(tx))
        } else {
            Box::new(GatherSink { tx, held: Vec::new() })
        },
    };
    let prompt_tokens = job.prompt.len();
    st.engine.submit(job).map_err(|e| match e {
        SubmitError::Refused(e, _) => {
            let mut e = ApiError::from(e);
            if e.param == Some("messages") {
                e.param = Some(param);
            }
            e
        }
        SubmitError::Busy(_) => ApiError::invalid(
            None,
            format!("{MAX_QUEUED} requests are waiting already: try again shortly"),
        )
        .with_status(StatusCode::TOO_MANY_REQUESTS)
        .with_code("server_busy"),
        SubmitError::Stopped(_) => ApiError::invalid(None, "the model thread has stopped")
            .with_status(StatusCode::SERVICE_UNAVAILABLE),
    })?;
    let n = st.next_id.fetch_add(1, Ordering::Relaxed);
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completion => "cmpl",
    };
    Ok(Running {
        envelope: Envelope {
            endpoint,
            id: format!("{prefix}-{n:012x}"),
            created: unix_now(),
            model: model_id(st),
        },
        settings: s,
        prompt_tokens,
        events: rx,
    })
}

/// The answer of a queued job: gathered, or streamed.
async fn answer(r: Running) -> Response {
    if r.settings.stream {
        return stream(r);
    }
    let Running {
        envelope,
        settings,
        prompt_tokens,
        mut events,
    } = r;
    let mut c = Collector::new(settings.n, prompt_tokens, settings.logprobs.is_some());
    while let Some(e) = events.recv().await {
        c.add(&e);
    }
    if let Some(m) = c.failed {
        return ApiError::invalid(None, m)
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response();
    }
    if !c.complete() {
        return ApiError::invalid(None, "the generation ended before every sample finished")
            .with_status(StatusCode::INTERNAL_SERVER_ERROR)
            .into_response();
    }
    Json(envelope.whole(&c.choices, c.usage)).into_response()
}

/// Server-sent events: one chunk per piece of text, a finish chunk per sample, the usage
/// chunk when asked for, then `data: [DONE]`. The client going away drops the event stream,
/// which closes the job's channel and ends its rows at the next decode step.
fn stream(r: Running) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let Running {
            envelope,
            settings,
            prompt_tokens,
            mut events,
        } = r;
        let send = |v: serde_json::Value| {
            let tx = tx.clone();
            async move { tx.send(Ok(Event::default().data(v.to_string()))).await.is_ok() }
        };
        if envelope.endpoint == Endpoint::Chat {
            for i in 0..settings.n {
                if !send(envelope.chunk(i, Some(""), None, None, true)).await {
                    return;
                }
            }
        }
        let mut c = Collector::new(settings.n, prompt_tokens, settings.logprobs.is_some());
        while let Some(e) = events.recv().await {
            let v = match &e {
                CompletionEvent::Text {
                    index,
                    text,
                    logprobs,
                } => {
                    let lp = settings
                        .logprobs
                        .map(|_| (logprobs.as_slice(), c.token_chars(*index)));
                    envelope.chunk(*index, Some(text), lp, None, false)
                }
                CompletionEvent::Finished { index, reason, .. } => {
                    envelope.chunk(*index, None, None, Some(*reason), false)
                }
                CompletionEvent::Failed(m) => ApiError::invalid(None, m.clone())
                    .with_status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(),
                CompletionEvent::PromptDone { .. } => {
                    c.add(&e);
                    continue;
                }
            };
            c.add(&e);
            if !send(v).await {
                return;
            }
        }
        if c.failed.is_some() {
            return;
        }
        if settings.include_usage && !send(envelope.usage_chunk(c.usage)).await {
            return;
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::completion::FinishReason;

    fn text(index: usize, t: &str) -> CompletionEvent {
        CompletionEvent::Text {
            index,
            text: t.to_string(),
            logprobs: Vec::new(),
        }
    }

    /// Text waits until the next event that is not text, then everything arrives in the order
    /// sent; a gone reader makes every send `false`.
    #[test]
    fn a_gathered_answer_gets_its_text_with_the_samples_end_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut sink = GatherSink { tx, held: Vec::new() };
        assert!(sink.send(CompletionEvent::PromptDone { cached: 3 }));
        assert!(matches!(
            rx.try_recv(),
            Ok(CompletionEvent::PromptDone { cached: 3 })
        ));
        assert!(sink.send(text(0, "a")));
        assert!(sink.send(text(1, "b")));
        assert!(sink.send(text(0, "c")));
        assert!(rx.try_recv().is_err(), "text is held until a sample ends");
        let end = |index| CompletionEvent::Finished {
            index,
            reason: FinishReason::Length,
            tokens: 2,
        };
        assert!(sink.send(end(0)));
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| match e {
                CompletionEvent::Text { index, text, .. } => format!("{index}:{text}"),
                CompletionEvent::Finished { index, .. } => format!("end {index}"),
                _ => "other".to_string(),
            })
            .collect();
        assert_eq!(got, ["0:a", "1:b", "0:c", "end 0"]);
        assert!(sink.send(text(1, "d")));
        drop(rx);
        assert!(sink.is_closed());
        assert!(!sink.send(text(1, "e")), "a gone reader ends the job");
        assert!(!sink.send(end(1)));
    }
}
