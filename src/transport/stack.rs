//! Composition of several concepts at the same hook points, each with its own λ.
//!
//! A [`SteeringStack`] is what the user edits (concepts in order, λ sliders, on/off). Before
//! a forward pass it is compiled into a [`SteeringPlan`] indexed by the runtime's hook point
//! numbers, so the per-token hot path does no name lookups: at each hook point it runs the
//! maps of the active concepts, in stack order, each with its λ. A concept with λ = 0 or
//! switched off is left out of the plan and costs nothing.

use std::sync::Arc;

use super::error::TransportError;
use super::hook_map::HookMap;
use super::maps_file::MapsFile;
use super::scope::{TokenScope, TokenWindow};

/// The largest |λ| anything accepts: the app's extended slider range. λ = 1 is full transport
/// (the paper's setting); beyond it the affine map extrapolates, and past ~2 text and images
/// break down on every model we measured, while 1e30 turns activations (and logits) to NaN.
pub const LAMBDA_LIMIT: f32 = 2.0;

/// `v` if it is a number within ±[`LAMBDA_LIMIT`] (negative λ transports backwards).
pub fn check_lambda(v: f32) -> Result<f32, String> {
    if (-LAMBDA_LIMIT..=LAMBDA_LIMIT).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "λ = {v:?} is not a number within ±{LAMBDA_LIMIT} (1 = full transport, beyond 1 extrapolates)"
        ))
    }
}

/// One concept in the stack.
#[derive(Debug, Clone)]
pub struct Concept {
    /// Display name, used by `--lambda NAME=VALUE`.
    pub name: String,
    /// Its fitted maps.
    pub maps: Arc<MapsFile>,
    /// Strength: 0 = off, 1 = full transport, > 1 extrapolates.
    pub lambda: f32,
    /// Switched on.
    pub enabled: bool,
}

impl Concept {
    /// Whether its maps were fitted per denoising timestep ([`timestep_map_name`]).
    pub fn has_timestep_maps(&self) -> bool {
        self.maps.hooks().any(|(n, _)| split_timestep(n).1.is_some())
    }
}

/// The user's concepts, applied in order, and the token scope.
#[derive(Debug, Clone, Default)]
pub struct SteeringStack {
    /// Concepts in application order.
    pub concepts: Vec<Concept>,
    /// Which tokens are steered.
    pub scope: TokenScope,
}

/// A compiled stack: for hook point `i` (the runtime's numbering), the maps to apply in order.
#[derive(Debug, Clone, Default)]
pub struct SteeringPlan {
    per_hook: Vec<Vec<(Arc<HookMap>, f32)>>,
    scope: TokenScope,
}

impl SteeringStack {
    /// Adds a concept at the end of the stack, named after its maps file's concept.
    pub fn push(&mut self, maps: Arc<MapsFile>, lambda: f32) {
        self.concepts.push(Concept {
            name: maps.meta().concept.clone(),
            maps,
            lambda,
            enabled: true,
        });
    }

    /// Sets the λ of the concept called `name`; false if there is none.
    pub fn set_lambda(&mut self, name: &str, lambda: f32) -> bool {
        match self.concepts.iter_mut().find(|c| c.name == name) {
            Some(c) => {
                c.lambda = lambda;
                true
            }
            None => false,
        }
    }

    /// Compiles the stack for a model whose hook points are `hook_names` (index = hook id).
    /// Fails on a λ that [`check_lambda`] refuses, on an enabled concept with a map for a hook
    /// point the model lacks (it would silently steer less, or nothing), or on a map whose size
    /// differs from `dims[i]` when given. Maps fitted per denoising timestep
    /// ([`timestep_map_name`]) are refused here; see [`Self::compile_at_timestep`].
    pub fn compile(
        &self,
        hook_names: &[&str],
        dims: Option<&[usize]>,
    ) -> Result<SteeringPlan, TransportError> {
        self.compile_with(hook_names, dims, None)
    }

    /// [`Self::compile`] for the denoising step at `timestep`: a concept whose maps were
    /// fitted per timestep (entries `NAME@tK`, [`timestep_map_name`]) contributes, at each
    /// hook point, its map of the fitted timestep nearest to `timestep`; other concepts act
    /// as at every step.
    pub fn compile_at_timestep(
        &self,
        hook_names: &[&str],
        dims: Option<&[usize]>,
        timestep: f64,
    ) -> Result<SteeringPlan, TransportError> {
        self.compile_with(hook_names, dims, Some(timestep))
    }

