//! Loading maps for a loaded model and stacking them into a [`SteeringStack`], the one way the
//! CLI (`generate`, `sweep`, `eval`, `imagine`, `strip`) and the worker (the app's Load maps)
//! do it.
//!
//! A maps file is accepted for a model only when its fingerprint matches and every one of its
//! hook points exists in the model with the same width, so maps can never steer nothing
//! silently or index past an activation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diffusion::pipeline::SdPipeline;
use crate::runtime::LoadedModel;
use crate::transport::{MapsError, MapsFile, ModelFingerprint, SteeringStack, TokenScope};

/// What a model offers maps: its fingerprint and its hook points with their widths.
#[derive(Debug, Clone, PartialEq)]
pub struct SteeringTarget {
    /// The loaded model's fingerprint.
    pub fingerprint: ModelFingerprint,
    /// Every hook point name with its number of neurons.
    pub sites: Vec<(String, usize)>,
}

impl SteeringTarget {
    /// A language model: every hook point, `hidden_size` wide.
    pub fn language_model(m: &LoadedModel) -> Self {
        let d = m.config().hidden_size;
        Self {
            fingerprint: m.fingerprint.clone(),
            sites: m.hook_points().iter().map(|p| (p.name(), d)).collect(),
        }
    }

    /// A diffusion pipeline: its text-encoder and UNet hook sites with their widths.
    pub fn diffusion(pipe: &SdPipeline) -> Self {
        Self {
            fingerprint: pipe.fingerprint().clone(),
            sites: pipe
                .hook_sites()
                .iter()
                .map(|s| (s.name.clone(), s.dim))
                .collect(),
        }
    }
}

/// Why maps cannot steer this model.
#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error("{path}: {source}")]
    Maps {
        path: PathBuf,
        #[source]
        source: MapsError,
    },
    #[error("{path}: hook point {hook} is not in this model ({model})")]
    UnknownHook {
        path: PathBuf,
        hook: String,
        model: ModelFingerprint,
    },
    #[error("{path}: hook point {hook} has {maps} neurons, this model {model}")]
    Width {
        path: PathBuf,
        hook: String,
        maps: usize,
        model: usize,
    },
    #[error("two maps files are both named `{0}`")]
    DuplicateConcept(String),
    #[error("a strength is given for `{name}`, but no loaded concept is named `{name}` (loaded: {loaded})")]
    UnknownConcept { name: String, loaded: String },
}

/// Loads `path` and checks it against `target` ([`check_maps_for`]).
pub fn load_maps_for(path: &Path, target: &SteeringTarget) -> Result<MapsFile, SteeringError> {
    let maps = MapsFile::load(path).map_err(|source| SteeringError::Maps {
        path: path.to_path_buf(),
        source,
    })?;
    check_maps_for(&maps, path, target)?;
    Ok(maps)
}

