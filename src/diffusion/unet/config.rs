//! The UNet's `config.json` (diffusers `UNet2DConditionModel`), parsed into what our forward
//! pass needs. Missing keys take diffusers' defaults; unsupported features are refused with
//! a clear error instead of being silently ignored.

use std::path::Path;

use serde_json::Value;

use crate::diffusion::error::{DiffusionError, Result};
use crate::diffusion::weights::read_json;

/// One down block (and its mirrored up block).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    /// Output channels.
    pub channels: usize,
    /// Whether the block has cross-attention transformers (`CrossAttnDownBlock2D`).
    pub cross_attn: bool,
    /// Attention heads (diffusers' `attention_head_dim` is, historically, the head count).
    pub heads: usize,
    /// Transformer blocks per attention (SDXL: 1, 2, 10).
    pub transformer_layers: usize,
}

/// Extra conditioning of SDXL: `addition_embed_type = "text_time"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextTimeEmbed {
    /// Sinusoidal width per time id (`addition_time_embed_dim`, 256).
    pub time_embed_dim: usize,
    /// Input width of `add_embedding.linear_1` (`projection_class_embeddings_input_dim`,
    /// 2816 = 1280 pooled text + 6 × 256).
    pub input_dim: usize,
}

/// What our UNet needs from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// Latent channels in (4).
    pub in_channels: usize,
    /// Latent channels out (4).
    pub out_channels: usize,
    /// Down blocks, first to last.
    pub blocks: Vec<BlockSpec>,
    /// ResNets per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// Norm epsilon of ResNets and the output norm.
    pub norm_eps: f64,
    /// Width of the text conditioning (768, 1024, 2048).
    pub cross_attention_dim: usize,
    /// Linear (SD 2.x, SDXL) rather than 1×1 conv projections around the transformers.
    pub use_linear_projection: bool,
    /// Sinusoidal embedding order.
    pub flip_sin_to_cos: bool,
    /// Sinusoidal frequency shift.
    pub freq_shift: f64,
    /// Padding of the downsampling convs.
    pub downsample_padding: usize,
    /// Output scale of the mid block's ResNets.
    pub mid_block_scale_factor: f64,
    /// Map inputs from [0, 1] to [-1, 1] first.
    pub center_input_sample: bool,
    /// SDXL's text/time conditioning.
    pub text_time: Option<TextTimeEmbed>,
    /// Nominal latent size (64 for 512-pixel models, 96 for 768, 128 for SDXL).
    pub sample_size: usize,
    /// Use the tanh approximation of GELU in the feed-forward GEGLU. diffusers uses the exact
    /// (erf) GELU, which is our default; candle-transformers uses the tanh approximation, so
    /// tests set this to compare with it value for value.
    pub geglu_tanh: bool,
}

fn bad(path: &Path, reason: impl Into<String>) -> DiffusionError {
    DiffusionError::BadConfig {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn get_usize(v: &Value, key: &str, default: usize, path: &Path) -> Result<usize> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| bad(path, format!("`{key}` must be a non-negative integer"))),
    }
}

fn get_f64(v: &Value, key: &str, default: f64, path: &Path) -> Result<f64> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_f64()
            .ok_or_else(|| bad(path, format!("`{key}` must be a number"))),
    }
}

fn get_bool(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// An int applied to every block, or a list with one entry per block.
fn per_block(v: &Value, key: &str, n: usize, default: usize, path: &Path) -> Result<Vec<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(vec![default; n]),
        Some(Value::Array(a)) => {
            if a.len() != n {
                return Err(bad(
                    path,
                    format!("`{key}` has {} entries for {n} blocks", a.len()),
                ));
            }
            a.iter()
                .map(|x| {
                    x.as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| bad(path, format!("`{key}` entries must be integers")))
                })
                .collect()
        }
        Some(x) => x
            .as_u64()
            .map(|k| vec![k as usize; n])
            .ok_or_else(|| bad(path, format!("`{key}` must be an integer or a list"))),
    }
}

