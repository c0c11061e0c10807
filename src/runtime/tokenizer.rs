//! Tokenizers from GGUF metadata or `tokenizer.json`, and chat templates rendered with
//! minijinja.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use serde::Serialize;
use tokenizers::{AddedToken, Tokenizer};

use super::bpe_tokenizer::BpeTokenizer;
use super::error::{Result, RuntimeError};
use super::spm_tokenizer::SpmTokenizer;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A system message (instructions before the conversation).
    pub fn system(content: &str) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: &str) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// Gemma's chat template (as in the Gemma 3 instruction-tuned releases' `tokenizer_config.json`),
/// used for Gemma GGUF files that carry no `tokenizer.chat_template` (the pretrained releases,
/// such as Gemma 3 270M).
const GEMMA_CHAT_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

/// The tokenization algorithm behind a [`TextTokenizer`].
enum Backend {
    /// A Hugging Face `tokenizers` pipeline (`tokenizer.json`, or a GGUF BPE with another
    /// pre-tokenizer, through candle's builder).
    Hf(Box<Tokenizer>),
    /// llama.cpp's SentencePiece tokenizer (GGUF `llama` tokenizer model: Llama 2, Gemma).
    Spm(Box<SpmTokenizer>),
    /// Byte-level BPE from a GGUF file's tokens and merges (GGUF `gpt2` tokenizer model with
    /// the `smollm`, `gpt2` or `default` pre-tokenizer).
    Bpe(Box<BpeTokenizer>),
}

impl Backend {
    fn id_to_token(&self, id: u32) -> Option<String> {
        match self {
            Backend::Hf(t) => t.id_to_token(id),
            Backend::Spm(t) => t.token_text(id).map(str::to_string),
            Backend::Bpe(t) => t.token_text(id).map(str::to_string),
        }
    }
}

/// A tokenizer with the model's special tokens and chat template.
pub struct TextTokenizer {
    inner: Backend,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
    bos_text: String,
    eos_text: String,
}

fn tok_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Tokenizer(e.to_string())
}

fn md_u32(md: &HashMap<String, Value>, key: &str) -> Option<u32> {
    let v = md.get(key)?;
    v.to_u32()
        .ok()
        .or_else(|| v.to_u64().ok().and_then(|x| u32::try_from(x).ok()))
        .or_else(|| v.to_i32().ok().and_then(|x| u32::try_from(x).ok()))
}

/// Refuses special-token ids (BOS, EOS, unknown, padding) beyond the vocabulary: a BOS that
/// does not exist would be fed to the embedding, an EOS that cannot be sampled would never
/// stop generation.
fn check_special_ids(md: &HashMap<String, Value>) -> Result<()> {
    let Some(n) = md
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .map(Vec::len)
    else {
        return Ok(());
    };
    for what in ["bos", "eos", "unknown", "padding", "eot", "eom"] {
        let key = format!("tokenizer.ggml.{what}_token_id");
        let Some(v) = md.get(&key) else { continue };
        let id = v
            .to_u32()
            .ok()
            .map(u64::from)
            .or_else(|| v.to_u64().ok())
            .or_else(|| v.to_i32().ok().and_then(|x| u64::try_from(x).ok()))
            .or_else(|| v.to_i64().ok().and_then(|x| u64::try_from(x).ok()));
        match id {
            Some(id) if id < n as u64 => {}
            // -1 is how some writers say "none".
            None if v.to_i32().ok() == Some(-1) || v.to_i64().ok() == Some(-1) => {}
            _ => {
                return Err(tok_err(format!(
                    "{key} = {v:?} is not a token of the vocabulary ({n} tokens)"
                )));
            }
        }
    }
    Ok(())
}

fn md_strings(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
    let arr = md
        .get(key)
        .ok_or_else(|| tok_err(format!("GGUF metadata has no `{key}`")))?
        .to_vec()
        .map_err(tok_err)?;
    arr.iter()
        .map(|v| v.to_string().cloned().map_err(tok_err))
        .collect()
}

