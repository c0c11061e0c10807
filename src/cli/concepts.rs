//! `concepts` and `make-concept`: the built-in concepts and datasets, and a concept dataset
//! sampled from a description.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Result;

use super::common::{check_output, load, progress_bar};
use crate::pipeline::concepts::manifest;
use crate::pipeline::dataset::save_lines;
use crate::pipeline::describe::{DescribeOptions, concept_from_description};

/// `concepts`: the built-in concepts and sets.
pub fn concepts() -> Result<()> {
    let m = manifest();
    outln!("concepts (fit --concept NAME):");
    for c in &m.concepts {
        outln!("  {:<12} {} → {}: {}", c.name, c.source, c.target, c.description);
    }
    outln!("\ndatasets (builtin:NAME wherever a dataset is asked for):");
    for s in &m.sets {
        let n = crate::pipeline::concepts::builtin_dataset(&s.name).map_or(0, |d| d.samples.len());
        outln!("  {:<20} {:>4} samples  {}", s.name, n, s.description);
        outln!("  {:<20}               licence: {}", "", s.licence);
    }
    Ok(())
}

/// Arguments of `make-concept`.
#[derive(Debug, clap::Args)]
pub struct MakeConceptArgs {
    /// Model file (.gguf) or Hugging Face folder (an instruction model).
    #[arg(long)]
    pub model: PathBuf,
    /// What the sentences should be about, e.g. "rainy autumn days".
    #[arg(long)]
    pub description: String,
    /// Distinct sentences wanted.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub samples: u32,
    /// Seed of the first draw.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = crate::pipeline::presets::parse_temperature)]
    pub temperature: f32,
    /// Output text file (one sentence per line), written atomically.
    #[arg(long)]
    pub out: PathBuf,
}

/// `make-concept --model M --description D --out F`.
pub fn make_concept(a: &MakeConceptArgs) -> Result<()> {
    check_output("--out", &a.out, &[&a.model])?;
    let m = load(&a.model)?;
    let opts = DescribeOptions {
        samples: a.samples as usize,
        seed: a.seed,
        temperature: a.temperature,
        ..Default::default()
    };
    let bar = progress_bar(a.samples as u64, "writing sentences");
    let started = std::time::Instant::now();
    let lines = concept_from_description(&m, &a.description, &opts, &AtomicBool::new(false), &mut |d, _| {
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    save_lines(&a.out, &lines)?;
    eprintln!(
        "{} distinct sentences about `{}` in {:.1} s → {}{}",
        lines.len(),
        a.description,
        started.elapsed().as_secs_f64(),
        a.out.display(),
        if lines.len() < a.samples as usize {
            " (fewer than asked: the model repeated itself)"
        } else {
            ""
        }
    );
    Ok(())
}
