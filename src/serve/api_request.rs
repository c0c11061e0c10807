//! Request bodies of `/v1/chat/completions` and `/v1/completions` (the OpenAI API's fields
//! that this server honours, plus `steering` and llama.cpp's `top_k` and `repeat_penalty`),
//! parsed and turned into a
//! [`CompletionJob`]'s settings. Fields the server does not know are ignored, as OpenAI-style
//! servers do; fields it knows but cannot honour (`suffix`, `best_of`, `tools`, and `echo` on
//! the chat endpoint, which has none) are refused rather than silently dropped.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::runtime::sampling::SamplingConfig;
use crate::transport::TokenScope;

use super::api_error::ApiError;
use super::responses::Endpoint;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonFields {
    /// The model name: the served model's id or an alias (any name with `--any-model`);
    /// absent, the served model.
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    /// The chat API's newer name for `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Not in the OpenAI API; as llama.cpp's server (0 = off, the default).
    pub top_k: Option<u64>,
    pub seed: Option<i64>,
    /// −2 … 2: lowers a token's logit by this much per time it was generated before.
    pub frequency_penalty: Option<f64>,
    /// −2 … 2: lowers the logit of every token generated before by this much.
    pub presence_penalty: Option<f64>,
    /// Token id (as a string) → bias added to its logit, −100 … 100.
    pub logit_bias: Option<BTreeMap<String, f64>>,
    /// Not in the OpenAI API; as llama.cpp's server: divides positive (multiplies negative)
    /// logits of the tokens of the prompt and the text so far (1 = off).
    pub repeat_penalty: Option<f64>,
    pub stop: Option<StopField>,
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Concept name → λ (absent: unsteered).
    pub steering: Option<BTreeMap<String, f64>>,
    /// Which tokens are steered: `all` (default), `last`, `prompt` or `generated`.
    pub steering_scope: Option<String>,
    /// Chat: `true` to report the generated tokens' log-probabilities; completions: how many
    /// alternatives to report per token (0 … 20) beside the chosen one.
    pub logprobs: Option<serde_json::Value>,
    /// Chat: alternatives per token (0 … 20), with `logprobs: true`.
    pub top_logprobs: Option<serde_json::Value>,
    /// Completions: the answer's text (and log-probabilities) start with the prompt's.
    pub echo: Option<bool>,
    // Known but not supported: refused when set.
    pub suffix: Option<serde_json::Value>,
    pub best_of: Option<u64>,
    pub tools: Option<serde_json::Value>,
}

/// One chat message; `content` is a string or a list of `{"type": "text", "text": …}` parts.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<serde_json::Value>,
}

/// `/v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatBody {
    pub messages: Vec<ChatMessageIn>,
    #[serde(flatten)]
    pub common: CommonFields,
}

/// `/v1/completions`: `prompt` is a string, a list of one string, or a list of token ids.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionBody {
    pub prompt: serde_json::Value,
    #[serde(flatten)]
    pub common: CommonFields,
}

/// A completion prompt as given.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptIn {
    Text(String),
    Tokens(Vec<u32>),
}

/// Parses a JSON body, mapping serde's message to a 400.
pub fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(
            None,
            format!("the request body is not valid JSON for this endpoint: {e}"),
        )
    })
}

/// A chat message's text.
pub fn message_text(m: &ChatMessageIn) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid(
            Some("messages"),
            "a message's content must be a string or a list of text parts",
        )
    };
    match &m.content {
        None | Some(serde_json::Value::Null) => Ok(String::new()),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(|t| t.as_str()),
                    p.get("text").and_then(|t| t.as_str()),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => return Err(bad()),
                }
            }
            Ok(out)
        }
        Some(_) => Err(bad()),
    }
}

/// The chat role a message maps to in the model's template (`developer` is OpenAI's newer
/// name for `system`).
pub fn chat_role(role: &str) -> Result<&'static str, ApiError> {
    match role {
        "system" | "developer" => Ok("system"),
        "user" => Ok("user"),
        "assistant" => Ok("assistant"),
        other => Err(ApiError::invalid(
            Some("messages"),
            format!("unsupported message role `{other}` (system, developer, user, assistant)"),
        )),
    }
}

