//! llama.cpp's quantization mixes: which GGML type each tensor of a model gets when a file is
//! quantized to `q4_k_m`, `q5_k_m`, `q8_0`, … (the rule behind `pipeline::quantize_model`).
//!
//! Written from our reading of llama.cpp's `src/llama-quant.cpp` (2024–2025): which tensors are
//! quantized at all follows `llama_model_quantize_impl`, the type of each follows
//! `llama_tensor_get_type`. Only the branches the types offered here can reach are written;
//! the IQ*, TQ*, Q2_K and Q3_K branches and the importance-matrix (`--imatrix`) rules are left
//! out, as are `llama-quantize`'s overrides (`--output-tensor-type`, `--token-embedding-type`,
//! `--pure`). Pure functions: no I/O, no model.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;

/// A target file type, named as `llama-quantize` names it (case-insensitive when parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// Every quantized tensor Q4_0 (output Q6_K).
    Q4_0,
    /// Q4_1 (output Q6_K).
    Q4_1,
    /// Q5_0 (output Q6_K).
    Q5_0,
    /// Q5_1 (output Q6_K).
    Q5_1,
    /// Q8_0 everywhere.
    Q8_0,
    /// Q4_K, with Q5_K for the first `attn_v` and the first eighth of `ffn_down`.
    Q4KS,
    /// Q4_K, with Q6_K for half of `attn_v` and `ffn_down` ("use more bits" layers).
    Q4KM,
    /// Q5_K (output Q6_K).
    Q5KS,
    /// Q5_K, with Q6_K for half of `attn_v` and `ffn_down`.
    Q5KM,
    /// Q6_K everywhere.
    Q6K,
}

impl QuantType {
    /// Every type offered, smallest files first within each family.
    pub const ALL: [QuantType; 10] = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q4KS,
        QuantType::Q4KM,
        QuantType::Q5KS,
        QuantType::Q5KM,
        QuantType::Q6K,
    ];

    /// The name on the command line (`q4_k_m`).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q4_0 => "q4_0",
            QuantType::Q4_1 => "q4_1",
            QuantType::Q5_0 => "q5_0",
            QuantType::Q5_1 => "q5_1",
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4KS => "q4_k_s",
            QuantType::Q4KM => "q4_k_m",
            QuantType::Q5KS => "q5_k_s",
            QuantType::Q5KM => "q5_k_m",
            QuantType::Q6K => "q6_k",
        }
    }

    /// llama.cpp's `LLAMA_FTYPE_MOSTLY_*` number, stored as `general.file_type`.
    pub fn llama_ftype(self) -> u32 {
        match self {
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q8_0 => 7,
            QuantType::Q5_0 => 8,
            QuantType::Q5_1 => 9,
            QuantType::Q4KS => 14,
            QuantType::Q4KM => 15,
            QuantType::Q5KS => 16,
            QuantType::Q5KM => 17,
            QuantType::Q6K => 18,
        }
    }

    /// The type most tensors get (`default_type` in `llama_model_quantize_impl`).
    pub fn base_type(self) -> GgmlDType {
        match self {
            QuantType::Q4_0 => GgmlDType::Q4_0,
            QuantType::Q4_1 => GgmlDType::Q4_1,
            QuantType::Q5_0 => GgmlDType::Q5_0,
            QuantType::Q5_1 => GgmlDType::Q5_1,
            QuantType::Q8_0 => GgmlDType::Q8_0,
            QuantType::Q4KS | QuantType::Q4KM => GgmlDType::Q4K,
            QuantType::Q5KS | QuantType::Q5KM => GgmlDType::Q5K,
            QuantType::Q6K => GgmlDType::Q6K,
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown type name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown quantization type `{0}` (choose one of {names})", names = type_names())]
pub struct UnknownQuantType(pub String);

fn type_names() -> String {
    QuantType::ALL.map(QuantType::name).join(", ")
}

impl FromStr for QuantType {
    type Err = UnknownQuantType;

    /// Case-insensitive, `-` for `_` accepted; `q4_k` and `q5_k` mean `q4_k_m` and `q5_k_m`
    /// as in `llama-quantize`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let alias = match norm.as_str() {
            "q4_k" => Some(QuantType::Q4KM),
            "q5_k" => Some(QuantType::Q5KM),
            _ => None,
        };
        alias
            .or_else(|| QuantType::ALL.into_iter().find(|t| t.name() == norm))
            .ok_or_else(|| UnknownQuantType(s.to_string()))
    }
}

