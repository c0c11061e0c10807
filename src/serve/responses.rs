//! Answer bodies in the OpenAI API's shapes: whole completions, streamed chunks, and the
//! collector that turns a job's events into a whole answer.

use serde_json::{Value, json};

use crate::pipeline::completion::{CompletionEvent, FinishReason, TokenLogprob, TokenText};

/// Which endpoint an answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// What every answer of one request carries.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub endpoint: Endpoint,
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
}

impl Envelope {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn wrap(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": choices,
        })
    }

    /// A streamed chunk for choice `index`: new `text` and/or its finish reason, and the
    /// log-probabilities of its tokens when the request asked for them (`Some`; the
    /// completions shape needs the character offset of the choice's text so far). A chat
    /// stream's first chunk per choice (`role`) carries the assistant role.
    pub fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        logprobs: Option<(&[TokenLogprob], usize)>,
        finish: Option<FinishReason>,
        role: bool,
    ) -> Value {
        let finish = finish.map(|f| f.name());
        let lp = logprobs.map_or(Value::Null, |(l, offset)| self.logprobs_json(l, offset));
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish})
            }
            Endpoint::Completion => {
                json!({"index": index, "text": text.unwrap_or(""), "logprobs": lp, "finish_reason": finish})
            }
        };
        self.wrap(true, json!([choice]))
    }

    /// Log-probabilities in this endpoint's shape: the chat API's `{"content": [{token,
    /// logprob, bytes, top_logprobs}]}`, or the completions API's parallel lists `tokens`,
    /// `token_logprobs`, `top_logprobs` (`{token: logprob}` per position) and `text_offset`
    /// (characters from the start of the choice's text, counting from `offset`).
    pub fn logprobs_json(&self, l: &[TokenLogprob], offset: usize) -> Value {
        match self.endpoint {
            Endpoint::Chat => {
                let entry = |t: &TokenText, lp: f32| json!({"token": t.text, "logprob": finite(lp), "bytes": t.bytes});
                let content: Vec<Value> = l
                    .iter()
                    .map(|e| {
                        let mut v = entry(&e.token, e.logprob);
                        v["top_logprobs"] = e.top.iter().map(|(t, lp)| entry(t, *lp)).collect();
                        v
                    })
                    .collect();
                json!({"content": content})
            }
            Endpoint::Completion => {
                let mut at = offset;
                let mut offsets = Vec::with_capacity(l.len());
                for e in l {
                    offsets.push(at);
                    at += e.token.text.chars().count();
                }
                let top: Vec<Value> = l
                    .iter()
                    .map(|e| {
                        if e.logprob.is_nan() && e.top.is_empty() {
                            return Value::Null;
                        }
                        let m: serde_json::Map<String, Value> = e
                            .top
                            .iter()
                            .map(|(t, lp)| (t.text.clone(), finite(*lp)))
                            .collect();
                        Value::Object(m)
                    })
                    .collect();
                json!({
                    "tokens": l.iter().map(|e| e.token.text.as_str()).collect::<Vec<_>>(),
                    "token_logprobs": l.iter().map(|e| finite(e.logprob)).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }

    /// The last chunk of a stream that asked for usage: no choices, the counts.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let mut v = self.wrap(true, json!([]));
        v["usage"] = usage.json();
        v
    }

    /// A whole answer.
    pub fn whole(&self, choices: &[Choice], usage: Usage) -> Value {
        let list: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let finish = c.finish.map(|f| f.name());
                let lp = c
                    .logprobs
                    .as_ref()
                    .map_or(Value::Null, |l| self.logprobs_json(l, 0));
                match self.endpoint {
                    Endpoint::Chat => json!({
                        "index": index,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": lp,
                        "finish_reason": finish,
                    }),
                    Endpoint::Completion => json!({
                        "index": index,
                        "text": c.text,
                        "logprobs": lp,
                        "finish_reason": finish,
                    }),
                }
            })
            .collect();
        let mut v = self.wrap(false, Value::Array(list));
        v["usage"] = usage.json();
        v
    }
}