/// A completion body's prompt.
pub fn prompt_in(v: &serde_json::Value) -> Result<PromptIn, ApiError> {
    let bad = || {
        ApiError::invalid(
            Some("prompt"),
            "prompt must be a string, a list of one string, or a list of token ids",
        )
    };
    match v {
        serde_json::Value::String(s) => Ok(PromptIn::Text(s.clone())),
        serde_json::Value::Array(items) => match items.as_slice() {
            [serde_json::Value::String(s)] => Ok(PromptIn::Text(s.clone())),
            [] => Err(bad()),
            ids => ids
                .iter()
                .map(|x| x.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(bad))
                .collect::<Result<Vec<u32>, _>>()
                .map(PromptIn::Tokens),
        },
        _ => Err(bad()),
    }
}

/// The settings of a request, checked for type and range (the model-dependent checks —
/// context length, concept names — come later).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingConfig,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub steering: Vec<(String, f32)>,
    pub scope: TokenScope,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// Completions: each choice starts with the prompt's text (and, with `logprobs`, the
    /// prompt tokens' log-probabilities); `max_tokens` may then be 0.
    pub echo: bool,
    /// Token id → bias added to its logit before each pick (ids not yet checked against the
    /// vocabulary: [`check_logit_bias`]).
    pub logit_bias: std::sync::Arc<[(u32, f32)]>,
}

/// The largest |bias| of `logit_bias`, as OpenAI's API.
pub const MAX_LOGIT_BIAS: f64 = 100.0;

/// Refuses a `logit_bias` token id at or past `vocab`.
pub fn check_logit_bias(s: &Settings, vocab: usize) -> Result<(), ApiError> {
    match s.logit_bias.iter().find(|(t, _)| *t as usize >= vocab) {
        Some((t, _)) => Err(ApiError::invalid(
            Some("logit_bias"),
            format!(
                "logit_bias: token id {t} is outside the vocabulary (0 … {})",
                vocab.saturating_sub(1)
            ),
        )),
        None => Ok(()),
    }
}

/// `logit_bias`'s entries as (token id, bias), checked for form and range.
fn logit_bias(c: &CommonFields) -> Result<std::sync::Arc<[(u32, f32)]>, ApiError> {
    let mut out = Vec::new();
    for (key, &bias) in c.logit_bias.iter().flatten() {
        let Ok(id) = key.trim().parse::<u32>() else {
            return Err(ApiError::invalid(
                Some("logit_bias"),
                format!("logit_bias: `{key}` is not a token id (a whole number)"),
            ));
        };
        if !bias.is_finite() || bias.abs() > MAX_LOGIT_BIAS {
            return Err(ApiError::invalid(
                Some("logit_bias"),
                format!(
                    "logit_bias: the bias {bias} of token {id} is outside −{MAX_LOGIT_BIAS} … {MAX_LOGIT_BIAS}"
                ),
            ));
        }
        out.push((id, bias as f32));
    }
    Ok(out.into())
}

