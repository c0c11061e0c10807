//! The hook presets of language models and the λ values users type, parsed in one place for
//! the CLI, the worker and the app.
//!
//! Presets name sets of hook points by the paper's terms (docs/ARCHITECTURE.md, "Hook points"): `post-ln`, `attention`, `mlp`, `all-ln`, `residual`, each optionally limited
//! to a layer range. Image models have their own presets
//! ([`super::diffusion_fit::IMAGE_PRESETS`]).

use crate::runtime::config::{Family, ModelConfig};
use crate::runtime::sampling;
use crate::runtime::{HookKind, HookPoint};

/// The preset `fit` uses unless told otherwise: `default`, the measured choice for the model's
/// family ([`family_default`]).
pub const DEFAULT_PRESET: &str = "default";

/// The preset `default` stands for on a model family, chosen by the preset × support
/// measurements in the README: `all-ln` on Llama-family models (SmolLM2: strongest steering
/// with fluent text), `post-ln` on Gemma (Gemma 3 270M: 84 % football presence at λ = 1 where
/// `all-ln`, with its four norms per layer, breaks the text).
pub fn family_default(family: Family) -> &'static str {
    match family {
        Family::Gemma => "post-ln",
        _ => "all-ln",
    }
}

/// Every preset with a one-line description, in the order the app lists them.
pub const PRESETS: [(&str, &str); 6] = [
    (
        "default",
        "the measured choice for the model: all-ln on Llama (SmolLM2), post-ln on Gemma",
    ),
    (
        "all-ln",
        "every norm of every layer (both on Llama, all four on Gemma)",
    ),
    ("attention", "attention outputs (gentle)"),
    (
        "post-ln",
        "the paper's Post-LN: post-norms on Gemma, pre-MLP norms on Llama",
    ),
    ("mlp", "MLP outputs"),
    ("residual", "residual stream (strong, degrades text)"),
];

/// Hook points of a preset over `n_layers` layers of a Llama-structured model (the paper's
/// names): `post-ln` (on Llama: every `mlp_norm`), `attention` (`attn_out`), `mlp` (`mlp_out`),
/// `all-ln` (`attn_norm` and `mlp_norm`), `residual` (`resid`), optionally limited to a layer
/// range (`post-ln:0-14`, `mlp:20`); or a comma-separated list of hook point names.
pub fn hook_points(spec: &str, n_layers: usize) -> std::result::Result<Vec<HookPoint>, String> {
    resolve(spec, Family::Llama, n_layers, None)
}

/// [`hook_points`] for the model `cfg` describes: on Gemma, which has true post-norms, `post-ln`
/// is every `post_attn_norm` and `post_mlp_norm` (the paper's Post-LN) and `all-ln` every norm
/// (`attn_norm`, `post_attn_norm`, `mlp_norm`, `post_mlp_norm`); named points must exist in
/// the model.
pub fn hook_points_for(spec: &str, cfg: &ModelConfig) -> std::result::Result<Vec<HookPoint>, String> {
    let have = crate::runtime::hooks::hook_points(cfg);
    resolve(spec, cfg.family, cfg.n_layers, Some(&have))
}

