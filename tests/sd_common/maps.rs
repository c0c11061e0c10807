//! Hand-made Linear-AcT maps for the diffusion tests.

use act_studio::transport::{DatasetInfo, HookMap, MapsFile, MapsMeta, Method, ModelFingerprint, Support};

/// A Linear-AcT map `a ↦ ω·a + β` per channel with unbounded support.
pub fn linear_map(omega: Vec<f32>, beta: Vec<f32>) -> HookMap {
    let n = omega.len();
    HookMap::new(
        Method::LinearAct,
        Support::Unbounded,
        omega,
        beta,
        vec![f32::NEG_INFINITY; n],
        vec![f32::INFINITY; n],
        Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A maps file named `name` holding `hooks`, tied to the model `fingerprint`.
pub fn maps_file(name: &str, fingerprint: &ModelFingerprint, hooks: Vec<(String, HookMap)>) -> MapsFile {
    let info = DatasetInfo {
        name: name.into(),
        sha256: String::new(),
        count: 2,
    };
    let meta = MapsMeta::new(
        name,
        Method::LinearAct,
        Support::Unbounded,
        "mean",
        "causal",
        fingerprint.clone(),
        info.clone(),
        info,
    );
    MapsFile::new(meta, hooks).unwrap_or_else(|e| panic!("{e}"))
}
