//! Reading user-supplied activation arrays (e.g. exported from PyTorch) as sample matrices:
//! CSV (one sample per row, one neuron per column, no header) or safetensors holding one 2-D
//! tensor (F32 or F64).

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use crate::transport::SampleMatrix;
use crate::transport::maps_file::hex;

/// Why an array file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: file is empty (need one sample per row)")]
    Empty { path: PathBuf },
    #[error("{path}: line {line}, column {column}: `{text}` is not a number")]
    BadNumber {
        path: PathBuf,
        line: usize,
        column: usize,
        text: String,
    },
    #[error("{path}: line {line} has {found} columns, the first row has {expected}")]
    Ragged {
        path: PathBuf,
        line: usize,
        found: usize,
        expected: usize,
    },
    #[error("{path}: not valid UTF-8 text")]
    NotUtf8 { path: PathBuf },
    #[error("{path}: not a valid safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("{path}: expected exactly one 2-D tensor, found {found}")]
    TensorCount { path: PathBuf, found: String },
    #[error("{path}: tensor `{name}` has dtype {dtype}; use F32 or F64")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
}

/// A loaded array with a content hash for the maps file's provenance.
#[derive(Debug, Clone)]
pub struct LoadedArray {
    /// The samples, `[rows, cols]`.
    pub matrix: SampleMatrix,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// Loads a CSV or safetensors file (chosen by the `.safetensors` extension, else CSV).
pub fn load_array(path: &Path) -> Result<LoadedArray, ArrayError> {
    let bytes = crate::transport::regular_file::read_regular(path).map_err(|source| ArrayError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let is_st = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let matrix = if is_st {
        parse_safetensors(&bytes, path)?
    } else {
        let text = std::str::from_utf8(&bytes).map_err(|_| ArrayError::NotUtf8 {
            path: path.to_path_buf(),
        })?;
        parse_csv(text, path)?
    };
    Ok(LoadedArray { matrix, sha256 })
}

/// Parses CSV text: numbers separated by commas (or semicolons/tabs), one sample per line,
/// blank lines and lines starting with `#` ignored. `nan`/`inf` parse and are rejected later
/// by the fit with the neuron named.
pub fn parse_csv(text: &str, path: &Path) -> Result<SampleMatrix, ArrayError> {
    let mut data = Vec::new();
    let mut cols = 0usize;
    let mut rows = 0usize;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut n = 0usize;
        for (c, field) in line.split([',', ';', '\t']).enumerate() {
            let field = field.trim();
            let v: f32 = field.parse().map_err(|_| ArrayError::BadNumber {
                path: path.to_path_buf(),
                line: i + 1,
                column: c + 1,
                text: field.chars().take(40).collect(),
            })?;
            data.push(v);
            n += 1;
        }
        if rows == 0 {
            cols = n;
        } else if n != cols {
            return Err(ArrayError::Ragged {
                path: path.to_path_buf(),
                line: i + 1,
                found: n,
                expected: cols,
            });
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(ArrayError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(SampleMatrix { data, rows, cols })
}

/// Parses a safetensors file holding exactly one 2-D F32 or F64 tensor.
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<SampleMatrix, ArrayError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| ArrayError::BadSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let tensors = st.tensors();
    let [(name, view)] = tensors.as_slice() else {
        return Err(ArrayError::TensorCount {
            path: path.to_path_buf(),
            found: format!("{} tensors", tensors.len()),
        });
    };
    let &[rows, cols] = view.shape() else {
        return Err(ArrayError::TensorCount {
            path: path.to_path_buf(),
            found: format!("`{name}` of shape {:?}", view.shape()),
        });
    };
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => view
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        other => {
            return Err(ArrayError::Dtype {
                path: path.to_path_buf(),
                name: name.clone(),
                dtype: format!("{other:?}"),
            });
        }
    };
    if rows == 0 {
        return Err(ArrayError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(SampleMatrix { data, rows, cols })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_parses_and_reports_bad_cells() {
        let p = Path::new("x.csv");
        let m = parse_csv("1,2,3\n# comment\n\n4, 5 ,6\n", p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((m.rows, m.cols), (2, 3));
        assert_eq!(m.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let e = parse_csv("1,2\n3,x\n", p).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("line 2, column 2"), "{e}");
        assert!(matches!(
            parse_csv("1,2\n3\n", p),
            Err(ArrayError::Ragged { line: 2, .. })
        ));
        assert!(matches!(parse_csv("\n\n", p), Err(ArrayError::Empty { .. })));
    }
}