/// ggml's name of a type (`q4_K`, `q8_0`, `f32`), as llama.cpp prints it.
pub fn ggml_type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_K",
        GgmlDType::Q3K => "q3_K",
        GgmlDType::Q4K => "q4_K",
        GgmlDType::Q5K => "q5_K",
        GgmlDType::Q6K => "q6_K",
        GgmlDType::Q8K => "q8_K",
    }
}

/// The model-wide facts the rule reads (llama.cpp reads them from the model's hparams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixModel {
    /// `general.architecture` (`falcon` has rules of its own).
    pub arch: String,
    /// `{arch}.block_count`: `n_layer`, the denominator of the `ffn_down` rules.
    pub n_layer: usize,
    /// `{arch}.expert_count` (0 or 1: not a mixture of experts).
    pub n_expert: usize,
    /// llama.cpp's `LLM_TYPE_70B` (its attn_v gets Q5_K instead of Q4_K). llama.cpp sets it
    /// per architecture from the layer count; for the architectures this runtime loads we take
    /// 80 layers with grouped-query attention (`llama`, `mistral`) or 80 layers (`qwen2`).
    /// Unsure for other architectures: callers may leave it false there.
    pub is_70b: bool,
}

/// One tensor of the input file, as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixTensor<'a> {
    /// GGUF name (`blk.3.ffn_down.weight`).
    pub name: &'a str,
    /// Shape in candle's (row-major) order: the last entry is ggml's `ne0`, the row length.
    pub dims: &'a [usize],
}

/// Why a tensor cannot take the type the mix asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    /// The row length is not a multiple of the type's block, and llama.cpp has no fallback for
    /// that type (it stops with "Unsupported tensor size encountered").
    #[error(
        "tensor `{name}`: rows of {ne0} values cannot be stored as {ty} (blocks of {block} values), \
         and llama.cpp has no fallback type for it"
    )]
    RowLength {
        name: String,
        ne0: usize,
        ty: &'static str,
        block: usize,
    },
    /// A mixture-of-experts `ffn_down` tensor without a usable `blk.N.` layer number.
    #[error("tensor `{name}`: no layer number `blk.N.` below {n_layer} in its name")]
    BadLayer { name: String, n_layer: usize },
}

/// Whether `llama_model_quantize_impl` quantizes a tensor at all: names ending in `weight`
/// with at least 2 dimensions, except norms, MoE router (`ffn_gate_inp`), position and
/// token-type embeddings, and the small 2-D weights of Mamba, RWKV and T5 it lists. Tensors
/// it does not quantize (1-D norms and biases, above all) are copied as they are. The
/// exclusion list is llama.cpp's as we know it; newer versions may have added names.
pub fn quantizes(name: &str, n_dims: usize) -> bool {
    const NEVER: [&str; 13] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ssm_conv1d.weight",
        "shortconv.conv.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "attn_rel_b.weight",
    ];
    name.ends_with("weight")
        && n_dims >= 2
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !NEVER.iter().any(|s| name.contains(s))
}