/// The `logprobs` / `top_logprobs` fields as the endpoint reads them: the chat API's
/// `logprobs: true` with `top_logprobs: k`, or the completions API's `logprobs: k`.
fn logprobs_setting(c: &CommonFields, endpoint: Endpoint) -> Result<Option<usize>, ApiError> {
    use serde_json::Value;
    let max = crate::pipeline::completion::MAX_TOP_LOGPROBS;
    let count = |v: &Value, param: &'static str| -> Result<usize, ApiError> {
        v.as_u64()
            .and_then(|k| usize::try_from(k).ok())
            .filter(|&k| k <= max)
            .ok_or_else(|| {
                ApiError::invalid(Some(param), format!("{param} must be an integer from 0 to {max}"))
            })
    };
    let top = c.top_logprobs.as_ref().filter(|v| !v.is_null());
    match endpoint {
        Endpoint::Chat => {
            let on = match &c.logprobs {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(_) => {
                    return Err(ApiError::invalid(
                        Some("logprobs"),
                        "logprobs must be true or false",
                    ));
                }
            };
            match (on, top) {
                (false, None) => Ok(None),
                (false, Some(_)) => Err(ApiError::invalid(
                    Some("top_logprobs"),
                    "top_logprobs needs logprobs set to true",
                )),
                (true, None) => Ok(Some(0)),
                (true, Some(k)) => count(k, "top_logprobs").map(Some),
            }
        }
        Endpoint::Completion => {
            if top.is_some() {
                return Err(ApiError::invalid(
                    Some("top_logprobs"),
                    "the completions API takes the number of alternatives in logprobs",
                ));
            }
            match &c.logprobs {
                None | Some(Value::Null) => Ok(None),
                Some(k) => count(k, "logprobs").map(Some),
            }
        }
    }
}

