//! The maps file: fitted transport maps of one concept, as safetensors plus JSON metadata.
//!
//! Tensors (all F32, shape `[dim]`), per hook point `h`: `h.omega`, `h.beta`, `h.lo`, `h.hi`
//! and the per-neuron diagnostics of [`super::hook_map::diag`] (`h.src_mean`, `h.w1_after`,
//! `h.auroc`, …); joint maps ([`super::joint`], format version 2) add `h.matrix`, shape
//! `[dim, dim]`. Files without a joint map are written as version 1, which every build reads. The safetensors `__metadata__` holds one key, `act_studio`, whose value is
//! the JSON of [`MapsMeta`], including a SHA-256 over all tensor data so that damaged files
//! are refused instead of silently steering with garbage.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::atomic_file::atomic_write;
use super::error::MapsError;
use super::fingerprint::ModelFingerprint;
use super::hook_map::HookMap;
use super::method::Method;
use super::support::Support;

/// The newest format version this build writes and reads: 2, which adds the `matrix` of joint
/// maps. Maps without one are written as version 1.
pub const MAPS_FORMAT_VERSION: u32 = 2;
/// The version of files that hold per-neuron maps only.
const PER_NEURON_FORMAT_VERSION: u32 = 1;
/// Tensor suffix of a joint map's matrix.
const MATRIX: &str = "matrix";
/// The safetensors metadata key holding [`MapsMeta`] as JSON.
pub const METADATA_KEY: &str = "act_studio";

/// A dataset a map was fitted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Name (file name or built-in concept name).
    pub name: String,
    /// Hex SHA-256 of the dataset's content.
    pub sha256: String,
    /// Number of samples used.
    pub count: usize,
}

/// One hook point of a maps file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookInfo {
    /// Hook point name, e.g. `layers.3.mlp_norm`.
    pub name: String,
    /// Number of neurons.
    pub dim: usize,
}

/// [`MapsMeta::pooling`] of maps fitted with every position (pixel or token) as a sample.
pub const POSITIONS_POOLING: &str = "positions";

/// Everything known about how a maps file was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapsMeta {
    /// 1, or [`MAPS_FORMAT_VERSION`] when the file holds joint maps (set by [`MapsFile::new`]).
    pub format_version: u32,
    /// `act-studio` version that wrote the file.
    pub app_version: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// The concept's name (by default the file stem).
    pub concept: String,
    /// The estimator.
    pub method: Method,
    /// The support the bounds were computed for.
    pub support: Support,
    /// How token activations were pooled per sample: `mean`, `max`, `last`, `provided`
    /// for arrays supplied by the user, or [`POSITIONS_POOLING`] (no pooling: every pixel or
    /// token a sample; the maps then act pixel by pixel on 4-D activations).
    pub pooling: String,
    /// `causal`, `simultaneous` or `arrays`.
    pub estimation: String,
    /// The hook points, in application order.
    pub hook_points: Vec<HookInfo>,
    /// The model the maps were fitted on.
    pub fingerprint: ModelFingerprint,
    /// Source dataset (moved away from).
    pub source: DatasetInfo,
    /// Target dataset (moved to).
    pub target: DatasetInfo,
    /// Hex SHA-256 over all tensors (name, NUL, little-endian data; names sorted). Filled in
    /// by [`MapsFile::new`] (and checked on load), so maps fitted in a session carry it too.
    #[serde(default)]
    pub data_sha256: String,
}

impl MapsMeta {
    /// Metadata for maps about to be saved, with the current version and time.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        concept: &str,
        method: Method,
        support: Support,
        pooling: &str,
        estimation: &str,
        fingerprint: ModelFingerprint,
        source: DatasetInfo,
        target: DatasetInfo,
    ) -> Self {
        Self {
            format_version: MAPS_FORMAT_VERSION,
            app_version: env!("CARGO_PKG_VERSION").to_string(),
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            concept: concept.to_string(),
            method,
            support,
            pooling: pooling.to_string(),
            estimation: estimation.to_string(),
            hook_points: Vec::new(),
            fingerprint,
            source,
            target,
            data_sha256: String::new(),
        }
    }
}

/// A concept's maps: metadata plus one [`HookMap`] per hook point.
#[derive(Debug, Clone, PartialEq)]
pub struct MapsFile {
    meta: MapsMeta,
    hooks: BTreeMap<String, Arc<HookMap>>,
}

impl MapsFile {
    /// Assembles a maps file. `hooks` are in application order; their names and sizes become
    /// `meta.hook_points`.
    pub fn new(mut meta: MapsMeta, hooks: Vec<(String, HookMap)>) -> Result<Self, MapsError> {
        meta.hook_points = hooks
            .iter()
            .map(|(name, m)| HookInfo {
                name: name.clone(),
                dim: m.dim(),
            })
            .collect();
        let mut map = BTreeMap::new();
        for (name, m) in hooks {
            if name.is_empty() || name.contains('\0') {
                return Err(MapsError::Invalid(format!("bad hook point name {name:?}")));
            }
            if map.insert(name.clone(), Arc::new(m)).is_some() {
                return Err(MapsError::Invalid(format!("hook point `{name}` appears twice")));
            }
        }
        meta.format_version = if map.values().any(|m| m.matrix().is_some()) {
            MAPS_FORMAT_VERSION
        } else {
            PER_NEURON_FORMAT_VERSION
        };
        let mut maps = Self { meta, hooks: map };
        let tensors = maps.tensor_bytes();
        maps.meta.data_sha256 = checksum(tensors.iter().map(|(k, (_, v))| (k.as_str(), v.as_slice())));
        Ok(maps)
    }

