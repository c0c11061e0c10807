//! Token embedding tables `[vocab, d]`: f32 (Hugging Face folders, unquantized GGUF tables),
//! or the file's quantized rows, dequantized only for the tokens looked up (GGUF), so the
//! table costs its file size rather than 4 bytes per value (545 MB → 144 MB for
//! Qwen2.5-0.5B's Q8_0 table).

use std::sync::Arc;

use super::error::{Result, RuntimeError};
use super::quant::QMatrix;

/// A token embedding table `[vocab, d]`.
#[derive(Debug)]
pub enum Embedding {
    /// Row-major f32 values, `[vocab · d]`.
    Dense { table: Vec<f32>, d: usize },
    /// Quantized rows (shared with a tied output projection).
    Quant(Arc<QMatrix>),
}

impl Embedding {
    /// Number of rows (tokens).
    pub fn vocab(&self) -> usize {
        match self {
            Embedding::Dense { table, d } => table.len() / (*d).max(1),
            Embedding::Quant(q) => q.rows(),
        }
    }

    /// Width of a row.
    pub fn dim(&self) -> usize {
        match self {
            Embedding::Dense { d, .. } => *d,
            Embedding::Quant(q) => q.cols(),
        }
    }

    /// Appends the rows of `tokens` to `x` (`[tokens.len() · d]` more values); an error for a
    /// token beyond the table.
    pub fn lookup(&self, tokens: &[u32], x: &mut Vec<f32>) -> Result<()> {
        let d = self.dim();
        let vocab = self.vocab();
        x.reserve(tokens.len() * d);
        for &t in tokens {
            let t = t as usize;
            if t >= vocab {
                return Err(RuntimeError::BadInput(format!(
                    "token id {t} is outside the vocabulary of {vocab}"
                )));
            }
            match self {
                Embedding::Dense { table, .. } => x.extend_from_slice(&table[t * d..(t + 1) * d]),
                Embedding::Quant(q) => {
                    let start = x.len();
                    x.resize(start + d, 0.0);
                    q.dequantize_row(t, &mut x[start..])
                        .map_err(|e| RuntimeError::BadInput(e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::quant::QDType;

    #[test]
    fn quantized_rows_equal_the_dequantized_table() {
        // 3 rows of one Q8_0 block each: d = 0.5, quants j - 16 + row.
        let mut bytes = Vec::new();
        for r in 0..3i32 {
            bytes.extend(half::f16::from_f32(0.5).to_le_bytes());
            bytes.extend((0..32).map(|j| (j - 16 + r) as i8 as u8));
        }
        let q = Arc::new(QMatrix::new(QDType::Q8_0, 3, 32, bytes).unwrap());
        let quant = Embedding::Quant(q.clone());
        let dense = Embedding::Dense {
            table: q.dequantize(),
            d: 32,
        };
        let (mut a, mut b) = (vec![7.0], vec![7.0]);
        quant.lookup(&[2, 0, 2], &mut a).unwrap();
        dense.lookup(&[2, 0, 2], &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!((a.len(), a[1], a[33]), (97, (-16 + 2) as f32 * 0.5, -8.0));
        assert_eq!((quant.vocab(), quant.dim(), dense.vocab()), (3, 32, 3));
        assert!(quant.lookup(&[3], &mut a).is_err());
        assert!(dense.lookup(&[3], &mut b).is_err());
    }
}
