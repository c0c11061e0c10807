//! `models`: the models in a local folder and in the Hugging Face cache.

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `models`.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    /// Folder to scan besides the Hugging Face cache.
    #[arg(long, default_value = "models")]
    pub dir: PathBuf,
    /// Hugging Face hub cache folder (default: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub).
    #[arg(long)]
    pub hf_cache: Option<PathBuf>,
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
    outln!("in {}:", a.dir.display());
    if local.is_empty() {
        outln!("  (none; models/fetch-demo-model.sh fetches the demo model)");
    }
    for p in &local {
        outln!("  {}", p.display());
    }
    let cached = crate::runtime::hf_cache::discover_hf_cache(a.hf_cache.as_deref());
    match a
        .hf_cache
        .clone()
        .or_else(crate::runtime::hf_cache::hf_cache_root)
    {
        Some(root) => outln!("in the Hugging Face cache ({}):", root.display()),
        None => outln!("in the Hugging Face cache:"),
    }
    if cached.is_empty() {
        outln!("  (none)");
    }
    for c in &cached {
        outln!("  {} @ {}  {}", c.name, c.revision, c.path.display());
    }
    Ok(())
}