impl TextTokenizer {
    /// Builds the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`):
    ///
    /// - `gpt2` model: byte-level BPE from tokens and merges, with the pre-tokenizer named by
    ///   `tokenizer.ggml.pre` (`smollm`: single digits, then GPT-2 byte-level splitting; other
    ///   names are delegated to candle's GGUF tokenizer builder), special tokens (token types
    ///   2–5) as single ids;
    /// - `llama` model: SentencePiece with scores and byte fallback, equal to llama.cpp's
    ///   (see [`SpmTokenizer`]); generation stops on EOS and on the end-of-turn tokens
    ///   llama.cpp recognises (`<end_of_turn>` for Gemma); Gemma files without a chat template
    ///   get Gemma's;
    ///
    /// with BOS/EOS and `tokenizer.chat_template`.
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let md = &content.metadata;
        check_special_ids(md)?;
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let chat_template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        if model == "llama" {
            let spm = SpmTokenizer::from_gguf_metadata(md).map_err(tok_err)?;
            let arch = md
                .get("general.architecture")
                .and_then(|v| v.to_string().ok())
                .map(String::as_str)
                .unwrap_or_default();
            let chat_template =
                chat_template.or_else(|| arch.starts_with("gemma").then(|| GEMMA_CHAT_TEMPLATE.to_string()));
            let text = |id: Option<u32>| {
                id.and_then(|i| spm.token_text(i))
                    .map(str::to_string)
                    .unwrap_or_default()
            };
            return Ok(Self {
                bos_text: text(spm.bos()),
                eos_text: text(spm.eos()),
                bos: spm.bos(),
                eos: spm.eog().to_vec(),
                add_bos: spm.add_bos(),
                chat_template,
                inner: Backend::Spm(Box::new(spm)),
            });
        }
        if model != "gpt2" {
            return Err(tok_err(format!(
                "tokenizer model `{model}` is not supported (byte-level BPE `gpt2` and \
                 SentencePiece `llama` are)"
            )));
        }
        let tokens = md_strings(md, "tokenizer.ggml.tokens")?;
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "gpt2".into());
        // Special tokens (types 2–5: unknown, control, user-defined, unused) are single ids.
        let specials: Vec<u32> = md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|types| {
                types
                    .iter()
                    .enumerate()
                    .filter(|(_, ty)| {
                        matches!(
                            ty.to_i32().ok().or_else(|| ty.to_u32().ok().map(|u| u as i32)),
                            Some(2..=5)
                        )
                    })
                    .filter_map(|(i, _)| u32::try_from(i).ok())
                    .filter(|&i| (i as usize) < tokens.len())
                    .collect()
            })
            .unwrap_or_default();
        let bos = md_u32(md, "tokenizer.ggml.bos_token_id");
        let eos: Vec<u32> = md_u32(md, "tokenizer.ggml.eos_token_id").into_iter().collect();
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let text = |id: Option<u32>| {
            id.and_then(|i| tokens.get(i as usize))
                .cloned()
                .unwrap_or_default()
        };
        let (bos_text, eos_text) = (text(bos), text(eos.first().copied()));
        let inner = match pre.as_str() {
            "smollm" | "gpt2" | "default" => {
                let merges = md_strings(md, "tokenizer.ggml.merges")?;
                let bpe = BpeTokenizer::new(tokens, &merges, &specials, pre == "smollm").map_err(tok_err)?;
                Backend::Bpe(Box::new(bpe))
            }
            _ => {
                let mut t =
                    <Tokenizer as candle_core::quantized::tokenizer::TokenizerFromGguf>::from_gguf(content)
                        .map_err(tok_err)?;
                let added: Vec<AddedToken> = specials
                    .iter()
                    .filter_map(|&i| tokens.get(i as usize))
                    .map(|t| AddedToken::from(t.clone(), true))
                    .collect();
                t.add_special_tokens(added).map_err(tok_err)?;
                Backend::Hf(Box::new(t))
            }
        };
        Ok(Self {
            bos_text,
            eos_text,
            inner,
            bos,
            eos,
            add_bos,
            chat_template,
        })
    }

    /// Loads `tokenizer.json`, with BOS/EOS and the chat template from
    /// `tokenizer_config.json` beside it when present.
    pub fn from_files(tokenizer_json: &Path, config_json: Option<&Path>) -> Result<Self> {
        let inner = Tokenizer::from_file(tokenizer_json)
            .map_err(|e| tok_err(format!("{}: {e}", tokenizer_json.display())))?;
        let cfg: serde_json::Value = match config_json {
            Some(p) if p.exists() => {
                let text = crate::transport::regular_file::read_regular_to_string(p).map_err(|source| {
                    RuntimeError::Io {
                        path: p.to_path_buf(),
                        source,
                    }
                })?;
                serde_json::from_str(&text).map_err(|e| tok_err(format!("{}: {e}", p.display())))?
            }
            _ => serde_json::Value::Null,
        };
        let token_text = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                v => v.get("content").and_then(|c| c.as_str()).map(str::to_string),
            }
        };
        let bos_text = token_text("bos_token").unwrap_or_default();
        let eos_text = token_text("eos_token").unwrap_or_default();
        let bos = inner.token_to_id(&bos_text);
        let eos: Vec<u32> = inner.token_to_id(&eos_text).into_iter().collect();
        let add_bos = cfg
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let chat_template = cfg
            .get("chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        Ok(Self {
            inner: Backend::Hf(Box::new(inner)),
            bos,
            eos,
            add_bos,
            chat_template,
            bos_text,
            eos_text,
        })
    }

    /// Fills in BOS and EOS from ids stated elsewhere (a model's `config.json`) when the
    /// tokenizer files named none; ids outside the vocabulary are ignored.
    pub fn with_default_special_ids(mut self, bos: Option<u32>, eos: &[u32]) -> Self {
        if self.bos.is_none()
            && let Some(text) = bos.and_then(|id| self.inner.id_to_token(id))
        {
            self.bos = bos;
            self.bos_text = text;
        }
        if self.eos.is_empty() {
            self.eos = eos
                .iter()
                .copied()
                .filter(|&id| self.inner.id_to_token(id).is_some())
                .collect();
            if let Some(text) = self.eos.first().and_then(|&id| self.inner.id_to_token(id)) {
                self.eos_text = text;
            }
        }
        self
    }

    /// Encodes text. Special-token strings such as `<|im_start|>` become their single ids;
    /// BOS is prepended when the model asks for it (`add_bos_token`). For SentencePiece
    /// models this is llama.cpp's `llama_tokenize(text, add_special = true, parse_special =
    /// true)` (EOS appended too where the model asks for it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let hf = match &self.inner {
            Backend::Hf(t) => t,
            Backend::Spm(t) => return t.encode(text, true, true).map_err(tok_err),
            Backend::Bpe(t) => {
                let mut ids = Vec::with_capacity(text.len() / 3 + 2);
                if self.add_bos
                    && let Some(b) = self.bos
                {
                    ids.push(b);
                }
                ids.extend(t.encode(text));
                return Ok(ids);
            }
        };
        let enc = hf.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos
            && let Some(b) = self.bos
        {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The first `max_tokens` ids of [`Self::encode`]`(text)`, without tokenizing all of a long
    /// text: only its first [`BYTES_PER_TOKEN_BOUND`] × (`max_tokens` + 1) bytes are encoded
    /// (a 50 MB dataset line would otherwise take gigabytes to tokenize before the cut).
    pub fn encode_prefix(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>> {
        let limit = max_tokens.saturating_add(1).saturating_mul(BYTES_PER_TOKEN_BOUND);
        let mut cut = text.len().min(limit);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut ids = self.encode(&text[..cut])?;
        ids.truncate(max_tokens);
        Ok(ids)
    }

    /// Encodes text without BOS (for continuations appended to an encoded prompt).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        match &self.inner {
            Backend::Hf(t) => Ok(t.encode(text, false).map_err(tok_err)?.get_ids().to_vec()),
            Backend::Spm(t) => t.encode(text, false, true).map_err(tok_err),
            Backend::Bpe(t) => Ok(t.encode(text)),
        }
    }

    /// Decodes ids to text (special tokens kept unless `skip_special`). For SentencePiece
    /// models this is llama.cpp's `llama_detokenize(ids, remove_special = skip_special,
    /// unparse_special = !skip_special)`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        match &self.inner {
            Backend::Hf(t) => t.decode(ids, skip_special).map_err(tok_err),
            Backend::Spm(t) => t.decode(ids, skip_special, !skip_special).map_err(tok_err),
            Backend::Bpe(t) => Ok(t.decode(ids, skip_special)),
        }
    }

    /// The bytes one token id stands for in decoded text (a special token's own text; a
    /// byte-level token that holds part of a UTF-8 character gives just those bytes).
    /// Empty for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match &self.inner {
            Backend::Bpe(t) => t.token_bytes(id),
            Backend::Spm(t) => t
                .token_to_piece(id, true)
                .map(|p| p.into_owned())
                .unwrap_or_default(),
            Backend::Hf(t) => t.decode(&[id], false).map(String::into_bytes).unwrap_or_default(),
        }
    }

    /// The string of one token id as stored in the vocabulary.
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Backend::Hf(t) => t.get_vocab_size(true),
            Backend::Spm(t) => t.vocab_size(),
            Backend::Bpe(t) => t.vocab_size(),
        }
    }

    /// BOS id.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Whether BOS is prepended by [`TextTokenizer::encode`].
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// End-of-sequence ids (generation stops on any).
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders messages with the model's chat template (Jinja, via minijinja with Python
    /// string methods), optionally opening the assistant's turn. When [`TextTokenizer::encode`]
    /// prepends BOS itself, a BOS text at the start of the rendering is dropped (as llama.cpp
    /// does), so that the encoded chat does not start with two BOS tokens.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| RuntimeError::ChatTemplate("this model has no chat template".into()))?;
        let text = render_template(
            template,
            messages,
            add_generation_prompt,
            &self.bos_text,
            &self.eos_text,
        )?;
        Ok(match text.strip_prefix(self.bos_text.as_str()) {
            Some(rest) if self.add_bos && self.bos.is_some() && !self.bos_text.is_empty() => rest.to_string(),
            _ => text,
        })
    }
}