    /// The metadata.
    pub fn meta(&self) -> &MapsMeta {
        &self.meta
    }

    /// The map at a hook point.
    pub fn hook(&self, name: &str) -> Option<&Arc<HookMap>> {
        self.hooks.get(name)
    }

    /// Hook points with their maps, in application order.
    pub fn hooks(&self) -> impl Iterator<Item = (&str, &Arc<HookMap>)> {
        self.meta
            .hook_points
            .iter()
            .filter_map(|h| self.hooks.get(&h.name).map(|m| (h.name.as_str(), m)))
    }

    /// Refuses maps fitted on another model.
    pub fn check_fingerprint(&self, model: &ModelFingerprint) -> Result<(), MapsError> {
        if &self.meta.fingerprint != model {
            return Err(MapsError::FingerprintMismatch {
                expected: Box::new(model.clone()),
                found: Box::new(self.meta.fingerprint.clone()),
            });
        }
        Ok(())
    }

    /// The tensors of the file as name → (shape, little-endian bytes), sorted by name.
    fn tensor_bytes(&self) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
        let mut out = BTreeMap::new();
        for (name, m) in &self.hooks {
            let mut put = |suffix: &str, shape: Vec<usize>, v: &[f32]| {
                out.insert(
                    format!("{name}.{suffix}"),
                    (shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                );
            };
            let d = m.dim();
            put("omega", vec![d], m.omega());
            put("beta", vec![d], m.beta());
            put("lo", vec![d], m.lo());
            put("hi", vec![d], m.hi());
            if let Some(a) = m.matrix() {
                put(MATRIX, vec![d, d], a);
            }
            for (k, v) in m.diagnostics() {
                put(k, vec![d], v);
            }
        }
        out
    }

