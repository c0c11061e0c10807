//! Finding models already in the local Hugging Face hub cache
//! (`models--{org}--{name}/snapshots/{revision}/`), without any network access.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A model snapshot found in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    /// Repository id, `org/name` (just `name` for repositories without an owner).
    pub name: String,
    /// The snapshot's revision (commit hash).
    pub revision: String,
    /// The snapshot folder (holds `config.json`).
    pub path: PathBuf,
}

/// The hub cache folder from the environment's values: `$HF_HUB_CACHE`, else `$HF_HOME/hub`,
/// else `$HOME/.cache/huggingface/hub`.
pub fn hf_cache_root_from(
    hf_hub_cache: Option<OsString>,
    hf_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(hf_hub_cache)
        .or_else(|| set(hf_home).map(|h| h.join("hub")))
        .or_else(|| set(home).map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// The hub cache folder of this process's environment (see [`hf_cache_root_from`]).
pub fn hf_cache_root() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"));
    hf_cache_root_from(
        std::env::var_os("HF_HUB_CACHE"),
        std::env::var_os("HF_HOME"),
        home,
    )
}

/// `models--org--name` → `org/name`.
fn repo_name(folder: &str) -> Option<String> {
    let rest = folder.strip_prefix("models--")?;
    if rest.is_empty() {
        return None;
    }
    Some(rest.replacen("--", "/", 1))
}

fn modified(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The model snapshots with a `config.json` in the hub cache `root` (default:
/// [`hf_cache_root`]), sorted by name, and for one name newest snapshot (by modification time)
/// first. Unreadable entries are skipped; a missing cache gives an empty list.
pub fn discover_hf_cache(root: Option<&Path>) -> Vec<CachedModel> {
    let Some(root) = root.map(Path::to_path_buf).or_else(hf_cache_root) else {
        return Vec::new();
    };
    let Ok(repos) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut found: Vec<(CachedModel, SystemTime)> = Vec::new();
    for repo in repos.flatten() {
        let Some(name) = repo.file_name().to_str().and_then(repo_name) else {
            continue;
        };
        let Ok(snapshots) = std::fs::read_dir(repo.path().join("snapshots")) else {
            continue;
        };
        for snap in snapshots.flatten() {
            let path = snap.path();
            let Some(revision) = snap.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if path.join("config.json").is_file() {
                let time = modified(&path);
                found.push((
                    CachedModel {
                        name: name.clone(),
                        revision,
                        path,
                    },
                    time,
                ));
            }
        }
    }
    found.sort_by(|(a, ta), (b, tb)| {
        a.name
            .cmp(&b.name)
            .then(tb.cmp(ta))
            .then_with(|| a.revision.cmp(&b.revision))
    });
    found.into_iter().map(|(m, _)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_root_follows_the_environment_order() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            hf_cache_root_from(os("/a"), os("/b"), os("/c")),
            Some(PathBuf::from("/a"))
        );
        assert_eq!(
            hf_cache_root_from(None, os("/b"), os("/c")),
            Some(PathBuf::from("/b/hub"))
        );
        assert_eq!(
            hf_cache_root_from(os(""), None, os("/c")),
            Some(PathBuf::from("/c/.cache/huggingface/hub"))
        );
        assert_eq!(hf_cache_root_from(None, None, None), None);
    }

    #[test]
    fn repo_names() {
        assert_eq!(
            repo_name("models--HuggingFaceTB--SmolLM2-135M").as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M")
        );
        assert_eq!(repo_name("models--gpt2").as_deref(), Some("gpt2"));
        assert_eq!(repo_name("models--org--a--b").as_deref(), Some("org/a--b"));
        assert_eq!(repo_name("datasets--org--x"), None);
    }
}