/// The target type of every tensor (same order as `tensors`): `None` for a tensor that is not
/// quantized ([`quantizes`]), copied as it is; `Some(t)` otherwise (llama.cpp copies the tensor
/// unchanged when it already has type `t`).
///
/// llama.cpp visits tensors sorted by layer (`blk.N.`, other tensors first) and then by name
/// (`weight_name_comparer` of its model loader) and counts `attn_v` and `ffn_down` tensors as
/// it goes: the "which layer" of its rules is that running count. We visit in the same order,
/// so the counts match llama.cpp's whatever the order of `tensors`.
pub fn plan_mix(
    mix: QuantType,
    model: &MixModel,
    tensors: &[MixTensor<'_>],
) -> Result<Vec<Option<GgmlDType>>, MixError> {
    let mut state = MixState {
        has_output: tensors.iter().any(|t| t.name == "output.weight"),
        // As llama.cpp counts `n_attention_wv` (attn_kv_b: DeepSeek-2's fused k/v).
        n_attention_wv: tensors
            .iter()
            .filter(|t| {
                ["attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight"]
                    .iter()
                    .any(|s| t.name.contains(s))
            })
            .count(),
        i_attention_wv: 0,
        i_ffn_down: 0,
    };
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            (
                layer_of(tensors[i].name).map_or(-1, |l| l as i64),
                tensors[i].name,
            )
        };
        key(a).cmp(&key(b))
    });
    let mut out = vec![None; tensors.len()];
    for i in order {
        let t = tensors[i];
        if quantizes(t.name, t.dims.len()) {
            let ne0 = t.dims.last().copied().unwrap_or(0);
            out[i] = Some(tensor_type(mix, model, &mut state, t.name, ne0)?);
        }
    }
    Ok(out)
}

/// llama.cpp's `quantize_state_impl`, the part these rules use.
#[derive(Debug, Clone)]
struct MixState {
    /// The file has `output.weight` (else the token embedding doubles as the output and gets
    /// the output's type).
    has_output: bool,
    n_attention_wv: usize,
    i_attention_wv: usize,
    i_ffn_down: usize,
}

