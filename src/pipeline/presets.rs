//! The hook presets of language models and the λ values users type, parsed in one place for
//! the CLI, the worker and the app.
//!
//! Presets name sets of hook points by the paper's terms (docs/ARCHITECTURE.md, "Hook points"): `post-ln`, `attention`, `mlp`, `all-ln`, `residual`, each optionally limited
//! to a layer range. Image models have their own presets
//! ([`super::diffusion_fit::IMAGE_PRESETS`]).

use crate::runtime::{HookKind, HookPoint};

/// The preset `fit` uses unless told otherwise (chosen by the measurements in the README).
pub const DEFAULT_PRESET: &str = "all-ln";

/// Every preset with a one-line description, in the order the app lists them.
pub const PRESETS: [(&str, &str); 5] = [
    (
        "all-ln",
        "both norms of every layer (default: strongest fluent steering on SmolLM2)",
    ),
    ("attention", "attention outputs (gentle)"),
    ("post-ln", "pre-MLP norms (the paper's Post-LN on Llama)"),
    ("mlp", "MLP outputs"),
    ("residual", "residual stream (strong, degrades text)"),
];

/// Hook points of a preset over `n_layers` layers (the paper's names): `post-ln` (on Llama:
/// every `mlp_norm`), `attention` (`attn_out`), `mlp` (`mlp_out`), `all-ln` (`attn_norm` and
/// `mlp_norm`), `residual` (`resid`), optionally limited to a layer range (`post-ln:0-14`,
/// `mlp:20`); or a comma-separated list of hook point names.
pub fn hook_points(spec: &str, n_layers: usize) -> std::result::Result<Vec<HookPoint>, String> {
    let spec = spec.trim();
    let (preset, range) = match spec.split_once(':') {
        Some((p, r)) => (p, Some(r)),
        None => (spec, None),
    };
    let kinds: &[HookKind] = match preset.to_ascii_lowercase().as_str() {
        "post-ln" | "postln" | "mlp-norm" => &[HookKind::MlpNorm],
        "attention" | "attn" => &[HookKind::AttnOut],
        "mlp" => &[HookKind::MlpOut],
        "all-ln" | "allln" => &[HookKind::AttnNorm, HookKind::MlpNorm],
        "residual" | "resid" => &[HookKind::Resid],
        _ if range.is_some() => {
            return Err(format!(
                "`{preset}` is not a preset (post-ln, attention, mlp, all-ln, residual)"
            ));
        }
        _ => {
            return spec
                .split(',')
                .map(|s| {
                    HookPoint::parse(s.trim())
                        .filter(|p| p.layer < n_layers)
                        .ok_or_else(|| format!("`{}` is not a hook point of this model (layers.0..{}.KIND, or a preset: post-ln, attention, mlp, all-ln, residual)", s.trim(), n_layers.saturating_sub(1)))
                })
                .collect();
        }
    };
    let layers = match range {
        None => 0..n_layers,
        Some(r) => {
            let bad = || {
                format!(
                    "`{r}` is not a layer range of this model (e.g. 0-{}, or one layer)",
                    n_layers.saturating_sub(1)
                )
            };
            let (a, b) = match r.split_once('-') {
                Some((a, b)) => (a.trim().parse::<usize>(), b.trim().parse::<usize>()),
                None => (r.trim().parse::<usize>(), r.trim().parse::<usize>()),
            };
            match (a, b) {
                (Ok(a), Ok(b)) if a <= b && b < n_layers => a..b + 1,
                _ => return Err(bad()),
            }
        }
    };
    Ok(layers
        .flat_map(|layer| kinds.iter().map(move |&kind| HookPoint { layer, kind }))
        .collect())
}

/// One λ: a finite number.
pub fn parse_lambda(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("`{}` is not a finite number", s.trim())),
    }
}

/// A comma-separated list of λ values (`0, 0.5, 1`); empty items are skipped, an empty list is
/// an error.
pub fn parse_lambda_list(text: &str) -> Result<Vec<f32>, String> {
    let v = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_lambda)
        .collect::<Result<Vec<f32>, String>>()
        .map_err(|e| format!("`{text}` is not a list of λ values: {e}"))?;
    if v.is_empty() {
        return Err(format!("`{text}` is not a list of λ values"));
    }
    Ok(v)
}

/// `NAME=VALUE`: a concept's strength (`football=0.8`).
pub fn parse_named_lambda(s: &str) -> Result<(String, f32), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=VALUE, e.g. football=1.0"))?;
    let v: f32 = value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("λ = {v} is not finite"));
    }
    Ok((name.trim().to_string(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_ranges_name_the_right_hook_points() {
        let all = hook_points(DEFAULT_PRESET, 4).unwrap();
        assert_eq!(all.len(), 8);
        let post = hook_points("post-ln:1-2", 4).unwrap();
        assert_eq!(
            post.iter().map(|p| p.name()).collect::<Vec<_>>(),
            ["layers.1.mlp_norm", "layers.2.mlp_norm"]
        );
        assert!(PRESETS.iter().all(|(p, _)| hook_points(p, 2).is_ok()));
        assert!(hook_points("layers.9.mlp_norm", 4).is_err());
        assert!(hook_points("nonsense:0-1", 4).is_err());
    }

    #[test]
    fn lambda_lists_and_named_lambdas() {
        assert_eq!(parse_lambda_list("0, 0.5,1,").unwrap(), vec![0.0, 0.5, 1.0]);
        for bad in ["", " , ", "0,x", "0,inf", "NaN"] {
            assert!(parse_lambda_list(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_named_lambda(" football = -0.5").unwrap(),
            ("football".into(), -0.5)
        );
        assert!(parse_named_lambda("football").is_err());
        assert!(parse_named_lambda("football=inf").is_err());
        assert_eq!(parse_lambda(" 2 ").unwrap(), 2.0);
    }
}
