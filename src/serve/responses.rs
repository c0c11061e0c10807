//! Answer bodies in the OpenAI API's shapes: whole completions, streamed chunks, and the
//! collector that turns a job's events into a whole answer.

use serde_json::{Value, json};

use crate::pipeline::completion::{CompletionEvent, FinishReason};

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

    /// A streamed chunk for choice `index`: new `text` and/or its finish reason. A chat
    /// stream's first chunk per choice (`role`) carries the assistant role.
    pub fn chunk(&self, index: usize, text: Option<&str>, finish: Option<FinishReason>, role: bool) -> Value {
        let finish = finish.map(|f| f.name());
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": index, "delta": delta, "logprobs": Value::Null, "finish_reason": finish})
            }
            Endpoint::Completion => {
                json!({"index": index, "text": text.unwrap_or(""), "logprobs": Value::Null, "finish_reason": finish})
            }
        };
        self.wrap(true, json!([choice]))
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
                match self.endpoint {
                    Endpoint::Chat => json!({
                        "index": index,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": Value::Null,
                        "finish_reason": finish,
                    }),
                    Endpoint::Completion => json!({
                        "index": index,
                        "text": c.text,
                        "logprobs": Value::Null,
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

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// One sample's text and end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choice {
    pub text: String,
    pub finish: Option<FinishReason>,
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
    /// For `n` samples of a `prompt_tokens`-token prompt.
    pub fn new(n: usize, prompt_tokens: usize) -> Self {
        Self {
            choices: vec![Choice::default(); n],
            usage: Usage {
                prompt_tokens,
                completion_tokens: 0,
            },
            failed: None,
        }
    }

    /// Takes one event in.
    pub fn add(&mut self, e: &CompletionEvent) {
        match e {
            CompletionEvent::Text { index, text } => {
                if let Some(c) = self.choices.get_mut(*index) {
                    c.text.push_str(text);
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
        }
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
        let mut c = Collector::new(2, 3);
        c.add(&CompletionEvent::Text {
            index: 1,
            text: "b".into(),
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
        let k = env.chunk(0, Some("x"), None, true);
        assert_eq!(k["object"], "chat.completion.chunk");
        assert_eq!(k["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(k["choices"][0]["delta"]["content"], "x");
        assert!(k["choices"][0]["finish_reason"].is_null());
        let cmpl = Envelope {
            endpoint: Endpoint::Completion,
            ..env
        };
        let k = cmpl.chunk(0, None, Some(FinishReason::Stop), false);
        assert_eq!(k["object"], "text_completion");
        assert_eq!(k["choices"][0]["text"], "");
        assert_eq!(k["choices"][0]["finish_reason"], "stop");
        assert_eq!(cmpl.usage_chunk(c.usage)["usage"]["completion_tokens"], 5);
    }
}
