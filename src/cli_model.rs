//! CLI commands that run a model: `inspect`, `generate`, `perplexity`.

use std::io::Write;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};

use crate::cli::{CollectArgs, FitArgs, GenerateArgs, InspectArgs, ModelsArgs, PerplexityArgs};
use crate::pipeline::dataset::{Dataset, DatasetSpec, load_dataset};
use crate::pipeline::steering::{SteeringTarget, load_steering_stack};
use crate::runtime::config::Family;
use crate::runtime::generate::{GenerateOptions, generate as run_generate, perplexity as run_perplexity};
use crate::runtime::linear::MatPath;
use crate::runtime::sampling::SamplingConfig;
use crate::runtime::steer::SteeringHooks;
use crate::runtime::tokenizer::ChatMessage;
use crate::runtime::{LoadedModel, NoHooks};

pub(crate) fn load(path: &std::path::Path) -> Result<LoadedModel> {
    LoadedModel::load(path).with_context(|| format!("loading model {}", path.display()))
}

/// `inspect --model M`.
pub fn inspect(a: &InspectArgs) -> Result<()> {
    let m = load(&a.model)?;
    let c = m.config();
    println!("model:          {}", a.model.display());
    println!("architecture:   {}", c.architecture);
    println!("layers:         {}", c.n_layers);
    println!("hidden size:    {}", c.hidden_size);
    println!(
        "heads:          {} (kv {}, head dim {})",
        c.n_heads, c.n_kv_heads, c.head_dim
    );
    println!("mlp size:       {}", c.intermediate_size);
    println!("vocabulary:     {}", c.vocab_size);
    println!("context:        {}", c.max_position);
    match c.family {
        Family::Llama => {
            let pairs = if c.rope_interleaved {
                "interleaved pairs"
            } else {
                "half split"
            };
            println!("rope:           θ = {}, {pairs}", c.rope_theta);
        }
        Family::Gpt2 => println!("positions:      learned"),
    }
    println!("norm eps:       {}", c.norm_eps);
    println!("fingerprint:    {}", m.fingerprint);
    let t = &m.tokenizer;
    let name = |id: Option<u32>| {
        id.and_then(|i| t.token_str(i).map(|s| format!("{s} ({i})")))
            .unwrap_or_else(|| "none".into())
    };
    println!(
        "tokenizer:      {} tokens, BOS {} (added: {}), EOS {}",
        t.vocab_size(),
        name(t.bos()),
        t.adds_bos(),
        name(t.eos().first().copied())
    );
    println!(
        "chat template:  {}",
        if t.chat_template().is_some() { "yes" } else { "no" }
    );
    let points = m.hook_points();
    println!(
        "hook points:    {} ({} per layer)",
        points.len(),
        points.len() / c.n_layers.max(1)
    );
    for p in points.iter().take(5) {
        println!("  {p}");
    }
    if points.len() > 5 {
        println!("  … {}", points.last().map(|p| p.to_string()).unwrap_or_default());
    }
    Ok(())
}

/// `generate --model M --prompt P …`.
pub fn generate(a: &GenerateArgs) -> Result<()> {
    let m = load(&a.model)?;
    let text = if a.chat {
        m.tokenizer.render_chat(&[ChatMessage::user(&a.prompt)], true)?
    } else {
        a.prompt.clone()
    };
    let ids = m.tokenizer.encode(&text)?;
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: SamplingConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            repetition_penalty: a.repetition_penalty,
            seed: a.seed,
        },
        path: if a.dense {
            MatPath::Dense
        } else {
            MatPath::Quantized
        },
    };
    let cancel = AtomicBool::new(false);
    let mut steering = steering_hooks(&m, a)?;
    let hooks: &mut dyn crate::runtime::Hooks = match steering.as_mut() {
        Some(h) => h,
        None => &mut NoHooks,
    };
    let mut stdout = std::io::stdout().lock();
    let g = run_generate(&m, &ids, &opts, hooks, &cancel, &mut |piece| {
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
        true
    })?;
    let _ = writeln!(stdout);
    let _ = stdout.flush();
    if a.stats {
        let s = g.stats;
        eprintln!(
            "prefill: {} tokens, {:.1} tok/s",
            s.prompt_tokens,
            s.prompt_tokens as f64 / s.prefill_s.max(1e-9)
        );
        eprintln!(
            "decode: {} tokens, {:.1} tok/s",
            s.decode_tokens,
            s.decode_tokens as f64 / s.decode_s.max(1e-9)
        );
    }
    Ok(())
}

/// Loads `--maps` files (checking they were fitted on this model), applies `--lambda`
/// values, and compiles the stack; `None` when nothing is steered.
fn steering_hooks(m: &LoadedModel, a: &GenerateArgs) -> Result<Option<SteeringHooks>> {
    let target = SteeringTarget::language_model(m);
    let Some(stack) = load_steering_stack(&target, &a.maps, &a.lambdas, a.scope)? else {
        return Ok(None);
    };
    let c = m.config();
    Ok(Some(SteeringHooks::new(&stack, c.n_layers, c.hidden_size)?))
}

/// `perplexity --model M --file F`.
pub fn perplexity(a: &PerplexityArgs) -> Result<()> {
    let m = load(&a.model)?;
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let ids = m.tokenizer.encode(&text)?;
    let p = run_perplexity(&m, &ids, a.window, &mut NoHooks, &AtomicBool::new(false))?;
    println!(
        "perplexity: {:.4} ({} tokens, {:.4} nats/token)",
        p.perplexity, p.tokens, p.nll
    );
    Ok(())
}