    /// Whether an enabled, active concept holds maps fitted per timestep.
    pub fn has_timestep_maps(&self) -> bool {
        self.concepts
            .iter()
            .any(|c| c.enabled && c.lambda != 0.0 && c.has_timestep_maps())
    }

    /// The stack split into its concepts without and with maps fitted per timestep (each
    /// keeping the stack's order and scope).
    pub fn split_timestep_concepts(&self) -> (SteeringStack, SteeringStack) {
        let (timed, plain): (Vec<Concept>, Vec<Concept>) = self
            .concepts
            .iter()
            .cloned()
            .partition(Concept::has_timestep_maps);
        let stack = |concepts| SteeringStack {
            concepts,
            scope: self.scope,
        };
        (stack(plain), stack(timed))
    }

    fn compile_with(
        &self,
        hook_names: &[&str],
        dims: Option<&[usize]>,
        timestep: Option<f64>,
    ) -> Result<SteeringPlan, TransportError> {
        let mut per_hook = vec![Vec::new(); hook_names.len()];
        for c in self.concepts.iter().filter(|c| c.enabled && c.lambda != 0.0) {
            check_lambda(c.lambda).map_err(|_| TransportError::BadLambda(c.lambda))?;
            let resolved =
                resolve_timestep(&c.maps, timestep).map_err(|example| TransportError::TimestepMaps {
                    concept: c.name.clone(),
                    example,
                })?;
            let unmatched: Vec<&str> = resolved
                .iter()
                .map(|(name, _)| *name)
                .filter(|name| !hook_names.contains(name))
                .collect();
            let maps = resolved.len();
            if let Some(example) = unmatched.first().map(|s| s.to_string()) {
                return Err(if unmatched.len() == maps {
                    TransportError::NothingMatched {
                        concept: c.name.clone(),
                        maps,
                        example,
                    }
                } else {
                    TransportError::PartlyMatched {
                        concept: c.name.clone(),
                        missing: unmatched.len(),
                        maps,
                        example,
                    }
                });
            }
            for (i, name) in hook_names.iter().enumerate() {
                if let Some((_, m)) = resolved.iter().find(|(n, _)| n == name) {
                    if let Some(d) = dims.and_then(|d| d.get(i))
                        && *d != m.dim()
                    {
                        return Err(TransportError::ActivationShape {
                            hook: name.to_string(),
                            shape: vec![*d],
                            len: *d,
                            dim: m.dim(),
                        });
                    }
                    per_hook[i].push((Arc::clone(m), c.lambda));
                }
            }
        }
        Ok(SteeringPlan {
            per_hook,
            scope: self.scope,
        })
    }
}

/// The entry name of a map fitted at denoising timestep `timestep` (rounded) for hook point
/// `hook`: `HOOK@tK`, e.g. `unet.mid_block.resnets.0.norm1@t999`.
pub fn timestep_map_name(hook: &str, timestep: f64) -> String {
    format!("{hook}@t{}", timestep.round().max(0.0) as u64)
}

/// `HOOK@tK` → (`HOOK`, `Some(K)`); any other name → (name, `None`).
pub fn split_timestep(name: &str) -> (&str, Option<u64>) {
    match name.rsplit_once("@t") {
        Some((hook, k)) if !hook.is_empty() && !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => {
            (hook, k.parse().ok())
        }
        _ => (name, None),
    }
}

/// A concept's maps by hook point, for the step at `timestep` (`None`: every step): per-
/// timestep entries resolve to the nearest fitted timestep of their hook point (ties: the
/// later, i.e. smaller, timestep). Per-timestep maps without a timestep to resolve them
/// are an error naming one of them.
fn resolve_timestep(maps: &MapsFile, timestep: Option<f64>) -> Result<Vec<(&str, &Arc<HookMap>)>, String> {
    let mut out: Vec<(&str, &Arc<HookMap>, Option<f64>)> = Vec::new();
    for (name, m) in maps.hooks() {
        let (hook, k) = split_timestep(name);
        match (k, timestep) {
            (None, _) => out.push((hook, m, None)),
            (Some(_), None) => {
                return Err(name.to_string());
            }
            (Some(k), Some(t)) => {
                let d = (k as f64 - t).abs();
                match out.iter_mut().find(|(h, _, _)| *h == hook) {
                    Some(e) => {
                        if e.2.is_none_or(|best| d < best || (d == best && (k as f64) < t)) {
                            *e = (hook, m, Some(d));
                        }
                    }
                    None => out.push((hook, m, Some(d))),
                }
            }
        }
    }
    Ok(out.into_iter().map(|(h, m, _)| (h, m)).collect())
}

