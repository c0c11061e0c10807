//! Pooled activation samples: a row-major `[rows, cols]` f32 matrix where rows are samples
//! (one pooled activation vector per sentence or prompt) and columns are neurons.

use super::error::{Side, TransportError};

/// A borrowed row-major matrix of pooled activations, shape `[rows, cols]`
/// (rows = samples, cols = neurons).
#[derive(Debug, Clone, Copy)]
pub struct Samples<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Samples<'a> {
    /// Wraps `data` (length `rows × cols`, row-major) as a sample matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, side: Side) -> Result<Self, TransportError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(TransportError::BadShape {
                side,
                len: data.len(),
                rows,
                cols,
            });
        }
        Ok(Self { data, rows, cols })
    }

    /// Number of samples.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of neurons.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The row-major data, length `rows × cols`.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Copies column `j` (one neuron over all samples) into `out`.
    pub fn column_into(&self, j: usize, out: &mut Vec<f32>) {
        out.clear();
        out.extend(self.data.iter().skip(j).step_by(self.cols.max(1)).copied());
    }

    /// Returns the first non-finite value as `(row, col, value)`, if any.
    pub fn first_non_finite(&self) -> Option<(usize, usize, f32)> {
        let pos = self.data.iter().position(|v| !v.is_finite())?;
        let cols = self.cols.max(1);
        Some((pos / cols, pos % cols, self.data[pos]))
    }
}

/// An owned row-major `[rows, cols]` f32 matrix of pooled activations.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleMatrix {
    /// Row-major values, length `rows × cols`.
    pub data: Vec<f32>,
    /// Number of samples.
    pub rows: usize,
    /// Number of neurons.
    pub cols: usize,
}

impl SampleMatrix {
    /// Builds a matrix from rows of equal length. Fails on ragged rows.
    pub fn from_rows(rows: &[Vec<f32>], side: Side) -> Result<Self, TransportError> {
        let cols = rows.first().map_or(0, Vec::len);
        let mut data = Vec::with_capacity(rows.len() * cols);
        for r in rows {
            if r.len() != cols {
                return Err(TransportError::BadShape {
                    side,
                    len: r.len(),
                    rows: 1,
                    cols,
                });
            }
            data.extend_from_slice(r);
        }
        Ok(Self {
            data,
            rows: rows.len(),
            cols,
        })
    }

    /// Borrows the matrix as [`Samples`].
    pub fn view(&self) -> Samples<'_> {
        Samples {
            data: &self.data,
            rows: self.rows,
            cols: self.cols,
        }
    }
}
