//! `act-studio serve`: an OpenAI-compatible HTTP server with per-request steering
//! (docs/ARCHITECTURE.md, "Serving").
//!
//! This module is an edge, like the CLI: it translates HTTP requests into
//! [`crate::pipeline::completion::CompletionJob`]s for the
//! [`crate::pipeline::batch_engine::BatchEngine`] (one model thread, continuous batching) and
//! the job's events back into the OpenAI API's answers. The async runtime (two tokio threads)
//! only parses, tokenizes and writes; model work stays on the engine's thread.
//!
//! Endpoints: `GET /v1/models`, `GET /v1/concepts`, `POST /v1/chat/completions`,
//! `POST /v1/completions` (each streaming or not), `GET /health`.

pub mod api_error;
pub mod api_request;
pub mod responses;
pub mod routes;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread::JoinHandle;

use crate::pipeline::batch_engine::BatchEngine;
use crate::pipeline::completion::ConceptSet;
use crate::runtime::LoadedModel;

/// Request bodies above this many bytes are refused (413) by default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// How the server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind (`127.0.0.1` by default: only this machine can connect).
    pub host: String,
    /// Port (0: any free port; [`RunningServer::addr`] tells which).
    pub port: u16,
    /// Requests must carry `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Most samples decoded together.
    pub max_rows: usize,
    /// Most bytes of KV cache the running samples may grow to together (each reserves its
    /// prompt + `max_tokens`); default [`default_max_kv_bytes`].
    pub max_kv_bytes: u64,
    /// More names the model answers to, besides [`model_id`] (listed by `/v1/models`).
    pub aliases: Vec<String>,
    /// Accept any `model` name in a request (for clients that send a fixed one); otherwise
    /// a name that is neither the id nor an alias gets 404 `model_not_found`.
    pub any_model: bool,
    /// Bytes of recent prompts' KV caches kept for reuse
    /// ([`crate::pipeline::prompt_cache`]; 0: none).
    pub prompt_cache_bytes: u64,
}

/// Half of this machine's memory (`MemTotal` in `/proc/meminfo`), or 8 GiB where that cannot
/// be read: the default KV cache limit of a server.
pub fn default_max_kv_bytes() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    total_kib.map_or(8 << 30, |k| k.saturating_mul(1024) / 2)
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_rows: crate::pipeline::batch_engine::DEFAULT_MAX_ROWS,
            max_kv_bytes: default_max_kv_bytes(),
            aliases: Vec::new(),
            any_model: false,
            prompt_cache_bytes: crate::pipeline::batch_engine::DEFAULT_PROMPT_CACHE_BYTES,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the server's threads: {0}")]
    Threads(#[source] std::io::Error),
}

/// A server running on its own threads; [`RunningServer::stop`] (or dropping it) shuts it
/// down after the open connections finish.
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open requests finish, and waits for the threads.
    pub fn stop(mut self) {
        self.shut_down();
    }

    /// Stops accepting now and lets open requests finish in the background (the port is
    /// free as soon as the accept loop sees the signal).
    pub fn stop_in_background(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            // Nobody waits for it: it ends when its last connection closes.
            drop(t);
        }
    }

    /// Blocks until the server ends (it ends by itself on Ctrl-C when started with
    /// `stop_on_ctrl_c`).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn shut_down(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The id `/v1/models` reports for a model: its file or folder name without `.gguf`.
pub fn model_id(m: &LoadedModel) -> String {
    model_id_of_path(&m.source)
}

/// [`model_id`] from the model's path.
pub fn model_id_of_path(path: &std::path::Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    name.strip_suffix(".gguf").map(str::to_string).unwrap_or(name)
}

/// Binds `opts.host:opts.port` and serves `model` with `concepts` on new threads (the
/// engine's model thread and two async threads). Ctrl-C stops it when `stop_on_ctrl_c`.
pub fn start(
    model: Arc<LoadedModel>,
    concepts: ConceptSet,
    opts: &ServeOptions,
    stop_on_ctrl_c: bool,
) -> Result<RunningServer, ServeError> {
    let addr_text = format!("{}:{}", opts.host, opts.port);
    let bind_err = |source| ServeError::Bind {
        addr: addr_text.clone(),
        source,
    };
    let listener = TcpListener::bind(&addr_text).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    let engine = BatchEngine::start(
        model.clone(),
        opts.max_rows,
        opts.max_kv_bytes,
        opts.prompt_cache_bytes,
    )
    .map_err(ServeError::Threads)?;
    let mut model_names = vec![model_id(&model)];
    for a in &opts.aliases {
        let a = a.trim();
        if !a.is_empty() && !model_names.iter().any(|n| n == a) {
            model_names.push(a.to_string());
        }
    }
    let state = Arc::new(routes::ServerState {
        model_names,
        any_model: opts.any_model,
        model,
        concepts,
        engine,
        api_key: opts.api_key.clone().filter(|k| !k.is_empty()),
        next_id: AtomicU64::new(1),
    });
    let app = routes::router(state, opts.max_body_bytes);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("act-serve-http")
        .enable_all()
        .build()
        .map_err(ServeError::Threads)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("act-serve".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("error: the server cannot use its socket: {e}");
                        return;
                    }
                };
                let stop = async move {
                    if stop_on_ctrl_c {
                        tokio::select! {
                            _ = rx => {}
                            _ = tokio::signal::ctrl_c() => {}
                        }
                    } else {
                        let _ = rx.await;
                    }
                };
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                    eprintln!("error: the server stopped: {e}");
                }
            });
        })
        .map_err(ServeError::Threads)?;
    Ok(RunningServer {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}