/// Checks loaded maps (read from `path`, named in errors) against `target`: the fingerprint,
/// then every hook point's presence and width.
pub fn check_maps_for(maps: &MapsFile, path: &Path, target: &SteeringTarget) -> Result<(), SteeringError> {
    maps.check_fingerprint(&target.fingerprint)
        .map_err(|source| SteeringError::Maps {
            path: path.to_path_buf(),
            source,
        })?;
    for h in &maps.meta().hook_points {
        // Maps fitted per denoising timestep are named `HOOK@tK`.
        let hook = crate::transport::split_timestep(&h.name).0;
        match target.sites.iter().find(|(name, _)| *name == hook) {
            None => {
                return Err(SteeringError::UnknownHook {
                    path: path.to_path_buf(),
                    hook: h.name.clone(),
                    model: target.fingerprint.clone(),
                });
            }
            Some(&(_, dim)) if dim != h.dim => {
                return Err(SteeringError::Width {
                    path: path.to_path_buf(),
                    hook: h.name.clone(),
                    maps: h.dim,
                    model: dim,
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Loads every maps file for `target` into one stack (each concept at λ = 1, in the order
/// given), then sets the named strengths; `None` when no file is given. Strengths naming no
/// loaded concept, or two files with one concept name, are errors.
pub fn load_steering_stack(
    target: &SteeringTarget,
    paths: &[PathBuf],
    lambdas: &[(String, f32)],
    scope: TokenScope,
) -> Result<Option<SteeringStack>, SteeringError> {
    if paths.is_empty() {
        return match lambdas.first() {
            Some((name, _)) => Err(SteeringError::UnknownConcept {
                name: name.clone(),
                loaded: "none: no maps file given".into(),
            }),
            None => Ok(None),
        };
    }
    let mut stack = SteeringStack {
        scope,
        ..Default::default()
    };
    for path in paths {
        let maps = load_maps_for(path, target)?;
        if stack.concepts.iter().any(|c| c.name == maps.meta().concept) {
            return Err(SteeringError::DuplicateConcept(maps.meta().concept.clone()));
        }
        stack.push(Arc::new(maps), 1.0);
    }
    for (name, value) in lambdas {
        if !stack.set_lambda(name, *value) {
            let loaded: Vec<&str> = stack.concepts.iter().map(|c| c.name.as_str()).collect();
            return Err(SteeringError::UnknownConcept {
                name: name.clone(),
                loaded: loaded.join(", "),
            });
        }
    }
    Ok(Some(stack))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{DatasetInfo, HookMap, MapsMeta, Method};

    fn fingerprint() -> ModelFingerprint {
        ModelFingerprint {
            architecture: "llama".into(),
            hidden_size: 4,
            n_layers: 2,
            weights_header_sha256: "ab".repeat(32),
        }
    }

    /// Saves maps named `concept` with identity maps at `hooks` (name, width) into `dir`.
    fn saved(dir: &Path, concept: &str, hooks: &[(&str, usize)]) -> PathBuf {
        let info = DatasetInfo {
            name: "x".into(),
            sha256: String::new(),
            count: 2,
        };
        let meta = MapsMeta::new(
            concept,
            Method::LinearAct,
            Method::LinearAct.default_support(),
            "mean",
            "causal",
            fingerprint(),
            info.clone(),
            info,
        );
        let maps = hooks
            .iter()
            .map(|(n, d)| (n.to_string(), HookMap::identity(Method::LinearAct, *d)))
            .collect();
        let path = dir.join(format!("{concept}-{}.safetensors", hooks.len()));
        MapsFile::new(meta, maps).unwrap().save(&path).unwrap();
        path
    }

    fn target() -> SteeringTarget {
        SteeringTarget {
            fingerprint: fingerprint(),
            sites: vec![("layers.0.mlp_norm".into(), 4), ("layers.1.mlp_norm".into(), 4)],
        }
    }

    #[test]
    fn maps_must_name_hook_points_of_the_model_at_its_width() {
        let dir = tempfile::tempdir().unwrap();
        let good = saved(dir.path(), "a", &[("layers.1.mlp_norm", 4)]);
        assert!(load_maps_for(&good, &target()).is_ok());
        let unknown = saved(
            dir.path(),
            "b",
            &[("layers.0.mlp_norm", 4), ("layers.7.mlp_norm", 4)],
        );
        let e = load_maps_for(&unknown, &target()).unwrap_err();
        assert!(
            matches!(&e, SteeringError::UnknownHook { hook, .. } if hook == "layers.7.mlp_norm"),
            "{e}"
        );
        let wide = saved(
            dir.path(),
            "c",
            &[("layers.0.mlp_norm", 8), ("layers.1.mlp_norm", 8), ("x", 1)],
        );
        let mut t = target();
        t.sites.push(("x".into(), 1));
        let e = load_maps_for(&wide, &t).unwrap_err();
        assert!(
            matches!(
                e,
                SteeringError::Width {
                    maps: 8,
                    model: 4,
                    ..
                }
            ),
            "{e}"
        );
        let mut other = target();
        other.fingerprint.n_layers = 3;
        assert!(matches!(
            load_maps_for(&good, &other),
            Err(SteeringError::Maps { .. })
        ));
    }

    #[test]
    fn stacks_set_strengths_and_refuse_unknown_or_duplicate_concepts() {
        let dir = tempfile::tempdir().unwrap();
        let a = saved(dir.path(), "a", &[("layers.0.mlp_norm", 4)]);
        let b = saved(dir.path(), "b", &[("layers.1.mlp_norm", 4)]);
        let t = target();
        let stack = load_steering_stack(&t, &[a.clone(), b], &[("b".into(), 0.25)], TokenScope::LastToken)
            .unwrap()
            .unwrap();
        let lambdas: Vec<(&str, f32)> = stack
            .concepts
            .iter()
            .map(|c| (c.name.as_str(), c.lambda))
            .collect();
        assert_eq!(lambdas, [("a", 1.0), ("b", 0.25)]);
        assert_eq!(stack.scope, TokenScope::LastToken);
        assert!(
            load_steering_stack(&t, &[], &[], TokenScope::All)
                .unwrap()
                .is_none()
        );
        let e = load_steering_stack(
            &t,
            std::slice::from_ref(&a),
            &[("soccer".into(), 1.0)],
            TokenScope::All,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("no loaded concept is named `soccer` (loaded: a)"),
            "{e}"
        );
        assert!(matches!(
            load_steering_stack(&t, &[a.clone(), a], &[], TokenScope::All),
            Err(SteeringError::DuplicateConcept(n)) if n == "a"
        ));
        assert!(load_steering_stack(&t, &[], &[("a".into(), 1.0)], TokenScope::All).is_err());
    }
}