impl SteeringPlan {
    /// Builds a plan directly from per-hook lists of `(map, λ)` (mainly for tests and tools).
    pub fn from_parts(per_hook: Vec<Vec<(Arc<HookMap>, f32)>>, scope: TokenScope) -> Self {
        Self { per_hook, scope }
    }

    /// Whether any map acts at hook point `hook`.
    pub fn is_active(&self, hook: usize) -> bool {
        self.per_hook.get(hook).is_some_and(|v| !v.is_empty())
    }

    /// Whether the plan steers anything at all.
    pub fn is_empty(&self) -> bool {
        self.per_hook.iter().all(Vec::is_empty)
    }

    /// Whether `self` and `other` steer alike for sure: the same scope, and at every hook
    /// point the same maps (the same shared objects, not only equal ones) in the same order
    /// with the same λ, bit for bit. Plans compiled from one set of loaded concepts with the
    /// same strengths are; `false` may be a false negative, never a false positive.
    pub fn same_as(&self, other: &SteeringPlan) -> bool {
        self.scope == other.scope
            && self.per_hook.len() == other.per_hook.len()
            && self.per_hook.iter().zip(&other.per_hook).all(|(a, b)| {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ma, la), (mb, lb))| Arc::ptr_eq(ma, mb) && la.to_bits() == lb.to_bits())
            })
    }

    /// Applies every active concept at hook `hook` to a 3-D activation `[batch, tokens, dim]`.
    pub fn apply_3d(
        &self,
        hook: usize,
        hook_name: &str,
        x: &mut [f32],
        shape: [usize; 3],
        window: TokenWindow,
    ) -> Result<(), TransportError> {
        for (m, lambda) in self.per_hook.get(hook).map_or(&[][..], Vec::as_slice) {
            m.apply_3d(hook_name, x, shape, *lambda, self.scope, window)?;
        }
        Ok(())
    }

    /// Applies every active concept at hook `hook` to a 4-D activation `[batch, c, h, w]`.
    pub fn apply_4d(
        &self,
        hook: usize,
        hook_name: &str,
        x: &mut [f32],
        shape: [usize; 4],
    ) -> Result<(), TransportError> {
        for (m, lambda) in self.per_hook.get(hook).map_or(&[][..], Vec::as_slice) {
            m.apply_4d(hook_name, x, shape, *lambda)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{DatasetInfo, MapsMeta, Method, ModelFingerprint, Support};
    use std::collections::BTreeMap;

    /// Metadata of a Mean-AcT concept `c` for `d` neurons.
    fn meta(d: usize) -> MapsMeta {
        let info = DatasetInfo {
            name: "x".into(),
            sha256: String::new(),
            count: 0,
        };
        MapsMeta::new(
            "c",
            Method::MeanAct,
            Support::Unbounded,
            "mean",
            "arrays",
            ModelFingerprint::arrays(d),
            info.clone(),
            info,
        )
    }

    fn concept(hooks: &[&str]) -> Arc<MapsFile> {
        let meta = meta(2);
        let hooks = hooks
            .iter()
            .map(|h| (h.to_string(), HookMap::identity(Method::MeanAct, 2)))
            .collect();
        Arc::new(MapsFile::new(meta, hooks).unwrap())
    }

    #[test]
    fn concepts_that_match_nothing_or_part_are_refused() {
        let model = ["layers.0.mlp_norm", "layers.1.mlp_norm"];
        let mut stack = SteeringStack::default();
        stack.push(concept(&["layers.0.mlp_norm", "layers.1.mlp_norm"]), 1.0);
        assert!(stack.compile(&model, None).is_ok());
        let mut other = SteeringStack::default();
        other.push(concept(&["blocks.0.norm"]), 1.0);
        let e = other.compile(&model, None).unwrap_err();
        assert!(matches!(e, TransportError::NothingMatched { .. }), "{e}");
        assert!(e.to_string().contains("steers nothing"), "{e}");
        let mut part = SteeringStack::default();
        part.push(concept(&["layers.0.mlp_norm", "layers.7.mlp_norm"]), 1.0);
        let e = part.compile(&model, None).unwrap_err();
        assert!(
            matches!(
                e,
                TransportError::PartlyMatched {
                    missing: 1,
                    maps: 2,
                    ..
                }
            ),
            "{e}"
        );
        // Off or at λ = 0 it steers nothing on purpose: no error.
        other.set_lambda("c", 0.0);
        assert!(other.compile(&model, None).is_ok());
    }

    #[test]
    fn plans_of_the_same_maps_and_strengths_are_the_same_and_others_are_not() {
        let model = ["layers.0.mlp_norm", "layers.1.mlp_norm"];
        let (a, b) = (concept(&["layers.0.mlp_norm"]), concept(&["layers.1.mlp_norm"]));
        let plan = |concepts: &[(&Arc<MapsFile>, f32)], scope: TokenScope| {
            let mut s = SteeringStack {
                scope,
                ..Default::default()
            };
            for (c, l) in concepts {
                s.push(Arc::clone(c), *l);
            }
            s.compile(&model, None).unwrap()
        };
        let base = plan(&[(&a, 0.5), (&b, 1.0)], TokenScope::All);
        assert!(base.same_as(&plan(&[(&a, 0.5), (&b, 1.0)], TokenScope::All)));
        assert!(
            !base.same_as(&plan(&[(&a, 0.5), (&b, 0.75)], TokenScope::All)),
            "another λ"
        );
        assert!(
            !base.same_as(&plan(&[(&a, 0.5)], TokenScope::All)),
            "a concept fewer"
        );
        assert!(
            !base.same_as(&plan(&[(&a, 0.5), (&b, 1.0)], TokenScope::LastToken)),
            "another scope"
        );
        // Equal maps loaded twice are not taken as the same (no false positives).
        let a2 = concept(&["layers.0.mlp_norm"]);
        assert!(!base.same_as(&plan(&[(&a2, 0.5), (&b, 1.0)], TokenScope::All)));
    }

    #[test]
    fn lambdas_beyond_the_limit_or_not_numbers_are_refused() {
        let model = ["layers.0.mlp_norm"];
        for (l, ok) in [
            (1.0, true),
            (-2.0, true),
            (2.0, true),
            (2.5, false),
            (1e30, false),
            (f32::NAN, false),
        ] {
            let mut s = SteeringStack::default();
            s.push(concept(&["layers.0.mlp_norm"]), l);
            assert_eq!(s.compile(&model, None).is_ok(), ok, "λ = {l}");
            assert_eq!(check_lambda(l).is_ok(), ok, "λ = {l}");
        }
    }

    #[test]
    fn timestep_maps_resolve_to_the_nearest_fitted_timestep() {
        assert_eq!(timestep_map_name("unet.norm", 999.4), "unet.norm@t999");
        assert_eq!(split_timestep("unet.norm@t999"), ("unet.norm", Some(999)));
        for plain in ["unet.norm", "a@t", "@t5", "x@tnine", "mail@town"] {
            assert_eq!(split_timestep(plain), (plain, None), "{plain}");
        }
        let meta = meta(1);
        let shift = |b: f32| {
            HookMap::new(
                Method::MeanAct,
                Support::Unbounded,
                vec![1.0],
                vec![b],
                vec![f32::NEG_INFINITY],
                vec![f32::INFINITY],
                BTreeMap::new(),
            )
            .unwrap()
        };
        let maps = vec![
            (timestep_map_name("n", 900.0), shift(9.0)),
            (timestep_map_name("n", 500.0), shift(5.0)),
            (timestep_map_name("n", 100.0), shift(1.0)),
        ];
        let mut stack = SteeringStack::default();
        stack.push(Arc::new(MapsFile::new(meta, maps).unwrap()), 1.0);
        assert!(stack.has_timestep_maps());
        let model = ["other", "n"];
        let e = stack.compile(&model, None).unwrap_err();
        assert!(matches!(e, TransportError::TimestepMaps { .. }), "{e}");
        for (t, want) in [(999.0, 9.0), (720.0, 9.0), (650.0, 5.0), (300.0, 1.0), (0.0, 1.0)] {
            let plan = stack.compile_at_timestep(&model, Some(&[1, 1]), t).unwrap();
            assert!(!plan.is_active(0));
            let mut x = [0.0f32];
            plan.apply_4d(1, "n", &mut x, [1, 1, 1, 1]).unwrap();
            assert_eq!(x[0], want, "t = {t}");
        }
        // A tie goes to the smaller (later) timestep.
        let plan = stack.compile_at_timestep(&model, None, 300.0).unwrap();
        let mut x = [0.0f32];
        plan.apply_4d(1, "n", &mut x, [1, 1, 1, 1]).unwrap();
        assert_eq!(x[0], 1.0);
        assert!(stack.compile_at_timestep(&["n@t900"], None, 900.0).is_err());
    }
}