    /// Serialises to safetensors bytes (with the data checksum filled in).
    pub fn to_bytes(&self) -> Result<Vec<u8>, MapsError> {
        let tensors = self.tensor_bytes();
        let mut meta = self.meta.clone();
        meta.data_sha256 = checksum(tensors.iter().map(|(k, (_, v))| (k.as_str(), v.as_slice())));
        let json = serde_json::to_string(&meta).map_err(|e| MapsError::Invalid(e.to_string()))?;
        let views = tensors
            .iter()
            .map(|(k, (shape, v))| {
                TensorView::new(Dtype::F32, shape.clone(), v)
                    .map(|view| (k.clone(), view))
                    .map_err(|e| MapsError::Invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let info = HashMap::from([(METADATA_KEY.to_string(), json)]);
        safetensors::serialize(views, Some(info)).map_err(|e| MapsError::Invalid(e.to_string()))
    }

    /// Saves atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<(), MapsError> {
        let bytes = self.to_bytes()?;
        atomic_write(path, &bytes).map_err(|source| MapsError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Loads and validates a maps file: safetensors structure, metadata, version, every
    /// tensor's presence, dtype and shape, the data checksum, and finiteness.
    pub fn load(path: &Path) -> Result<Self, MapsError> {
        let bytes = super::regular_file::read_regular(path).map_err(|source| MapsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// [`MapsFile::load`] followed by [`MapsFile::check_fingerprint`].
    pub fn load_for(path: &Path, model: &ModelFingerprint) -> Result<Self, MapsError> {
        let maps = Self::load(path)?;
        maps.check_fingerprint(model)?;
        Ok(maps)
    }

    /// Parses and validates bytes read from `path` (the path is only used in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, MapsError> {
        let p = || path.to_path_buf();
        let st = SafeTensors::deserialize(bytes).map_err(|e| classify(e, bytes, path))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| classify(e, bytes, path))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| MapsError::NotAMapsFile { path: p() })?;
        let raw: serde_json::Value = serde_json::from_str(json).map_err(|e| MapsError::BadMetadata {
            path: p(),
            reason: e.to_string(),
        })?;
        let version = raw
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| MapsError::BadMetadata {
                path: p(),
                reason: "no format_version".to_string(),
            })?;
        if !(1..=u64::from(MAPS_FORMAT_VERSION)).contains(&version) {
            return Err(MapsError::UnsupportedVersion {
                path: p(),
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: MAPS_FORMAT_VERSION,
            });
        }
        let meta: MapsMeta = serde_json::from_value(raw).map_err(|e| MapsError::BadMetadata {
            path: p(),
            reason: e.to_string(),
        })?;
        if meta.hook_points.is_empty() {
            return Err(MapsError::BadMetadata {
                path: p(),
                reason: "no hook points".to_string(),
            });
        }

        // Checksum over every tensor present, before interpreting any of them.
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut views = BTreeMap::new();
        for n in &names {
            let v = st.tensor(n).map_err(|e| classify(e, bytes, path))?;
            views.insert(n.clone(), v);
        }
        let computed = checksum(views.iter().map(|(k, v)| (k.as_str(), v.data())));
        if computed != meta.data_sha256 {
            return Err(MapsError::ChecksumMismatch {
                path: p(),
                stored: meta.data_sha256.clone(),
                computed,
            });
        }

        let mut hooks = Vec::with_capacity(meta.hook_points.len());
        for h in &meta.hook_points {
            let read_shaped =
                |suffix: &str, shape: &[usize], allow_inf: bool| -> Result<Option<Vec<f32>>, MapsError> {
                    let tensor = format!("{}.{suffix}", h.name);
                    let Some(v) = views.get(&tensor) else {
                        return Ok(None);
                    };
                    if v.dtype() != Dtype::F32 {
                        return Err(MapsError::WrongDtype {
                            path: p(),
                            tensor,
                            found: format!("{:?}", v.dtype()),
                        });
                    }
                    if v.shape() != shape {
                        return Err(MapsError::ShapeMismatch {
                            path: p(),
                            tensor,
                            expected: shape.to_vec(),
                            found: v.shape().to_vec(),
                        });
                    }
                    let vals: Vec<f32> = v
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    if let Some(index) = vals
                        .iter()
                        .position(|x| x.is_nan() || (!allow_inf && x.is_infinite()))
                    {
                        return Err(MapsError::NonFiniteValue {
                            path: p(),
                            tensor,
                            index,
                        });
                    }
                    Ok(Some(vals))
                };
            let read = |suffix: &str, allow_inf: bool| read_shaped(suffix, &[h.dim], allow_inf);
            let required = |suffix: &str, allow_inf: bool| -> Result<Vec<f32>, MapsError> {
                read(suffix, allow_inf)?.ok_or_else(|| MapsError::MissingTensor {
                    path: p(),
                    tensor: format!("{}.{suffix}", h.name),
                })
            };
            let omega = required("omega", false)?;
            let beta = required("beta", false)?;
            let lo = required("lo", true)?;
            let hi = required("hi", true)?;
            let prefix = format!("{}.", h.name);
            let mut diagnostics = BTreeMap::new();
            for name in views.keys() {
                if let Some(suffix) = name.strip_prefix(&prefix)
                    && !matches!(suffix, "omega" | "beta" | "lo" | "hi" | MATRIX)
                    && !suffix.contains('.')
                    && let Some(v) = read(suffix, false)?
                {
                    diagnostics.insert(suffix.to_string(), v);
                }
            }
            let matrix = read_shaped(MATRIX, &[h.dim, h.dim], false)?;
            let bad = |reason| MapsError::BadMetadata { path: p(), reason };
            let map = match (meta.method.is_joint(), matrix) {
                (true, _) if meta.support != Support::Unbounded => {
                    return Err(bad(format!(
                        "joint maps have no per-neuron support, but the file says {}",
                        meta.support
                    )));
                }
                (true, Some(a)) => HookMap::joint(meta.method, a, beta, diagnostics).map_err(bad)?,
                (true, None) => {
                    return Err(MapsError::MissingTensor {
                        path: p(),
                        tensor: format!("{}.{MATRIX}", h.name),
                    });
                }
                (false, Some(_)) => {
                    return Err(bad(format!(
                        "hook point `{}` holds a joint matrix but the method is {}",
                        h.name,
                        meta.method.name()
                    )));
                }
                (false, None) => {
                    HookMap::new(meta.method, meta.support, omega, beta, lo, hi, diagnostics).map_err(bad)?
                }
            }
            .with_per_position(meta.pooling == POSITIONS_POOLING);
            hooks.push((h.name.clone(), map));
        }
        MapsFile::new(meta, hooks)
    }
}

/// Hex SHA-256 over `(name, data)` pairs in the given (sorted) order.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = Sha256::new();
    for (name, data) in tensors {
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    hex(&h.finalize())
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Maps a safetensors error to ours, telling a truncated file from a corrupt one.
fn classify(e: SafeTensorError, bytes: &[u8], path: &Path) -> MapsError {
    let found = bytes.len() as u64;
    if bytes.len() < 8 {
        return MapsError::Truncated {
            path: path.to_path_buf(),
            expected: 8,
            found,
        };
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n8);
    let header_end = n.saturating_add(8);
    if header_end > found && n < 100_000_000 {
        return MapsError::Truncated {
            path: path.to_path_buf(),
            expected: header_end,
            found,
        };
    }
    if matches!(e, SafeTensorError::MetadataIncompleteBuffer)
        && let Some(end) = declared_data_end(bytes, n)
        && header_end.saturating_add(end) > found
    {
        return MapsError::Truncated {
            path: path.to_path_buf(),
            expected: header_end + end,
            found,
        };
    }
    MapsError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The largest data end offset the header declares, if the header parses.
fn declared_data_end(bytes: &[u8], n: u64) -> Option<u64> {
    let header = bytes.get(8..usize::try_from(n).ok()?.checked_add(8)?)?;
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    v.as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
}
