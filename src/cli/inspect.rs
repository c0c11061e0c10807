//! `inspect`: a model's architecture, sizes, tokenizer facts, hook points and tensor table,
//! from its header alone (no tensor data is read).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::runtime::config::Family;
use crate::runtime::model_header::{
    Kernels, ModelHeader, TensorGroup, TensorType, ggml_name, own_kernel_types,
};
use crate::runtime::safetensors_shards::SUPPORTED_DTYPES;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Model file (.gguf) or Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
}

/// `inspect --model M`.
pub fn inspect(a: &InspectArgs) -> Result<()> {
    let h = ModelHeader::read(&a.model)
        .with_context(|| format!("reading the header of model {}", a.model.display()))?;
    let c = &h.config;
    outln!("model:          {}", a.model.display());
    outln!("file size:      {}", file_size(&h));
    outln!("architecture:   {}", c.architecture);
    outln!("layers:         {}", c.n_layers);
    outln!("hidden size:    {}", c.hidden_size);
    outln!(
        "heads:          {} (kv {}, head dim {})",
        c.n_heads,
        c.n_kv_heads,
        c.head_dim
    );
    outln!("mlp size:       {}", c.intermediate_size);
    outln!("vocabulary:     {}", c.vocab_size);
    outln!("context:        {}", c.max_position);
    match c.family {
        Family::Llama => {
            let pairs = if c.rope_interleaved {
                "interleaved pairs"
            } else {
                "half split"
            };
            outln!("rope:           θ = {}, {pairs}", c.rope_theta);
        }
        Family::Gpt2 => outln!("positions:      learned"),
        Family::Gemma => {
            outln!("rope:           θ = {} (global layers), half split", c.rope_theta);
            if let Some(g) = &c.gemma {
                let local = g.sliding.iter().filter(|&&s| s).count();
                match g.sliding_window {
                    Some(w) if local > 0 => outln!(
                        "sliding window: {w} tokens on {local} of {} layers (θ = {})",
                        c.n_layers,
                        g.local_rope_theta
                    ),
                    _ => outln!("sliding window: none"),
                }
                let cap = |c: Option<f32>| c.map_or_else(|| "none".into(), |c| c.to_string());
                outln!(
                    "soft-caps:      attention {}, logits {}",
                    cap(g.attn_softcap),
                    cap(g.final_softcap)
                );
            }
        }
    }
    outln!("norm eps:       {}", c.norm_eps);
    outln!("fingerprint:    {}", h.fingerprint);
    let t = &h.tokenizer;
    let name = |id: Option<u32>| {
        id.and_then(|i| t.token_str(i).map(|s| format!("{s} ({i})")))
            .unwrap_or_else(|| "none".into())
    };
    outln!(
        "tokenizer:      {} tokens, BOS {} (added: {}), EOS {}",
        t.vocab_size(),
        name(t.bos()),
        t.adds_bos(),
        name(t.eos().first().copied())
    );
    outln!(
        "chat template:  {}",
        if t.chat_template().is_some() { "yes" } else { "no" }
    );
    let points = h.hook_points();
    outln!(
        "hook points:    {} ({} per layer)",
        points.len(),
        points.len() / c.n_layers.max(1)
    );
    for p in points.iter().take(5) {
        outln!("  {p}");
    }
    if points.len() > 5 {
        outln!("  … {}", points.last().map(|p| p.to_string()).unwrap_or_default());
    }
    print_tensors(&h)?;
    Ok(())
}

/// `98.4 MB (98362432 bytes)`, noting tensor data the header describes but the file lacks.
fn file_size(h: &ModelHeader) -> String {
    let mut s = format!("{} ({} bytes)", human_size(h.file_size), h.file_size);
    if h.file_size < h.expected_size {
        s.push_str(&format!(
            "; the header describes {}: tensor data is missing",
            human_size(h.expected_size)
        ));
    }
    s
}