/// Reads the shared fields as `endpoint` understands them; `random_seed` is used when the
/// request gives none.
pub fn settings(c: &CommonFields, endpoint: Endpoint, random_seed: u64) -> Result<Settings, ApiError> {
    let unsupported = |param: &'static str| {
        Err(ApiError::invalid(
            Some(param),
            format!("`{param}` is not supported by this server"),
        ))
    };
    let logprobs = logprobs_setting(c, endpoint)?;
    let echo = c.echo == Some(true);
    if echo && endpoint == Endpoint::Chat {
        return unsupported("echo");
    }
    if c.suffix.as_ref().is_some_and(|v| !v.is_null()) {
        return unsupported("suffix");
    }
    if c.best_of.is_some_and(|b| b > 1) {
        return unsupported("best_of");
    }
    if c.tools.as_ref().is_some_and(|v| !v.is_null()) {
        return unsupported("tools");
    }
    let max_tokens = match c.max_completion_tokens.or(c.max_tokens) {
        Some(0) if !echo => {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                "max_tokens must be at least 1 (0 only with echo, to score the prompt)",
            ));
        }
        Some(v) => Some(usize::try_from(v).unwrap_or(usize::MAX)),
        None => None,
    };
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            Some("temperature"),
            format!("temperature {temperature} is outside 0 … 2"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    let sampling = SamplingConfig {
        // Below the runtime's smallest temperature sampling is greedy in effect.
        temperature: if temperature < f64::from(crate::runtime::sampling::MIN_TEMPERATURE) {
            0.0
        } else {
            temperature as f32
        },
        top_k: c.top_k.map_or(0, |k| usize::try_from(k).unwrap_or(usize::MAX)),
        top_p: top_p as f32,
        repetition_penalty: c.repeat_penalty.unwrap_or(1.0) as f32,
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0) as f32,
        presence_penalty: c.presence_penalty.unwrap_or(0.0) as f32,
        seed: c.seed.map_or(random_seed, |s| s as u64),
    };
    use crate::runtime::sampling as smp;
    smp::check_top_p(sampling.top_p).map_err(|m| ApiError::invalid(Some("top_p"), m))?;
    smp::check_repetition_penalty(sampling.repetition_penalty)
        .map_err(|m| ApiError::invalid(Some("repeat_penalty"), m))?;
    smp::check_openai_penalty("frequency_penalty", sampling.frequency_penalty)
        .map_err(|m| ApiError::invalid(Some("frequency_penalty"), m))?;
    smp::check_openai_penalty("presence_penalty", sampling.presence_penalty)
        .map_err(|m| ApiError::invalid(Some("presence_penalty"), m))?;
    let stop = match &c.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) => v.clone(),
    };
    let n = c.n.unwrap_or(1);
    let max_n = crate::pipeline::completion::MAX_SAMPLES as u64;
    if !(1..=max_n).contains(&n) {
        return Err(ApiError::invalid(
            Some("n"),
            format!("n = {n} is outside 1 … {max_n}"),
        ));
    }
    let mut steering = Vec::new();
    for (name, &v) in c.steering.iter().flatten() {
        // JSON has no NaN or infinity, but a huge number parses to one.
        if !v.is_finite() || v.abs() > f64::from(crate::transport::LAMBDA_LIMIT) {
            return Err(ApiError::invalid(
                Some("steering"),
                format!(
                    "steering `{name}`: λ = {v} is not a number within ±{}",
                    crate::transport::LAMBDA_LIMIT
                ),
            )
            .with_code("invalid_lambda"));
        }
        steering.push((name.clone(), v as f32));
    }
    let scope = match &c.steering_scope {
        None => TokenScope::All,
        Some(s) => s
            .parse()
            .map_err(|m: String| ApiError::invalid(Some("steering_scope"), m))?,
    };
    Ok(Settings {
        max_tokens,
        sampling,
        stop,
        n: n as usize,
        stream: c.stream,
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        steering,
        scope,
        logprobs,
        echo,
        logit_bias: logit_bias(c)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Settings, ApiError> {
        let b: ChatBody = parse(body.as_bytes())?;
        settings(&b.common, Endpoint::Chat, 7)
    }

    #[test]
    fn defaults_are_the_openai_apis() {
        let s = chat(r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(s.max_tokens, None);
        assert_eq!(s.sampling.temperature, 1.0);
        assert_eq!(s.sampling.top_p, 1.0);
        assert_eq!(s.sampling.top_k, 0);
        assert_eq!(s.sampling.seed, 7);
        assert_eq!((s.n, s.stream, s.include_usage), (1, false, false));
        assert!(s.steering.is_empty() && s.stop.is_empty());
        assert_eq!(s.logprobs, None);
    }

    #[test]
    fn logprobs_are_read_as_each_endpoint_defines_them() {
        let lp = |body: &str| chat(body).map(|s| s.logprobs);
        assert_eq!(lp(r#"{"messages":[],"logprobs":false}"#).unwrap(), None);
        assert_eq!(lp(r#"{"messages":[],"logprobs":true}"#).unwrap(), Some(0));
        assert_eq!(
            lp(r#"{"messages":[],"logprobs":true,"top_logprobs":20}"#).unwrap(),
            Some(20)
        );
        let cmpl = |body: &str| {
            let b: CompletionBody = parse(body.as_bytes())?;
            settings(&b.common, Endpoint::Completion, 7).map(|s| s.logprobs)
        };
        assert_eq!(cmpl(r#"{"prompt":"a"}"#).unwrap(), None);
        assert_eq!(cmpl(r#"{"prompt":"a","logprobs":null}"#).unwrap(), None);
        assert_eq!(cmpl(r#"{"prompt":"a","logprobs":0}"#).unwrap(), Some(0));
        assert_eq!(cmpl(r#"{"prompt":"a","logprobs":5}"#).unwrap(), Some(5));
        for (body, param) in [
            (r#"{"prompt":"a","logprobs":true}"#, "logprobs"),
            (r#"{"prompt":"a","logprobs":21}"#, "logprobs"),
            (r#"{"prompt":"a","logprobs":1,"top_logprobs":1}"#, "top_logprobs"),
        ] {
            let e = cmpl(body).unwrap_err();
            assert_eq!(e.param, Some(param), "{body}: {}", e.message);
        }
    }

    /// `echo` belongs to the completions API: there it may come with `max_tokens` 0 (scoring
    /// the prompt); the chat API has none, and `max_tokens` 0 without it is refused.
    #[test]
    fn echo_is_a_completions_field_that_allows_max_tokens_0() {
        let cmpl = |body: &str| {
            let b: CompletionBody = parse(body.as_bytes())?;
            settings(&b.common, Endpoint::Completion, 7)
        };
        let s = cmpl(r#"{"prompt":"a","echo":true,"max_tokens":0,"logprobs":1}"#).unwrap();
        assert_eq!((s.echo, s.max_tokens, s.logprobs), (true, Some(0), Some(1)));
        assert!(!cmpl(r#"{"prompt":"a","echo":false}"#).unwrap().echo);
        assert!(!cmpl(r#"{"prompt":"a"}"#).unwrap().echo);
        let e = cmpl(r#"{"prompt":"a","max_tokens":0}"#).unwrap_err();
        assert_eq!(e.param, Some("max_tokens"), "{}", e.message);
        let e = chat(r#"{"messages":[],"echo":true}"#).unwrap_err();
        assert_eq!(e.param, Some("echo"), "{}", e.message);
    }

    #[test]
    fn fields_are_read_and_checked() {
        let s = chat(
            r#"{"messages":[],"max_tokens":5,"temperature":0,"seed":3,"stop":"\n","n":2,
                "stream":true,"stream_options":{"include_usage":true},
                "steering":{"b":0.5,"a":-1},"steering_scope":"generated","user":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(s.max_tokens, Some(5));
        assert_eq!(s.sampling.temperature, 0.0);
        assert_eq!(s.sampling.seed, 3);
        assert_eq!(s.stop, vec!["\n".to_string()]);
        assert_eq!((s.n, s.stream, s.include_usage), (2, true, true));
        assert_eq!(s.steering, vec![("a".into(), -1.0), ("b".into(), 0.5)]);
        assert_eq!(s.scope, TokenScope::GeneratedOnly);
        for (body, param) in [
            (r#"{"messages":[],"temperature":3}"#, "temperature"),
            (r#"{"messages":[],"top_p":0}"#, "top_p"),
            (r#"{"messages":[],"n":0}"#, "n"),
            (r#"{"messages":[],"max_tokens":0}"#, "max_tokens"),
            (r#"{"messages":[],"steering":{"a":2.5}}"#, "steering"),
            (r#"{"messages":[],"steering":{"a":1e308}}"#, "steering"),
            (r#"{"messages":[],"steering_scope":"some"}"#, "steering_scope"),
            (r#"{"messages":[],"logprobs":1}"#, "logprobs"),
            (r#"{"messages":[],"top_logprobs":2}"#, "top_logprobs"),
            (
                r#"{"messages":[],"logprobs":true,"top_logprobs":21}"#,
                "top_logprobs",
            ),
            (
                r#"{"messages":[],"logprobs":true,"top_logprobs":-1}"#,
                "top_logprobs",
            ),
        ] {
            let e = chat(body).unwrap_err();
            assert_eq!(e.param, Some(param), "{body}: {}", e.message);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
        for body in [
            "{",
            r#"{"messages":"hi"}"#,
            r#"{"messages":[],"steering":{"a":"strong"}}"#,
            r#"{"messages":[],"steering":{"a":1e999}}"#,
            r#"{"messages":[],"max_tokens":-1}"#,
        ] {
            let e = chat(body).unwrap_err();
            assert!(e.message.contains("not valid JSON"), "{body}: {}", e.message);
        }
    }

    #[test]
    fn prompts_and_messages() {
        assert_eq!(
            prompt_in(&serde_json::json!("a")).unwrap(),
            PromptIn::Text("a".into())
        );
        assert_eq!(
            prompt_in(&serde_json::json!(["a"])).unwrap(),
            PromptIn::Text("a".into())
        );
        assert_eq!(
            prompt_in(&serde_json::json!([1, 2])).unwrap(),
            PromptIn::Tokens(vec![1, 2])
        );
        assert!(prompt_in(&serde_json::json!([])).is_err());
        assert!(prompt_in(&serde_json::json!(["a", "b"])).is_err());
        assert!(prompt_in(&serde_json::json!([-1])).is_err());
        assert!(prompt_in(&serde_json::json!({"a": 1})).is_err());
        let m: ChatMessageIn = serde_json::from_str(
            r#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(message_text(&m).unwrap(), "ab");
        let m: ChatMessageIn =
            serde_json::from_str(r#"{"role":"user","content":[{"type":"image_url"}]}"#).unwrap();
        assert!(message_text(&m).is_err());
        assert_eq!(chat_role("developer").unwrap(), "system");
        assert!(chat_role("tool").is_err());
    }
}