/// Renders a chat template (Jinja, as Hugging Face's `apply_chat_template`) with the bounds
/// below: [`TEMPLATE_FUEL`] steps, [`TEMPLATE_RECURSION`] levels, [`TEMPLATE_MAX_OUTPUT`] bytes.
pub fn render_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_text: &str,
    eos_text: &str,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    // A template comes with the model file: bound what it may do (an endless loop, a
    // runaway recursion or an output of gigabytes would hang or exhaust the app).
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| RuntimeError::ChatTemplate(e.to_string()))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| RuntimeError::ChatTemplate(e.to_string()))?;
    let mut out = CappedWriter {
        bytes: Vec::new(),
        cap: TEMPLATE_MAX_OUTPUT,
    };
    tmpl.render_captured_to(
        minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_text,
            eos_token => eos_text,
        },
        &mut out,
    )
    .map_err(|e| {
        RuntimeError::ChatTemplate(match e.kind() {
            minijinja::ErrorKind::OutOfFuel => {
                format!("rendering took more than {TEMPLATE_FUEL} steps (an endless loop?)")
            }
            minijinja::ErrorKind::WriteFailure => {
                format!("the rendered chat exceeds {} MiB", TEMPLATE_MAX_OUTPUT >> 20)
            }
            _ => e.to_string(),
        })
    })?;
    let text = String::from_utf8(out.bytes)
        .map_err(|_| RuntimeError::ChatTemplate("the rendered chat is not UTF-8".into()))?;
    Ok(text)
}