fn strings(v: &Value, key: &str, path: &Path) -> Result<Vec<String>> {
    let a = v
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| bad(path, format!("missing `{key}`")))?;
    a.iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(path, format!("`{key}` entries must be strings")))
        })
        .collect()
}

impl UNetConfig {
    /// Reads `unet/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(&read_json(path)?, path)
    }

    /// Parses the JSON of `unet/config.json` (`path` only names it in errors).
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let channels = match v.get("block_out_channels") {
            None | Some(Value::Null) => vec![320, 640, 1280, 1280],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().map(|n| n as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad(path, "`block_out_channels` entries must be integers"))?,
            Some(_) => return Err(bad(path, "`block_out_channels` must be a list")),
        };
        let n = channels.len();
        if n == 0 || channels.contains(&0) {
            return Err(bad(path, "`block_out_channels` must list positive widths"));
        }
        let down = match v.get("down_block_types") {
            None => {
                let mut t = vec!["CrossAttnDownBlock2D".to_string(); n];
                t[n - 1] = "DownBlock2D".into();
                t
            }
            Some(_) => strings(v, "down_block_types", path)?,
        };
        if down.len() != n {
            return Err(bad(
                path,
                format!("{} down block types for {n} block widths", down.len()),
            ));
        }
        let up = match v.get("up_block_types") {
            None => down
                .iter()
                .rev()
                .map(|d| d.replace("Down", "Up"))
                .collect::<Vec<_>>(),
            Some(_) => strings(v, "up_block_types", path)?,
        };
        if up.len() != n {
            return Err(bad(path, format!("{} up block types for {n} blocks", up.len())));
        }
        let mut cross = Vec::with_capacity(n);
        for (i, d) in down.iter().enumerate() {
            let c = match d.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return Err(bad(path, format!("unsupported down block type `{other}`"))),
            };
            let expect_up = if c { "CrossAttnUpBlock2D" } else { "UpBlock2D" };
            if up[n - 1 - i] != expect_up {
                return Err(bad(
                    path,
                    format!(
                        "up block {} is `{}` but mirrors down block `{d}` (expected `{expect_up}`)",
                        n - 1 - i,
                        up[n - 1 - i]
                    ),
                ));
            }
            cross.push(c);
        }
        if let Some(mid) = v.get("mid_block_type").and_then(Value::as_str)
            && mid != "UNetMidBlock2DCrossAttn"
        {
            return Err(bad(path, format!("unsupported mid block type `{mid}`")));
        }
        // diffusers: `num_attention_heads` wins; otherwise `attention_head_dim` is the head count.
        let heads = match v.get("num_attention_heads") {
            Some(x) if !x.is_null() => per_block(v, "num_attention_heads", n, 8, path)?,
            _ => per_block(v, "attention_head_dim", n, 8, path)?,
        };
        let layers = per_block(v, "transformer_layers_per_block", n, 1, path)?;
        let mut blocks = Vec::with_capacity(n);
        for i in 0..n {
            if heads[i] == 0 || channels[i] % heads[i] != 0 {
                return Err(bad(
                    path,
                    format!(
                        "block {i}: {} channels do not split into {} heads",
                        channels[i], heads[i]
                    ),
                ));
            }
            blocks.push(BlockSpec {
                channels: channels[i],
                cross_attn: cross[i],
                heads: heads[i],
                transformer_layers: layers[i].max(1),
            });
        }
        for key in [
            "class_embed_type",
            "encoder_hid_dim_type",
            "time_cond_proj_dim",
            "num_class_embeds",
        ] {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                return Err(bad(path, format!("`{key}` is not supported")));
            }
        }
        for (key, ok) in [
            ("time_embedding_type", "positional"),
            ("attention_type", "default"),
            ("act_fn", "silu"),
        ] {
            if let Some(x) = v.get(key).and_then(Value::as_str)
                && x != ok
            {
                return Err(bad(path, format!("`{key}: {x}` is not supported (only `{ok}`)")));
            }
        }
        for key in ["conv_in_kernel", "conv_out_kernel"] {
            if v.get(key).and_then(Value::as_u64).is_some_and(|k| k != 3) {
                return Err(bad(path, format!("only `{key}: 3` is supported")));
            }
        }
        for key in [
            "timestep_post_act",
            "reverse_transformer_layers_per_block",
            "encoder_hid_dim",
        ] {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                return Err(bad(path, format!("`{key}` is not supported")));
            }
        }
        if get_bool(v, "class_embeddings_concat", false)
            || get_bool(v, "mid_block_only_cross_attention", false)
        {
            return Err(bad(
                path,
                "class_embeddings_concat / mid_block_only_cross_attention are not supported",
            ));
        }
        if v.get("resnet_time_scale_shift")
            .and_then(Value::as_str)
            .is_some_and(|s| s != "default")
        {
            return Err(bad(path, "only `resnet_time_scale_shift: default` is supported"));
        }
        if get_bool(v, "only_cross_attention", false) || get_bool(v, "dual_cross_attention", false) {
            return Err(bad(
                path,
                "only_cross_attention / dual_cross_attention are not supported",
            ));
        }
        let text_time = match v.get("addition_embed_type").and_then(Value::as_str) {
            None => None,
            Some("text_time") => Some(TextTimeEmbed {
                time_embed_dim: get_usize(v, "addition_time_embed_dim", 256, path)?,
                input_dim: get_usize(v, "projection_class_embeddings_input_dim", 2816, path)?,
            }),
            Some(other) => {
                return Err(bad(path, format!("unsupported addition_embed_type `{other}`")));
            }
        };
        let norm_num_groups = get_usize(v, "norm_num_groups", 32, path)?;
        if norm_num_groups == 0 || channels.iter().any(|c| c % norm_num_groups != 0) {
            return Err(bad(path, "block widths must be multiples of `norm_num_groups`"));
        }
        let cfg = UNetConfig {
            in_channels: get_usize(v, "in_channels", 4, path)?,
            out_channels: get_usize(v, "out_channels", 4, path)?,
            blocks,
            layers_per_block: get_usize(v, "layers_per_block", 2, path)?.max(1),
            norm_num_groups,
            norm_eps: get_f64(v, "norm_eps", 1e-5, path)?,
            cross_attention_dim: match v.get("cross_attention_dim") {
                Some(Value::Array(_)) => {
                    return Err(bad(path, "per-block cross_attention_dim is not supported"));
                }
                _ => get_usize(v, "cross_attention_dim", 1280, path)?,
            },
            use_linear_projection: get_bool(v, "use_linear_projection", false),
            flip_sin_to_cos: get_bool(v, "flip_sin_to_cos", true),
            freq_shift: get_f64(v, "freq_shift", 0.0, path)?,
            downsample_padding: get_usize(v, "downsample_padding", 1, path)?,
            mid_block_scale_factor: get_f64(v, "mid_block_scale_factor", 1.0, path)?,
            center_input_sample: get_bool(v, "center_input_sample", false),
            text_time,
            sample_size: get_usize(v, "sample_size", 64, path)?,
            geglu_tanh: false,
        };
        if cfg.in_channels == 0 || cfg.out_channels == 0 || cfg.cross_attention_dim == 0 {
            return Err(bad(
                path,
                "in/out channels and cross_attention_dim must be positive",
            ));
        }
        Ok(cfg)
    }

    /// Width of the time embedding (4 × the first block's channels).
    pub fn time_embed_dim(&self) -> usize {
        self.blocks[0].channels * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p() -> &'static Path {
        Path::new("unet/config.json")
    }

    #[test]
    fn sd15_defaults_and_sdxl_lists() {
        let sd15 = json!({"block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8,
            "cross_attention_dim": 768});
        let c = UNetConfig::from_json(&sd15, p()).unwrap();
        assert_eq!(c.blocks.len(), 4);
        assert!(c.blocks[0].cross_attn && !c.blocks[3].cross_attn);
        assert_eq!(c.blocks[2].heads, 8);
        assert!(c.text_time.is_none());

        let sdxl = json!({"block_out_channels": [320, 640, 1280],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10],
            "cross_attention_dim": 2048, "use_linear_projection": true,
            "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816});
        let c = UNetConfig::from_json(&sdxl, p()).unwrap();
        assert!(!c.blocks[0].cross_attn);
        assert_eq!(c.blocks[2].transformer_layers, 10);
        assert_eq!(c.text_time.map(|t| t.input_dim), Some(2816));
    }

    /// The `unet/config.json` files of the released checkpoints (the fields that matter).
    #[test]
    fn parses_the_released_configs() {
        let sd15 = json!({"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0",
            "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
            "center_input_sample": false, "cross_attention_dim": 768,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
            "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
            "out_channels": 4, "sample_size": 64,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]});
        let c = UNetConfig::from_json(&sd15, p()).unwrap();
        assert_eq!(
            (c.blocks[0].heads, c.cross_attention_dim, c.sample_size),
            (8, 768, 64)
        );
        assert_eq!(c.time_embed_dim(), 1280);

        let sd21 = json!({"_class_name": "UNet2DConditionModel", "act_fn": "silu",
            "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
            "center_input_sample": false, "class_embed_type": null, "cross_attention_dim": 1024,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0,
            "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
            "norm_num_groups": 32, "num_class_embeds": null, "only_cross_attention": false, "out_channels": 4,
            "resnet_time_scale_shift": "default", "sample_size": 96,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "upcast_attention": true, "use_linear_projection": true});
        let c = UNetConfig::from_json(&sd21, p()).unwrap();
        assert_eq!(
            (c.blocks[2].heads, c.use_linear_projection, c.sample_size),
            (20, true, 96)
        );

        let sdxl_turbo: Value = serde_json::from_str(r#"{"_class_name": "UNet2DConditionModel", "act_fn": "silu",
            "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "attention_type": "default",
            "block_out_channels": [320, 640, 1280], "center_input_sample": false,
            "class_embed_type": null, "class_embeddings_concat": false, "conv_in_kernel": 3,
            "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": null,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "downsample_padding": 1, "dropout": 0.0, "dual_cross_attention": false,
            "encoder_hid_dim": null, "encoder_hid_dim_type": null, "flip_sin_to_cos": true,
            "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_only_cross_attention": null,
            "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
            "norm_num_groups": 32, "num_attention_heads": null, "num_class_embeds": null,
            "only_cross_attention": false, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
            "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false, "resnet_time_scale_shift": "default",
            "reverse_transformer_layers_per_block": null, "sample_size": 64, "time_cond_proj_dim": null,
            "time_embedding_act_fn": null, "time_embedding_dim": null, "time_embedding_type": "positional",
            "timestep_post_act": null, "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "upcast_attention": null, "use_linear_projection": true}"#).unwrap();
        let c = UNetConfig::from_json(&sdxl_turbo, p()).unwrap();
        assert_eq!(
            c.blocks.iter().map(|b| b.transformer_layers).collect::<Vec<_>>(),
            [1, 2, 10]
        );
        assert_eq!(c.blocks.iter().map(|b| b.heads).collect::<Vec<_>>(), [5, 10, 20]);
        assert_eq!(
            c.text_time,
            Some(TextTimeEmbed {
                time_embed_dim: 256,
                input_dim: 2816
            })
        );
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        for bad_cfg in [
            json!({"block_out_channels": [64, 128], "down_block_types": ["DownBlock2D"]}),
            json!({"block_out_channels": [64, 128], "attention_head_dim": 7}),
            json!({"block_out_channels": [], "attention_head_dim": 8}),
            json!({"block_out_channels": [64, 128], "addition_embed_type": "image"}),
            json!({"block_out_channels": [64, 128], "class_embed_type": "timestep"}),
            json!({"block_out_channels": [64, 128], "num_class_embeds": 1000}),
            json!({"block_out_channels": [64, 128], "time_embedding_type": "fourier"}),
            json!({"block_out_channels": [64, 128], "conv_in_kernel": 1}),
            json!({"block_out_channels": [64, 128],
                "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}),
        ] {
            assert!(UNetConfig::from_json(&bad_cfg, p()).is_err(), "{bad_cfg}");
        }
    }
}