/// Decimal megabytes, or gigabytes from 1 GB.
fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}

/// `Q4_K ×15, Q6_K ×15`.
fn types(g: &TensorGroup) -> String {
    g.types
        .iter()
        .map(|(t, n)| format!("{t} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn counted(types: &[(TensorType, usize)]) -> String {
    types
        .iter()
        .map(|(t, n)| format!("{t} ({n} tensor{})", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tensor table, one line per group, and notes on types our kernels do not run.
fn print_tensors(h: &ModelHeader) -> Result<()> {
    let groups = &h.tensor_groups;
    outln!(
        "tensors:        {} in {} groups, {}",
        h.tensor_count(),
        groups.len(),
        human_size(h.tensor_bytes())
    );
    let type_cells: Vec<String> = groups.iter().map(types).collect();
    let name_w = groups.iter().map(|g| g.name.chars().count()).fold(5, usize::max);
    let type_w = type_cells.iter().map(|s| s.chars().count()).fold(5, usize::max);
    outln!(
        "  {:<name_w$}  count  {:<type_w$}  {:>11}",
        "group",
        "types",
        "size"
    );
    for (g, ty) in groups.iter().zip(&type_cells) {
        outln!(
            "  {:<name_w$}  {:>5}  {:<type_w$}  {:>8.2} MB",
            g.name,
            g.count,
            ty,
            g.bytes as f64 / 1e6
        );
    }
    for note in notes(&h.type_counts()) {
        outln!("{note}");
    }
    Ok(())
}

/// Notes on tensor types (with their counts) that our kernels do not run.
fn notes(all: &[(TensorType, usize)]) -> Vec<String> {
    let of = |k: Kernels| -> Vec<(TensorType, usize)> {
        all.iter().copied().filter(|(t, _)| t.kernels() == k).collect()
    };
    let mut out = Vec::new();
    let generic = of(Kernels::CandleGeneric);
    if !generic.is_empty() {
        let ours: Vec<&str> = own_kernel_types().into_iter().map(ggml_name).collect();
        out.push(format!(
            "note: {} run{} on candle's generic kernels (slower); ours cover {}",
            counted(&generic),
            if generic.len() == 1 { "s" } else { "" },
            ours.join(" ")
        ));
    }
    let unsupported = of(Kernels::Unsupported);
    if !unsupported.is_empty() {
        out.push(format!(
            "note: {}: not a weight type the loader reads ({SUPPORTED_DTYPES}); loading fails if the model needs {}",
            counted(&unsupported),
            if unsupported.iter().map(|(_, n)| n).sum::<usize>() == 1 { "it" } else { "them" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;
    use safetensors::Dtype;

    use super::*;

    #[test]
    fn notes_name_types_our_kernels_do_not_run() {
        let g = TensorType::Gguf;
        assert!(
            notes(&[
                (g(GgmlDType::Q4K), 15),
                (g(GgmlDType::Q6K), 15),
                (g(GgmlDType::F32), 61)
            ])
            .is_empty()
        );
        assert_eq!(
            notes(&[(g(GgmlDType::Q4K), 180), (g(GgmlDType::Q3K), 12)]),
            [
                "note: Q3_K (12 tensors) runs on candle's generic kernels (slower); ours cover Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K"
            ]
        );
        let two = notes(&[(g(GgmlDType::Q2K), 1), (g(GgmlDType::Q3K), 2)]);
        assert!(
            two[0].starts_with("note: Q2_K (1 tensor), Q3_K (2 tensors) run on candle's"),
            "{two:?}"
        );
        let st = notes(&[
            (TensorType::Safetensors(Dtype::F16), 9),
            (TensorType::Safetensors(Dtype::I64), 1),
        ]);
        assert_eq!(st.len(), 1);
        assert!(
            st[0].starts_with("note: I64 (1 tensor): not a weight type") && st[0].ends_with("needs it"),
            "{st:?}"
        );
    }
}