fn resolve(
    spec: &str,
    family: Family,
    n_layers: usize,
    have: Option<&[HookPoint]>,
) -> std::result::Result<Vec<HookPoint>, String> {
    let spec = spec.trim();
    let (preset, range) = match spec.split_once(':') {
        Some((p, r)) => (p, Some(r)),
        None => (spec, None),
    };
    let preset = if preset.eq_ignore_ascii_case("default") {
        family_default(family)
    } else {
        preset
    };
    let gemma = family == Family::Gemma;
    let kinds: &[HookKind] = match preset.to_ascii_lowercase().as_str() {
        "post-ln" | "postln" if gemma => &[HookKind::PostAttnNorm, HookKind::PostMlpNorm],
        "post-ln" | "postln" | "mlp-norm" => &[HookKind::MlpNorm],
        "attention" | "attn" => &[HookKind::AttnOut],
        "mlp" => &[HookKind::MlpOut],
        "all-ln" | "allln" if gemma => &[
            HookKind::AttnNorm,
            HookKind::PostAttnNorm,
            HookKind::MlpNorm,
            HookKind::PostMlpNorm,
        ],
        "all-ln" | "allln" => &[HookKind::AttnNorm, HookKind::MlpNorm],
        "residual" | "resid" => &[HookKind::Resid],
        _ if range.is_some() => {
            return Err(format!(
                "`{preset}` is not a preset (default, post-ln, attention, mlp, all-ln, residual)"
            ));
        }
        _ => {
            return spec
                .split(',')
                .map(|s| {
                    HookPoint::parse(s.trim())
                        .filter(|p| p.layer < n_layers && have.is_none_or(|h| h.contains(p)))
                        .ok_or_else(|| format!("`{}` is not a hook point of this model (layers.0..{}.KIND, or a preset: default, post-ln, attention, mlp, all-ln, residual)", s.trim(), n_layers.saturating_sub(1)))
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

/// One λ: a number within ±[`crate::transport::LAMBDA_LIMIT`].
pub fn parse_lambda(s: &str) -> Result<f32, String> {
    let v = s
        .trim()
        .parse::<f32>()
        .map_err(|_| format!("`{}` is not a number", s.trim()))?;
    crate::transport::check_lambda(v)
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

/// A number, then checked by `check`.
fn parse_checked(s: &str, check: fn(f32) -> Result<f32, String>) -> Result<f32, String> {
    let v = s
        .trim()
        .parse::<f32>()
        .map_err(|_| format!("`{}` is not a number", s.trim()))?;
    check(v)
}

/// A sampling temperature (the rule of [`sampling::check_temperature`], which the worker
/// applies to every request too).
pub fn parse_temperature(s: &str) -> Result<f32, String> {
    parse_checked(s, sampling::check_temperature)
}

/// A top-p value ([`sampling::check_top_p`]).
pub fn parse_top_p(s: &str) -> Result<f32, String> {
    parse_checked(s, sampling::check_top_p)
}

/// A repetition penalty ([`sampling::check_repetition_penalty`]).
pub fn parse_repetition_penalty(s: &str) -> Result<f32, String> {
    parse_checked(s, sampling::check_repetition_penalty)
}

/// A frequency penalty ([`sampling::check_openai_penalty`]).
pub fn parse_frequency_penalty(s: &str) -> Result<f32, String> {
    parse_checked(s, |v| sampling::check_openai_penalty("frequency penalty", v))
}

/// A presence penalty ([`sampling::check_openai_penalty`]).
pub fn parse_presence_penalty(s: &str) -> Result<f32, String> {
    parse_checked(s, |v| sampling::check_openai_penalty("presence penalty", v))
}

/// `NAME=VALUE`: a concept's strength (`football=0.8`).
pub fn parse_named_lambda(s: &str) -> Result<(String, f32), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=VALUE, e.g. football=1.0"))?;
    Ok((name.trim().to_string(), parse_lambda(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_ranges_name_the_right_hook_points() {
        let all = hook_points(DEFAULT_PRESET, 4).unwrap();
        assert_eq!(all, hook_points("all-ln", 4).unwrap());
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
    fn post_ln_means_the_post_norms_on_gemma() {
        use crate::runtime::config::GemmaConfig;
        let cfg = ModelConfig {
            architecture: "gemma3".into(),
            family: Family::Gemma,
            hidden_size: 8,
            n_layers: 3,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            intermediate_size: 16,
            vocab_size: 10,
            max_position: 32,
            rope_theta: 1e6,
            rope_interleaved: false,
            norm_eps: 1e-6,
            qkv_bias: false,
            gemma: Some(GemmaConfig {
                embed_scale: 8f32.sqrt(),
                query_pre_attn_scalar: 4.0,
                attn_softcap: None,
                final_softcap: None,
                sliding_window: Some(4),
                sliding: vec![true, true, false],
                local_rope_theta: 1e4,
                global_rope_scale: 1.0,
                qk_norm: true,
            }),
        };
        let names = |spec| {
            hook_points_for(spec, &cfg)
                .unwrap()
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("post-ln:1"),
            ["layers.1.post_attn_norm", "layers.1.post_mlp_norm"]
        );
        assert_eq!(names("all-ln").len(), 12);
        // `default` is the family's measured choice, with a range like any preset.
        assert_eq!(names("default"), names("post-ln"));
        assert_eq!(names("default:1"), names("post-ln:1"));
        assert_eq!(names("layers.2.post_mlp_norm"), ["layers.2.post_mlp_norm"]);
        let llama = ModelConfig {
            family: Family::Llama,
            gemma: None,
            ..cfg.clone()
        };
        assert_eq!(
            hook_points_for("post-ln:1", &llama).unwrap(),
            hook_points("post-ln:1", 3).unwrap()
        );
        assert!(hook_points_for("layers.0.post_mlp_norm", &llama).is_err());
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