/// `models`: GGUF files and model folders in `--dir`, then the Hugging Face cache.
pub fn models(a: &ModelsArgs) -> Result<()> {
    let mut local: Vec<std::path::PathBuf> = match std::fs::read_dir(&a.dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
                    || p.join("config.json").is_file()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    local.sort();
    println!("in {}:", a.dir.display());
    if local.is_empty() {
        println!("  (none; models/fetch-demo-model.sh fetches the demo model)");
    }
    for p in &local {
        println!("  {}", p.display());
    }
    let cached = crate::runtime::hf_cache::discover_hf_cache(a.hf_cache.as_deref());
    match a
        .hf_cache
        .clone()
        .or_else(crate::runtime::hf_cache::hf_cache_root)
    {
        Some(root) => println!("in the Hugging Face cache ({}):", root.display()),
        None => println!("in the Hugging Face cache:"),
    }
    if cached.is_empty() {
        println!("  (none)");
    }
    for c in &cached {
        println!("  {} @ {}  {}", c.name, c.revision, c.path.display());
    }
    Ok(())
}

/// `collect --model M --data D --hooks H --out F`.
pub fn collect(a: &CollectArgs) -> Result<()> {
    use crate::pipeline::collect::{CollectOptions, collect as run_collect};
    use crate::pipeline::presets::hook_points;
    let data = read_dataset(&a.data, None)?;
    let texts = data.samples;
    let m = load(&a.model)?;
    let points = hook_points(&a.hooks, m.config().n_layers).map_err(anyhow::Error::msg)?;
    let opts = CollectOptions {
        points,
        pooling: a.pooling,
        batch_size: a.batch_size,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let bar = crate::cli_steer::progress_bar(texts.len() as u64, "collecting samples");
    let pooled = run_collect(&m, &texts, &opts, &AtomicBool::new(false), &mut |done, _| {
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let bytes: Vec<(String, Vec<u8>, [usize; 2])> = pooled
        .iter()
        .map(|(p, mat)| {
            (
                p.name(),
                mat.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                [mat.rows, mat.cols],
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, b, shape)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), b)
                .map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let meta = std::collections::HashMap::from([
        ("pooling".to_string(), a.pooling.name().to_string()),
        ("model".to_string(), m.fingerprint.to_string()),
        ("data".to_string(), a.data.to_string()),
        ("samples".to_string(), texts.len().to_string()),
    ]);
    let out = safetensors::serialize(views, Some(meta))?;
    crate::transport::atomic_write(&a.out, &out).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} hook points × {} samples ({} pooling) to {} in {:.1} s",
        pooled.len(),
        texts.len(),
        a.pooling.name(),
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Reads a dataset spec with context; `limit` keeps the first samples.
pub(crate) fn read_dataset(spec: &DatasetSpec, limit: Option<usize>) -> Result<Dataset> {
    let mut d = load_dataset(spec).with_context(|| format!("reading dataset {spec}"))?;
    if let Some(n) = limit {
        d.samples.truncate(n);
    }
    Ok(d)
}

/// `fit --model M (--concept C | --source S --target T) --out F`.
pub fn fit(a: &FitArgs) -> Result<()> {
    use crate::pipeline::fit_concept::{FitRequest, fit_concept};
    use crate::pipeline::fit_model::Estimation;
    let builtin = match &a.concept {
        Some(name) => Some(crate::pipeline::concepts::builtin_concept(name)?),
        None => None,
    };
    let pick =
        |given: &Option<DatasetSpec>, from_concept: Option<&String>, side: &str| -> Result<DatasetSpec> {
            match (given, from_concept) {
                (Some(s), _) => Ok(s.clone()),
                (None, Some(name)) => Ok(DatasetSpec::Builtin(name.clone())),
                (None, None) => anyhow::bail!("--{side} or --concept is needed"),
            }
        };
    let req = FitRequest {
        name: a.name.clone().unwrap_or_else(|| crate::cli::stem(&a.out)),
        source: pick(&a.source, builtin.map(|c| &c.source), "source")?,
        target: pick(&a.target, builtin.map(|c| &c.target), "target")?,
        limit: a.limit,
        method: a.method,
        preset: a.preset.clone(),
        pooling: a.pooling,
        support: a.support,
        estimation: if a.simultaneous {
            Estimation::Simultaneous
        } else {
            Estimation::Causal
        },
        keep_samples: false,
    };
    let m = load(&a.model)?;
    let started = std::time::Instant::now();
    let bar = crate::cli_steer::progress_bar(0, "fitting hook points");
    let fitted = fit_concept(&m, &req, &AtomicBool::new(false), &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
    })?;
    bar.finish_and_clear();
    fitted
        .maps
        .save(&a.out)
        .with_context(|| format!("saving maps to {}", a.out.display()))?;
    let meta = fitted.maps.meta();
    eprintln!(
        "fitted {} ({}, {} support, {} pooling) at {} hook points on {} + {} samples in {:.1} s → {} (concept `{}`)",
        meta.method.label(),
        meta.estimation,
        meta.support,
        meta.pooling,
        fitted.hook_points,
        fitted.counts.0,
        fitted.counts.1,
        started.elapsed().as_secs_f64(),
        a.out.display(),
        req.name
    );
    Ok(())
}