/// A log-probability as JSON can hold it: `−∞` (a token the model gives no mass) becomes
/// −9999, the OpenAI API's stand-in.
/// A log-probability as JSON: NaN (unknown: an echoed prompt's first token) is `null`, −∞
/// is −9999 as OpenAI sends it.
fn finite(lp: f32) -> Value {
    if lp.is_nan() {
        return Value::Null;
    }
    json!(if lp.is_finite() { lp } else { -9999.0 })
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens the prompt cache gave (OpenAI's `prompt_tokens_details.cached_tokens`).
    pub cached_tokens: usize,
}

impl Usage {
    fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// One sample's text and end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choice {
    pub text: String,
    pub finish: Option<FinishReason>,
    /// Its tokens' log-probabilities, when the request asked for them.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Characters of its tokens' texts so far (the completions API's `text_offset`).
    pub token_chars: usize,
}

/// Gathers a job's events into its choices and usage.
#[derive(Debug, Clone)]
pub struct Collector {
    pub choices: Vec<Choice>,
    pub usage: Usage,
    /// The job failed with this message.
    pub failed: Option<String>,
}

impl Collector {
    /// For `n` samples of a `prompt_tokens`-token prompt (with log-probabilities when
    /// `logprobs`).
    pub fn new(n: usize, prompt_tokens: usize, logprobs: bool) -> Self {
        let choice = Choice {
            logprobs: logprobs.then(Vec::new),
            ..Choice::default()
        };
        Self {
            choices: vec![choice; n],
            usage: Usage {
                prompt_tokens,
                completion_tokens: 0,
                cached_tokens: 0,
            },
            failed: None,
        }
    }

    /// Takes one event in.
    pub fn add(&mut self, e: &CompletionEvent) {
        match e {
            CompletionEvent::Text {
                index,
                text,
                logprobs,
            } => {
                if let Some(c) = self.choices.get_mut(*index) {
                    c.text.push_str(text);
                    c.token_chars += logprobs
                        .iter()
                        .map(|l| l.token.text.chars().count())
                        .sum::<usize>();
                    if let Some(all) = &mut c.logprobs {
                        all.extend(logprobs.iter().cloned());
                    }
                }
            }
            CompletionEvent::Finished {
                index,
                reason,
                tokens,
            } => {
                if let Some(c) = self.choices.get_mut(*index) {
                    c.finish = Some(*reason);
                }
                self.usage.completion_tokens += tokens;
            }
            CompletionEvent::Failed(m) => self.failed = Some(m.clone()),
            CompletionEvent::PromptDone { cached } => self.usage.cached_tokens = *cached,
        }
    }

    /// Characters of choice `index`'s tokens so far (0 for an unknown index).
    pub fn token_chars(&self, index: usize) -> usize {
        self.choices.get(index).map_or(0, |c| c.token_chars)
    }

    /// Whether every sample has ended.
    pub fn complete(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_have_the_openai_shapes() {
        let env = Envelope {
            endpoint: Endpoint::Chat,
            id: "chatcmpl-1".into(),
            created: 5,
            model: "m".into(),
        };
        let mut c = Collector::new(2, 3, false);
        c.add(&CompletionEvent::Text {
            index: 1,
            text: "b".into(),
            logprobs: Vec::new(),
        });
        c.add(&CompletionEvent::Finished {
            index: 1,
            reason: FinishReason::Length,
            tokens: 4,
        });
        assert!(!c.complete());
        c.add(&CompletionEvent::Finished {
            index: 0,
            reason: FinishReason::Stop,
            tokens: 1,
        });
        assert!(c.complete());
        let v = env.whole(&c.choices, c.usage);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][1]["message"]["content"], "b");
        assert_eq!(v["choices"][1]["finish_reason"], "length");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 8);
        let k = env.chunk(0, Some("x"), None, None, true);
        assert_eq!(k["object"], "chat.completion.chunk");
        assert_eq!(k["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(k["choices"][0]["delta"]["content"], "x");
        assert!(k["choices"][0]["finish_reason"].is_null());
        let cmpl = Envelope {
            endpoint: Endpoint::Completion,
            ..env
        };
        let k = cmpl.chunk(0, None, None, Some(FinishReason::Stop), false);
        assert_eq!(k["object"], "text_completion");
        assert_eq!(k["choices"][0]["text"], "");
        assert_eq!(k["choices"][0]["finish_reason"], "stop");
        assert_eq!(cmpl.usage_chunk(c.usage)["usage"]["completion_tokens"], 5);
        assert!(v["choices"][0]["logprobs"].is_null());
    }

    fn tok(id: u32, text: &str) -> TokenText {
        TokenText {
            id,
            text: text.into(),
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn logprobs_have_each_endpoints_shape() {
        let lp = |id, text: &str, l| TokenLogprob {
            token: tok(id, text),
            logprob: l,
            top: vec![(tok(id, text), l), (tok(9, "é"), -2.5)],
        };
        let mut c = Collector::new(1, 2, true);
        for (text, lps) in [
            ("Hé", vec![lp(1, "H", -0.5), lp(2, "é", -1.0)]),
            ("", vec![lp(3, "!", f32::NEG_INFINITY)]),
        ] {
            c.add(&CompletionEvent::Text {
                index: 0,
                text: text.into(),
                logprobs: lps,
            });
        }
        assert_eq!(c.token_chars(0), 3);
        let chat = Envelope {
            endpoint: Endpoint::Chat,
            id: "chatcmpl-1".into(),
            created: 5,
            model: "m".into(),
        };
        let v = chat.whole(&c.choices, c.usage);
        let content = &v["choices"][0]["logprobs"]["content"];
        assert_eq!(content[1]["token"], "é");
        assert_eq!(content[1]["logprob"], -1.0);
        assert_eq!(content[1]["bytes"], json!([0xc3, 0xa9]));
        assert_eq!(content[0]["top_logprobs"][1]["token"], "é");
        assert_eq!(content[2]["logprob"], -9999.0);
        let cmpl = Envelope {
            endpoint: Endpoint::Completion,
            ..chat
        };
        let v = cmpl.whole(&c.choices, c.usage);
        let l = &v["choices"][0]["logprobs"];
        assert_eq!(l["tokens"], json!(["H", "é", "!"]));
        assert_eq!(l["token_logprobs"], json!([-0.5, -1.0, -9999.0]));
        assert_eq!(l["top_logprobs"][0]["é"], -2.5);
        assert_eq!(l["text_offset"], json!([0, 1, 2]));
        // A streamed chunk counts its offsets from the characters already sent.
        let k = cmpl.chunk(
            0,
            Some("!"),
            Some((&c.choices[0].logprobs.as_ref().unwrap()[2..], 2)),
            None,
            false,
        );
        assert_eq!(k["choices"][0]["logprobs"]["text_offset"], json!([2]));
    }
}