/// Bytes of text beyond which `encode_prefix` stops reading per token wanted: far more than
/// any token of a real vocabulary covers, so the kept tokens are those of the whole text.
pub const BYTES_PER_TOKEN_BOUND: usize = 64;

/// Instructions a chat template may run per rendering (real templates need a few thousand
/// per message; this allows thousands of messages and stops an endless loop in well under a
/// second).
const TEMPLATE_FUEL: u64 = 20_000_000;
/// Deepest recursion (macros, recursive loops, includes) a chat template may reach.
const TEMPLATE_RECURSION: usize = 100;
/// Largest rendered chat, in bytes.
const TEMPLATE_MAX_OUTPUT: usize = 16 << 20;

/// A writer that refuses to grow past `cap` bytes.
struct CappedWriter {
    bytes: Vec<u8>,
    cap: usize,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > self.cap {
            return Err(std::io::Error::other("output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Turns a growing list of generated ids into text pieces, emitting only complete UTF-8 text
/// (a multi-byte character split over tokens is held back until it is whole).
///
/// Each step decodes only the tokens since the last emitted piece plus the one before it
/// (for context such as a leading space), so the per-token cost does not grow with the
/// length of the generation.
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the decoding window (one token before `read`).
    prefix: usize,
    /// Tokens up to here have been emitted.
    read: usize,
}

impl StreamDecoder {
    /// A decoder with no tokens.
    pub fn new() -> Self {
        Self {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds a token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read], true)?;
        let now = tok.decode(&self.ids[self.prefix..], true)?;
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') || !now.is_char_boundary(before.len()) {
            return Ok(String::new());
        }
        let piece = now[before.len()..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(piece)
    }
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str) -> Result<String> {
        render_template(t, &[ChatMessage::user("hi")], true, "<s>", "</s>")
    }

    #[test]
    fn templates_render_within_their_bounds() {
        let t = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
        assert_eq!(render(t).unwrap(), "<|user|>hi<|assistant|>");
    }

    #[test]
    fn endless_deep_or_huge_templates_stop_with_a_clear_error() {
        let started = std::time::Instant::now();
        // Endless: a loop over a huge range.
        let e = render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
            .unwrap_err();
        assert!(e.to_string().contains("steps"), "{e}");
        // Deep: a macro calling itself.
        let e = render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").unwrap_err();
        assert!(matches!(e, RuntimeError::ChatTemplate(_)), "{e}");
        // Huge: 64 MiB of output from a short template.
        let e = render("{% set s = 'x' * 65536 %}{% for i in range(1024) %}{{ s }}{% endfor %}").unwrap_err();
        assert!(
            e.to_string().contains("MiB") || e.to_string().contains("steps"),
            "{e}"
        );
        println!("three bounded renderings in {:?}", started.elapsed());
    }
}