/// The `N` of a `blk.N.` name (what llama.cpp's `sscanf(name, "blk.%d.", …)` reads).
pub fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third layer
/// in between get more bits (`i < n/8 || i >= 7n/8 || (i − n/8) % 3 == 2`, C's truncating `%`).
pub fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama.cpp's `llama_tensor_get_type` for the types of [`QuantType`], then its fallback for
/// rows that do not fill whole blocks: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0 (Q2_K, Q3_K →
/// IQ4_NL in llama.cpp, which no mix here chooses), and F16 when the fallback's block does
/// not divide the row either; any other type is an error, as in llama.cpp.
fn tensor_type(
    mix: QuantType,
    model: &MixModel,
    st: &mut MixState,
    name: &str,
    ne0: usize,
) -> Result<GgmlDType, MixError> {
    use GgmlDType::{F16, Q4K, Q5_0, Q5_1, Q5K, Q6K, Q8_0};
    let falcon = model.arch == "falcon";
    let mut t = mix.base_type();
    if name == "output.weight" || (!st.has_output && name == "token_embd.weight") {
        // The output projection (or a tied embedding): Q6_K unless the mix is Q8_0; Q8_0 when
        // the row does not fill the base type's blocks (and always for Falcon).
        if falcon || !ne0.is_multiple_of(t.block_size()) {
            t = Q8_0;
        } else if t != Q8_0 {
            t = Q6K;
        }
    } else if name == "token_embd.weight" {
        // Only the IQ* and TQ* mixes change an untied token embedding.
    } else if name.contains("attn_v.weight") {
        match mix {
            QuantType::Q4KM | QuantType::Q5KM if use_more_bits(st.i_attention_wv, st.n_attention_wv) => {
                t = Q6K
            }
            QuantType::Q4KS if st.i_attention_wv < 4 => t = GgmlDType::Q5K,
            _ => {}
        }
        if model.is_70b && matches!(t, GgmlDType::Q3K | Q4K) {
            t = Q5K;
        }
        if model.n_expert == 8 {
            t = Q8_0;
        }
        st.i_attention_wv += 1;
    } else if name.contains("attn_k.weight") {
        if model.n_expert == 8 {
            t = Q8_0;
        }
    } else if name.contains("attn_q.weight") {
        // Only the IQ* mixes change attn_q.
    } else if name.contains("ffn_down") {
        let (i, n) = if model.n_expert > 1 {
            // Experts are not stored in layer order: llama.cpp reads the layer from the name.
            match layer_of(name) {
                Some(l) if l < model.n_layer => (l, model.n_layer),
                _ => {
                    return Err(MixError::BadLayer {
                        name: name.to_string(),
                        n_layer: model.n_layer,
                    });
                }
            }
        } else {
            (st.i_ffn_down, model.n_layer)
        };
        match mix {
            QuantType::Q4KM if falcon => {
                t = if i < n / 16 {
                    Q6K
                } else if use_more_bits(i, n) {
                    Q5K
                } else {
                    Q4K
                }
            }
            QuantType::Q4KM | QuantType::Q5KM if use_more_bits(i, n) => t = Q6K,
            QuantType::Q4KS if !falcon && i < n / 8 => t = Q5K,
            _ => {}
        }
        st.i_ffn_down += 1;
    } else if name.contains("attn_output.weight") {
        if !falcon && model.n_expert == 8 && matches!(mix, QuantType::Q4KS | QuantType::Q4KM) {
            t = Q5K;
        }
    } else if name.contains("attn_qkv.weight") {
        match mix {
            QuantType::Q4KM => t = Q5K,
            QuantType::Q5KM => t = Q6K,
            _ => {}
        }
    }
    if !ne0.is_multiple_of(t.block_size()) {
        let fallback = match t {
            Q4K => Q5_0,
            Q5K => Q5_1,
            Q6K => Q8_0,
            other => {
                return Err(MixError::RowLength {
                    name: name.to_string(),
                    ne0,
                    ty: ggml_type_name(other),
                    block: other.block_size(),
                });
            }
        };
        t = if ne0.is_multiple_of(fallback.block_size()) {
            fallback
        } else {
            F16
        };
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlDType::{F16, Q4_0, Q4K, Q5_0, Q5_1, Q5K, Q6K, Q8_0};

    /// The tensors of a Llama-family GGUF (names and shapes as llama.cpp writes them).
    fn llama_tensors(
        n_layer: usize,
        d: usize,
        kv: usize,
        ffn: usize,
        vocab: usize,
        tied: bool,
        bias: bool,
    ) -> Vec<(String, Vec<usize>)> {
        let mut v = vec![
            ("token_embd.weight".to_string(), vec![vocab, d]),
            ("output_norm.weight".to_string(), vec![d]),
        ];
        if !tied {
            v.push(("output.weight".to_string(), vec![vocab, d]));
        }
        for i in 0..n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            v.push((p("attn_norm.weight"), vec![d]));
            v.push((p("attn_q.weight"), vec![d, d]));
            v.push((p("attn_k.weight"), vec![kv, d]));
            v.push((p("attn_v.weight"), vec![kv, d]));
            if bias {
                v.push((p("attn_q.bias"), vec![d]));
                v.push((p("attn_k.bias"), vec![kv]));
                v.push((p("attn_v.bias"), vec![kv]));
            }
            v.push((p("attn_output.weight"), vec![d, d]));
            v.push((p("ffn_norm.weight"), vec![d]));
            v.push((p("ffn_gate.weight"), vec![ffn, d]));
            v.push((p("ffn_up.weight"), vec![ffn, d]));
            v.push((p("ffn_down.weight"), vec![d, ffn]));
        }
        v
    }

    fn model(arch: &str, n_layer: usize) -> MixModel {
        MixModel {
            arch: arch.into(),
            n_layer,
            n_expert: 0,
            is_70b: false,
        }
    }

    /// `(name, planned type)` pairs.
    fn plan(mix: QuantType, m: &MixModel, ts: &[(String, Vec<usize>)]) -> Vec<(String, Option<GgmlDType>)> {
        let views: Vec<MixTensor> = ts.iter().map(|(n, d)| MixTensor { name: n, dims: d }).collect();
        let types = plan_mix(mix, m, &views).unwrap_or_else(|e| panic!("{e}"));
        ts.iter().map(|(n, _)| n.clone()).zip(types).collect()
    }

    fn get(p: &[(String, Option<GgmlDType>)], name: &str) -> Option<GgmlDType> {
        p.iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .1
    }

    fn counts(p: &[(String, Option<GgmlDType>)]) -> std::collections::BTreeMap<&'static str, usize> {
        let mut c = std::collections::BTreeMap::new();
        for (_, t) in p {
            *c.entry(t.map_or("kept", ggml_type_name)).or_insert(0) += 1;
        }
        c
    }

    fn smollm2() -> (MixModel, Vec<(String, Vec<usize>)>) {
        // SmolLM2-135M: 30 layers, hidden 576, 3 kv heads of 64, ffn 1536, tied embeddings.
        (
            model("llama", 30),
            llama_tensors(30, 576, 192, 1536, 49152, true, false),
        )
    }

    #[test]
    fn use_more_bits_layers_of_30_and_24() {
        let more = |n: usize| (0..n).filter(|&i| use_more_bits(i, n)).collect::<Vec<_>>();
        assert_eq!(more(30), [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        assert_eq!(more(24), [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]);
        assert_eq!(
            more(32),
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
    }

    #[test]
    fn q4_k_m_on_smollm2_falls_back_for_576_wide_rows() {
        let (m, ts) = smollm2();
        let p = plan(QuantType::Q4KM, &m, &ts);
        // Tied embedding: the output rule; 576 % 256 ≠ 0, so Q8_0 (not Q5_0).
        assert_eq!(get(&p, "token_embd.weight"), Some(Q8_0));
        assert_eq!(get(&p, "output_norm.weight"), None);
        for i in 0..30 {
            let g = |s: &str| get(&p, &format!("blk.{i}.{s}"));
            let more = use_more_bits(i, 30);
            // 576 columns: Q4_K → Q5_0, Q6_K → Q8_0.
            for s in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
                assert_eq!(g(&format!("{s}.weight")), Some(Q5_0), "blk.{i}.{s}");
            }
            assert_eq!(
                g("attn_v.weight"),
                Some(if more { Q8_0 } else { Q5_0 }),
                "blk.{i}.attn_v"
            );
            // 1536 columns take k-quants.
            assert_eq!(
                g("ffn_down.weight"),
                Some(if more { Q6K } else { Q4K }),
                "blk.{i}.ffn_down"
            );
            assert_eq!(g("attn_norm.weight"), None);
            assert_eq!(g("ffn_norm.weight"), None);
        }
        let c = counts(&p);
        assert_eq!(c["q8_0"], 1 + 14);
        assert_eq!(c["q5_0"], 5 * 30 + 16);
        assert_eq!(c["q6_K"], 14);
        assert_eq!(c["q4_K"], 16);
        assert_eq!(c["kept"], 61);
    }

    #[test]
    fn q4_k_m_on_a_qwen_like_24_layer_896_wide_model() {
        // Qwen2.5-0.5B: 24 layers, hidden 896, 2 kv heads of 64, ffn 4864 (= 19 · 256), tied,
        // q/k/v biases.
        let m = model("qwen2", 24);
        let ts = llama_tensors(24, 896, 128, 4864, 151_936, true, true);
        let p = plan(QuantType::Q4KM, &m, &ts);
        assert_eq!(get(&p, "token_embd.weight"), Some(Q8_0));
        for i in 0..24 {
            let g = |s: &str| get(&p, &format!("blk.{i}.{s}"));
            let more = use_more_bits(i, 24);
            assert_eq!(g("attn_q.weight"), Some(Q5_0));
            assert_eq!(g("ffn_up.weight"), Some(Q5_0));
            assert_eq!(
                g("attn_v.weight"),
                Some(if more { Q8_0 } else { Q5_0 }),
                "blk.{i}"
            );
            assert_eq!(
                g("ffn_down.weight"),
                Some(if more { Q6K } else { Q4K }),
                "blk.{i}"
            );
            assert_eq!(g("attn_q.bias"), None);
            assert_eq!(g("attn_v.bias"), None);
        }
        let c = counts(&p);
        assert_eq!(c["q6_K"], 12);
        assert_eq!(c["q4_K"], 12);
        assert_eq!(c["q8_0"], 1 + 12);
    }

    #[test]
    fn q4_k_m_on_a_4096_wide_untied_model_keeps_k_quants() {
        // Llama-2-7B shapes: no fallback anywhere; output Q6_K, token embedding Q4_K.
        let m = model("llama", 32);
        let ts = llama_tensors(32, 4096, 4096, 11008, 32000, false, false);
        let p = plan(QuantType::Q4KM, &m, &ts);
        assert_eq!(get(&p, "output.weight"), Some(Q6K));
        assert_eq!(get(&p, "token_embd.weight"), Some(Q4K));
        assert_eq!(get(&p, "blk.0.attn_v.weight"), Some(Q6K));
        assert_eq!(get(&p, "blk.4.attn_v.weight"), Some(Q4K));
        assert_eq!(get(&p, "blk.6.ffn_down.weight"), Some(Q6K));
        assert_eq!(get(&p, "blk.7.ffn_down.weight"), Some(Q4K));
        assert_eq!(get(&p, "blk.7.ffn_gate.weight"), Some(Q4K));
        // A 70B-class model (80 layers, GQA) gets Q5_K instead of Q4_K on attn_v.
        let big = MixModel {
            is_70b: true,
            ..model("llama", 80)
        };
        let ts = llama_tensors(80, 8192, 1024, 28672, 32000, false, false);
        let p = plan(QuantType::Q4KM, &big, &ts);
        assert_eq!(get(&p, "blk.0.attn_v.weight"), Some(Q6K));
        assert_eq!(get(&p, "blk.11.attn_v.weight"), Some(Q5K));
    }

    #[test]
    fn the_other_mixes_on_smollm2() {
        let (m, ts) = smollm2();
        // Q8_0: everything Q8_0, the output too.
        let p = plan(QuantType::Q8_0, &m, &ts);
        assert!(p.iter().all(|(_, t)| matches!(t, None | Some(Q8_0))));
        // Q4_0: the tied output gets Q6_K, which falls back to Q8_0 on 576 columns.
        let p = plan(QuantType::Q4_0, &m, &ts);
        assert_eq!(get(&p, "token_embd.weight"), Some(Q8_0));
        assert_eq!(get(&p, "blk.0.attn_v.weight"), Some(Q4_0));
        assert_eq!(get(&p, "blk.0.ffn_down.weight"), Some(Q4_0));
        // Q6_K: 576-wide rows fall back to Q8_0, ffn_down keeps Q6_K.
        let p = plan(QuantType::Q6K, &m, &ts);
        assert_eq!(get(&p, "blk.9.attn_q.weight"), Some(Q8_0));
        assert_eq!(get(&p, "blk.9.ffn_down.weight"), Some(Q6K));
        // Q4_K_S: the first 4 attn_v and the first 30/8 = 3 ffn_down get Q5_K (→ Q5_1 at 576).
        let p = plan(QuantType::Q4KS, &m, &ts);
        assert_eq!(get(&p, "blk.3.attn_v.weight"), Some(Q5_1));
        assert_eq!(get(&p, "blk.4.attn_v.weight"), Some(Q5_0));
        assert_eq!(get(&p, "blk.2.ffn_down.weight"), Some(Q5K));
        assert_eq!(get(&p, "blk.3.ffn_down.weight"), Some(Q4K));
        // Q5_K_M: Q6_K on the use-more-bits layers, Q5_K (→ Q5_1 at 576) elsewhere.
        let p = plan(QuantType::Q5KM, &m, &ts);
        assert_eq!(get(&p, "blk.5.attn_v.weight"), Some(Q8_0));
        assert_eq!(get(&p, "blk.6.attn_v.weight"), Some(Q5_1));
        assert_eq!(get(&p, "blk.5.ffn_down.weight"), Some(Q6K));
        assert_eq!(get(&p, "blk.6.ffn_down.weight"), Some(Q5K));
        assert_eq!(get(&p, "blk.6.ffn_up.weight"), Some(Q5_1));
    }

    #[test]
    fn llama_cpp_visiting_order_not_file_order_sets_the_counts() {
        let (m, mut ts) = smollm2();
        let before = plan(QuantType::Q4KM, &m, &ts);
        ts.reverse();
        let mut after = plan(QuantType::Q4KM, &m, &ts);
        after.reverse();
        assert_eq!(before, after);
    }

    #[test]
    fn rows_that_fit_no_block() {
        let m = model("llama", 1);
        // 48 columns: Q4_K → Q5_0 does not fit either (48 % 32 ≠ 0) → F16.
        let ts = vec![("blk.0.ffn_up.weight".to_string(), vec![64, 48])];
        assert_eq!(plan(QuantType::Q4KM, &m, &ts)[0].1, Some(F16));
        // A legacy type has no fallback: an error, as in llama.cpp.
        let views = [MixTensor {
            name: "blk.0.ffn_up.weight",
            dims: &[64, 48],
        }];
        let e = plan_mix(QuantType::Q4_0, &m, &views);
        assert!(
            matches!(
                e,
                Err(MixError::RowLength {
                    ne0: 48,
                    block: 32,
                    ..
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn eight_experts_get_q8_0_attention_and_layers_from_names() {
        let m = MixModel {
            n_expert: 8,
            ..model("llama", 32)
        };
        let ts = vec![
            ("blk.0.attn_v.weight".to_string(), vec![1024, 4096]),
            ("blk.0.attn_k.weight".to_string(), vec![1024, 4096]),
            ("blk.0.attn_output.weight".to_string(), vec![4096, 4096]),
            ("blk.10.ffn_down_exps.weight".to_string(), vec![8, 4096, 14336]),
            ("blk.12.ffn_down_exps.weight".to_string(), vec![8, 4096, 14336]),
            ("blk.0.ffn_gate_inp.weight".to_string(), vec![8, 4096]),
        ];
        let p = plan(QuantType::Q4KM, &m, &ts);
        assert_eq!(get(&p, "blk.0.attn_v.weight"), Some(Q8_0));
        assert_eq!(get(&p, "blk.0.attn_k.weight"), Some(Q8_0));
        assert_eq!(get(&p, "blk.0.attn_output.weight"), Some(Q5K));
        assert_eq!(get(&p, "blk.10.ffn_down_exps.weight"), Some(Q4K));
        assert_eq!(get(&p, "blk.12.ffn_down_exps.weight"), Some(Q6K));
        assert_eq!(get(&p, "blk.0.ffn_gate_inp.weight"), None);
        let bad = [MixTensor {
            name: "blk.40.ffn_down_exps.weight",
            dims: &[8, 4096, 14336],
        }];
        assert!(matches!(
            plan_mix(QuantType::Q4KM, &m, &bad),
            Err(MixError::BadLayer { .. })
        ));
    }

    #[test]
    fn type_names_parse_and_map_to_llama_ftypes() {
        for t in QuantType::ALL {
            assert_eq!(t.name().parse::<QuantType>(), Ok(t));
            assert_eq!(t.name().to_uppercase().parse::<QuantType>(), Ok(t));
        }
        assert_eq!("Q4_K".parse::<QuantType>(), Ok(QuantType::Q4KM));
        assert_eq!("q4-k-m".parse::<QuantType>(), Ok(QuantType::Q4KM));
        let ftypes: Vec<u32> = QuantType::ALL.map(QuantType::llama_ftype).to_vec();
        assert_eq!(ftypes, [2, 3, 8, 9, 7, 14, 15, 16, 17, 18]);
        let e = "q3_k_xl"
            .parse::<QuantType>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("q3_k_xl") && e.contains("q4_k_m"), "{e}");
        assert_eq!(ggml_type_name(GgmlDType::Q4K), "q4_K");
    }

    #[test]
    fn which_tensors_are_quantized() {
        assert!(quantizes("blk.0.attn_q.weight", 2));
        assert!(quantizes("token_embd.weight", 2));
        assert!(!quantizes("blk.0.attn_norm.weight", 1));
        assert!(!quantizes("blk.0.attn_q.bias", 1));
        assert!(!quantizes("blk.0.attn_q_norm.weight", 2));
        assert!(!quantizes("blk.0.ffn_gate_inp.weight", 2));
        assert!(!quantizes("position_embd.weight", 2));
        assert!(!quantizes("rope_freqs.weight", 1));
    }
}
