//! `quantize`: rewrite a GGUF model into one of llama.cpp's usual types (`q4_k_m`, `q8_0`, …).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};

use super::common::progress_bar;
use crate::pipeline::quantize_model::{QuantizeRequest, quantize_model};
use crate::runtime::quant_mix::{QuantType, ggml_type_name};

/// Arguments of `quantize`.
#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Input model (.gguf, quantized or not).
    #[arg(long)]
    pub model: PathBuf,
    /// Output file (.gguf): written to a temporary file in its folder, then renamed; never
    /// the input itself.
    #[arg(long)]
    pub out: PathBuf,
    /// Target type, per tensor as llama.cpp chooses: q4_0, q4_1, q5_0, q5_1, q8_0, q4_k_s,
    /// q4_k_m, q5_k_s, q5_k_m, q6_k.
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_type)]
    pub quant_type: QuantType,
    /// Also print every tensor: shape, input type → output type.
    #[arg(long)]
    pub verbose: bool,
}

fn parse_type(s: &str) -> Result<QuantType, String> {
    s.parse()
        .map_err(|e: crate::runtime::quant_mix::UnknownQuantType| e.to_string())
}

const MIB: f64 = 1024.0 * 1024.0;

/// `quantize --model IN --out OUT --type TYPE`.
pub fn quantize(a: &QuantizeArgs) -> Result<()> {
    // `quantize_model` itself refuses the model as its output, before reading it.
    let req = QuantizeRequest {
        model: a.model.clone(),
        out: a.out.clone(),
        mix: a.quant_type,
    };
    let bar = progress_bar(0, "quantizing");
    let report = quantize_model(
        &req,
        &mut |p| {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
        },
        &AtomicBool::new(false),
    )
    .with_context(|| format!("quantizing {} to {}", a.model.display(), a.quant_type));
    bar.finish_and_clear();
    let report = report?;
    if a.verbose {
        for t in &report.tensors {
            outln!(
                "{:<36} {:>16} {:>5} -> {:<5}{}",
                t.name,
                format!("{:?}", t.shape),
                ggml_type_name(t.from),
                ggml_type_name(t.to),
                if t.requantized { "" } else { " (copied)" }
            );
        }
    }
    let counts: Vec<String> = report
        .type_counts()
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    let requantized = report.tensors.iter().filter(|t| t.requantized).count();
    outln!(
        "wrote {} as {} (llama.cpp file type {})",
        report.out.display(),
        report.mix,
        report.mix.llama_ftype()
    );
    outln!(
        "tensors: {} ({requantized} requantized, {} copied): {}",
        report.tensors.len(),
        report.tensors.len() - requantized,
        counts.join(", ")
    );
    outln!(
        "size: {:.1} MiB -> {:.1} MiB ({:.2} bits per weight)",
        report.input_bytes as f64 / MIB,
        report.output_bytes as f64 / MIB,
        report.bits_per_weight()
    );
    outln!("time: {:.1} s", report.seconds);
    Ok(())
}
