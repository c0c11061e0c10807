//! Concept datasets: reading samples from .txt, .jsonl, .csv and the reference's .json subset
//! files, choosing a field/column/subset and filtering rows, and saving edited datasets.
//!
//! A dataset is named by a *spec*: `PATH[#SELECTOR]` where the selector is a comma-separated
//! list of one field name (the .jsonl field, .csv column or .json subset holding the text) and
//! any number of `NAME=VALUE` row filters, e.g. `train.csv#comment_text,toxic=1` or
//! `giraffes.json#giraffe`. `builtin:NAME` names a set shipped with the app
//! ([`super::concepts`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::transport::atomic_file::atomic_write;

/// Why a dataset could not be read or saved.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid UTF-8 text (byte {offset}); save it as UTF-8")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("{origin}: no samples{hint}")]
    Empty { origin: String, hint: String },
    #[error("{origin}, line {line}: {message}")]
    Format {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("{origin}: no {what} `{name}` (available: {available})")]
    MissingField {
        origin: String,
        what: &'static str,
        name: String,
        available: String,
    },
    #[error("{origin}: {message}")]
    Ambiguous { origin: String, message: String },
    #[error("no built-in dataset `{name}` (available: {available})")]
    UnknownBuiltin { name: String, available: String },
    #[error("bad dataset spec `{spec}`: {message}")]
    BadSpec { spec: String, message: String },
}

type Result<T> = std::result::Result<T, DatasetError>;

/// Where a dataset comes from, parsed from `PATH[#FIELD][,NAME=VALUE…]` or `builtin:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSpec {
    /// A file with an optional field/column/subset and row filters.
    File {
        path: PathBuf,
        field: Option<String>,
        filters: Vec<(String, String)>,
    },
    /// A set shipped with the app.
    Builtin(String),
}

/// The start of a sample for a message: at most 80 characters, `…` when cut.
pub fn excerpt(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

impl FromStr for DatasetSpec {
    type Err = DatasetError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |message: &str| DatasetError::BadSpec {
            spec: s.to_string(),
            message: message.to_string(),
        };
        if let Some(name) = s.strip_prefix("builtin:") {
            if name.trim().is_empty() {
                return Err(bad("`builtin:` needs a set name, e.g. builtin:football"));
            }
            return Ok(Self::Builtin(name.trim().to_string()));
        }
        // A name that is an existing file is that file, `#` and all (`notes#1.txt`).
        if s.contains('#') && Path::new(s).is_file() {
            return Ok(Self::File {
                path: PathBuf::from(s),
                field: None,
                filters: Vec::new(),
            });
        }
        let (path, selector) = match s.rsplit_once('#') {
            Some((p, sel)) => (p, Some(sel)),
            None => (s, None),
        };
        if path.trim().is_empty() {
            return Err(bad("no file path"));
        }
        let mut field = None;
        let mut filters = Vec::new();
        for item in selector.into_iter().flat_map(|sel| sel.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            match item.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    filters.push((k.trim().to_string(), v.trim().to_string()));
                }
                Some(_) => return Err(bad("a filter needs a name before `=`")),
                None if field.is_none() => field = Some(item.to_string()),
                None => return Err(bad("more than one field name after `#`")),
            }
        }
        Ok(Self::File {
            path: PathBuf::from(path),
            field,
            filters,
        })
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Builtin(n) => write!(f, "builtin:{n}"),
            Self::File { path, field, filters } => {
                write!(f, "{}", path.display())?;
                let mut items: Vec<String> = field.iter().cloned().collect();
                items.extend(filters.iter().map(|(k, v)| format!("{k}={v}")));
                if !items.is_empty() {
                    write!(f, "#{}", items.join(","))?;
                }
                Ok(())
            }
        }
    }
}

/// A list of text samples with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Short name (a file stem, a subset or the built-in set's name).
    pub name: String,
    /// The spec it was read from.
    pub origin: String,
    /// Samples in file order, trimmed, empty ones dropped.
    pub samples: Vec<String>,
}

impl Dataset {
    /// SHA-256 of the samples joined by newlines: the dataset identity stored in maps files.
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for s in &self.samples {
            h.update(s.as_bytes());
            h.update(b"\n");
        }
        crate::transport::maps_file::hex(&h.finalize())
    }

    /// Fails unless there are at least `need` samples (`side` names the dataset's role).
    pub fn require(&self, need: usize, side: &str) -> Result<()> {
        if self.samples.len() < need {
            return Err(DatasetError::Empty {
                origin: self.origin.clone(),
                hint: format!(
                    ": the {side} set has {} sample(s), at least {need} are needed",
                    self.samples.len()
                ),
            });
        }
        Ok(())
    }
}

/// Reads a dataset file: `path` in the format its extension says, with an optional
/// field/column and row filters; `spec` is the origin recorded in the dataset. Built-in
/// sets are read by [`super::concepts::load_dataset`], which takes any [`DatasetSpec`].
pub fn read_dataset_file(
    path: &Path,
    field: Option<&str>,
    filters: &[(String, String)],
    spec: &str,
) -> Result<Dataset> {
    let bytes = crate::transport::regular_file::read_regular(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| DatasetError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = field.map(str::to_string).unwrap_or(stem);
    parse_dataset(&text, &ext, field, filters, &name, spec)
}

/// Parses dataset text of the format `ext` (`txt`, `jsonl`, `csv`, `json`; anything else is
/// read as one sample per line).
pub fn parse_dataset(
    text: &str,
    ext: &str,
    field: Option<&str>,
    filters: &[(String, String)],
    name: &str,
    origin: &str,
) -> Result<Dataset> {
    let samples = match ext {
        "jsonl" | "ndjson" => parse_jsonl(text, field, filters, origin)?,
        "csv" | "tsv" => parse_csv(
            text,
            if ext == "tsv" { b'\t' } else { b',' },
            field,
            filters,
            origin,
        )?,
        "json" => parse_json(text, field, filters, origin)?,
        _ => {
            if field.is_some() || !filters.is_empty() {
                return Err(DatasetError::Ambiguous {
                    origin: origin.into(),
                    message: "a plain text file has no fields or columns to select".into(),
                });
            }
            text.lines().map(str::to_string).collect()
        }
    };
    let samples: Vec<String> = samples
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if samples.is_empty() {
        let hint = match ext {
            "jsonl" | "ndjson" | "csv" | "tsv" | "json" if !filters.is_empty() => {
                " (no row passes the filters)".to_string()
            }
            "jsonl" | "ndjson" | "csv" | "tsv" | "json" => String::new(),
            _ => " (one sample per line expected)".to_string(),
        };
        return Err(DatasetError::Empty {
            origin: origin.into(),
            hint,
        });
    }
    Ok(Dataset {
        name: name.to_string(),
        origin: origin.to_string(),
        samples,
    })
}

/// A JSON value as filter text: strings as is, numbers and booleans printed.
fn json_as_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether `value` equals the filter text (numbers compare numerically: `1` = `1.0`).
fn filter_matches(value: &str, wanted: &str) -> bool {
    if value == wanted {
        return true;
    }
    match (value.trim().parse::<f64>(), wanted.trim().parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The text of one JSON object row, or `None` when a filter rejects it.
fn object_row(
    obj: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    filters: &[(String, String)],
    origin: &str,
    line: usize,
) -> Result<Option<String>> {
    let missing = |name: &str| DatasetError::MissingField {
        origin: format!("{origin}, line {line}"),
        what: "field",
        name: name.to_string(),
        available: obj.keys().cloned().collect::<Vec<_>>().join(", "),
    };
    for (k, want) in filters {
        let v = obj.get(k).ok_or_else(|| missing(k))?;
        if !json_as_text(v).is_some_and(|v| filter_matches(&v, want)) {
            return Ok(None);
        }
    }
    match obj.get(field).ok_or_else(|| missing(field))? {
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        _ => Err(DatasetError::Format {
            origin: origin.into(),
            line,
            message: format!("field `{field}` is not a string"),
        }),
    }
}

fn parse_jsonl(
    text: &str,
    field: Option<&str>,
    filters: &[(String, String)],
    origin: &str,
) -> Result<Vec<String>> {
    let field = field.unwrap_or("text");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| DatasetError::Format {
            origin: origin.into(),
            line: i + 1,
            message: format!("not JSON: {e}"),
        })?;
        match v {
            serde_json::Value::Object(obj) => {
                out.extend(object_row(&obj, field, filters, origin, i + 1)?);
            }
            serde_json::Value::String(s) if filters.is_empty() => out.push(s),
            _ => {
                return Err(DatasetError::Format {
                    origin: origin.into(),
                    line: i + 1,
                    message: format!("expected an object with a `{field}` field"),
                });
            }
        }
    }
    Ok(out)
}

/// A record whose field count is off because a quote opened in it is never closed (the
/// reader then swallows the rest of the file as one field): said as such, with the line.
fn unclosed_quote(text: &str, e: &csv::Error, origin: &str) -> Option<DatasetError> {
    let csv::ErrorKind::UnequalLengths { pos: Some(pos), .. } = e.kind() else {
        return None;
    };
    let rest = text.get(usize::try_from(pos.byte()).ok()?..)?;
    (rest.matches('"').count() % 2 == 1).then(|| DatasetError::Format {
        origin: origin.into(),
        line: pos.line() as usize,
        message: "a quoted field (\") that starts in this record is never closed".into(),
    })
}

fn parse_csv(
    text: &str,
    delimiter: u8,
    field: Option<&str>,
    filters: &[(String, String)],
    origin: &str,
) -> Result<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_reader(text.as_bytes());
    let csv_err = |e: csv::Error| DatasetError::Format {
        origin: origin.into(),
        line: e.position().map_or(0, |p| p.line() as usize),
        message: e.to_string(),
    };
    let headers: Vec<String> = reader
        .headers()
        .map_err(csv_err)?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DatasetError::MissingField {
                origin: origin.into(),
                what: "column",
                name: name.to_string(),
                available: headers.join(", "),
            })
    };
    let text_col = match field {
        Some(f) => column(f)?,
        None => match headers.iter().position(|h| h == "text") {
            Some(c) => c,
            None if headers.len() == 1 => 0,
            None => {
                return Err(DatasetError::Ambiguous {
                    origin: origin.into(),
                    message: format!(
                        "no `text` column; name one after `#` (columns: {})",
                        headers.join(", ")
                    ),
                });
            }
        },
    };
    let filter_cols: Vec<(usize, &str)> = filters
        .iter()
        .map(|(k, v)| column(k).map(|c| (c, v.as_str())))
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| unclosed_quote(text, &e, origin).unwrap_or_else(|| csv_err(e)))?;
        if filter_cols
            .iter()
            .all(|&(c, want)| record.get(c).is_some_and(|v| filter_matches(v.trim(), want)))
        {
            out.push(record.get(text_col).unwrap_or_default().to_string());
        }
    }
    Ok(out)
}

fn parse_json(
    text: &str,
    field: Option<&str>,
    filters: &[(String, String)],
    origin: &str,
) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| DatasetError::Format {
        origin: origin.into(),
        line: e.line(),
        message: format!("not JSON: {e}"),
    })?;
    let strings = |arr: &[serde_json::Value], what: &str| -> Result<Vec<String>> {
        arr.iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| DatasetError::Format {
                        origin: origin.into(),
                        line: 0,
                        message: format!("{what} item {i} is not a string"),
                    })
            })
            .collect()
    };
    match &v {
        // The reference's subset files: {subset: [sentences]}.
        serde_json::Value::Object(obj) => {
            if !filters.is_empty() {
                return Err(DatasetError::Ambiguous {
                    origin: origin.into(),
                    message: "a subset file takes a subset name, not filters".into(),
                });
            }
            let available = obj.keys().cloned().collect::<Vec<_>>().join(", ");
            let key = match field {
                Some(f) => f.to_string(),
                None if obj.len() == 1 => available.clone(),
                None => {
                    return Err(DatasetError::Ambiguous {
                        origin: origin.into(),
                        message: format!("name a subset after `#` (subsets: {available})"),
                    });
                }
            };
            match obj.get(&key) {
                Some(serde_json::Value::Array(arr)) => strings(arr, &format!("subset `{key}`")),
                Some(_) => Err(DatasetError::Format {
                    origin: origin.into(),
                    line: 0,
                    message: format!("subset `{key}` is not a list of sentences"),
                }),
                None => Err(DatasetError::MissingField {
                    origin: origin.into(),
                    what: "subset",
                    name: key,
                    available,
                }),
            }
        }
        serde_json::Value::Array(arr) if arr.iter().all(|x| x.is_string()) && filters.is_empty() => {
            strings(arr, "list")
        }
        serde_json::Value::Array(arr) => {
            let field = field.unwrap_or("text");
            let mut out = Vec::new();
            for (i, item) in arr.iter().enumerate() {
                let Some(obj) = item.as_object() else {
                    return Err(DatasetError::Format {
                        origin: origin.into(),
                        line: 0,
                        message: format!("item {i} is neither a string nor an object"),
                    });
                };
                out.extend(object_row(obj, field, filters, origin, i + 1)?);
            }
            Ok(out)
        }
        _ => Err(DatasetError::Format {
            origin: origin.into(),
            line: 1,
            message: "expected {subset: [sentences]}, a list of strings or a list of objects".into(),
        }),
    }
}

/// Saves samples as a text dataset (one per line; line breaks inside a sample become spaces),
/// atomically.
pub fn save_lines(path: &Path, samples: &[String]) -> Result<()> {
    let mut text = String::new();
    for s in samples {
        let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
        if !one_line.is_empty() {
            text.push_str(&one_line);
            text.push('\n');
        }
    }
    atomic_write(path, text.as_bytes()).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, ext: &str, spec_sel: &str) -> Result<Vec<String>> {
        let spec: DatasetSpec = format!("x.{ext}{spec_sel}").parse()?;
        let DatasetSpec::File { field, filters, .. } = spec else {
            unreachable!("a file spec")
        };
        parse_dataset(text, ext, field.as_deref(), &filters, "x", "x").map(|d| d.samples)
    }

    #[test]
    fn specs_parse_and_print() {
        let s: DatasetSpec = "data/train.csv#comment_text,toxic=1".parse().unwrap();
        assert_eq!(
            s,
            DatasetSpec::File {
                path: "data/train.csv".into(),
                field: Some("comment_text".into()),
                filters: vec![("toxic".into(), "1".into())],
            }
        );
        assert_eq!(s.to_string(), "data/train.csv#comment_text,toxic=1");
        assert_eq!(
            "builtin:football".parse::<DatasetSpec>().unwrap(),
            DatasetSpec::Builtin("football".into())
        );
        assert!("builtin:".parse::<DatasetSpec>().is_err());
        assert!("a.csv#x,y".parse::<DatasetSpec>().is_err());
        assert!("a.csv#=1".parse::<DatasetSpec>().is_err());
    }

    #[test]
    fn an_unclosed_quote_is_named_and_a_hash_in_a_file_name_is_kept() {
        let e = parse("text,label\nfine,1\n\"open quote,0\nmore,1\n", "csv", "").unwrap_err();
        assert!(e.to_string().contains("never closed"), "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notes#1.txt");
        std::fs::write(&p, "a\n").unwrap();
        let spec: DatasetSpec = p.to_string_lossy().parse().unwrap();
        assert_eq!(
            spec,
            DatasetSpec::File {
                path: p.clone(),
                field: None,
                filters: vec![],
            }
        );
    }

    #[test]
    fn text_lines_are_trimmed_and_blank_lines_dropped() {
        assert_eq!(parse(" a \n\n b\r\n", "txt", "").unwrap(), ["a", "b"]);
        assert!(matches!(
            parse("\n \n", "txt", ""),
            Err(DatasetError::Empty { .. })
        ));
        assert!(parse("a\n", "txt", "#text").is_err());
    }

    #[test]
    fn jsonl_reads_a_field_with_filters() {
        let t = "{\"text\":\"one\",\"label\":1}\n\n{\"text\":\"two\",\"label\":0}\n\"three\"\n";
        assert!(parse(t, "jsonl", "").is_ok());
        assert_eq!(parse(t, "jsonl", "").unwrap(), ["one", "two", "three"]);
        let t = "{\"text\":\"one\",\"label\":1}\n{\"text\":\"two\",\"label\":0}\n";
        assert_eq!(parse(t, "jsonl", "#label=1").unwrap(), ["one"]);
        assert_eq!(parse(t, "jsonl", "#label=1.0").unwrap(), ["one"]);
        let e = parse(t, "jsonl", "#body").unwrap_err().to_string();
        assert!(e.contains("no field `body`") && e.contains("label, text"), "{e}");
        let e = parse("{\"text\": 1}\n", "jsonl", "").unwrap_err().to_string();
        assert!(e.contains("not a string"), "{e}");
        let e = parse("{bad\n", "jsonl", "").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("not JSON"), "{e}");
        let e = parse(t, "jsonl", "#label=7").unwrap_err().to_string();
        assert!(e.contains("no row passes"), "{e}");
    }

    #[test]
    fn csv_reads_quoted_multiline_cells_and_filters() {
        let t = "id,comment_text,toxic\n1,\"line one\nline two\",0\n2,\"bad, \"\"quoted\"\"\",1\n";
        assert_eq!(
            parse(t, "csv", "#comment_text").unwrap(),
            ["line one\nline two", "bad, \"quoted\""]
        );
        assert_eq!(
            parse(t, "csv", "#comment_text,toxic=1").unwrap(),
            ["bad, \"quoted\""]
        );
        let e = parse(t, "csv", "").unwrap_err().to_string();
        assert!(
            e.contains("no `text` column") && e.contains("comment_text"),
            "{e}"
        );
        let e = parse(t, "csv", "#comment_text,label=1").unwrap_err().to_string();
        assert!(e.contains("no column `label`"), "{e}");
        assert_eq!(parse("sentence\nhello\n", "csv", "").unwrap(), ["hello"]);
        let e = parse("a,b\n1,2,3\n", "csv", "#a").unwrap_err().to_string();
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn json_reads_reference_subsets() {
        let t = r#"{"giraffe": ["A tall giraffe.", "Giraffes eat leaves."], "none": ["A car."]}"#;
        assert_eq!(parse(t, "json", "#none").unwrap(), ["A car."]);
        let e = parse(t, "json", "").unwrap_err().to_string();
        assert!(e.contains("giraffe, none"), "{e}");
        let e = parse(t, "json", "#zebra").unwrap_err().to_string();
        assert!(e.contains("no subset `zebra`"), "{e}");
        assert_eq!(parse(r#"["a", "b"]"#, "json", "").unwrap(), ["a", "b"]);
        assert_eq!(
            parse(
                r#"[{"text": "a", "y": true}, {"text": "b", "y": false}]"#,
                "json",
                "#y=true"
            )
            .unwrap(),
            ["a"]
        );
        assert!(parse("3", "json", "").is_err());
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("latin1.txt");
        std::fs::write(&p, b"caf\xe9\n").unwrap();
        let e = read_dataset_file(&p, None, &[], "test").unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
        let e = read_dataset_file(Path::new("/no/such/file.txt"), None, &[], "test").unwrap_err();
        assert!(e.to_string().contains("/no/such/file.txt"), "{e}");
        let p = dir.path().join("one.txt");
        std::fs::write(&p, "just one\n").unwrap();
        let d = read_dataset_file(&p, None, &[], "test").unwrap();
        let e = d.require(2, "source").unwrap_err().to_string();
        assert!(e.contains("1 sample(s), at least 2"), "{e}");
    }

    #[test]
    fn save_lines_round_trips_one_sample_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.txt");
        save_lines(&p, &["a\nb".into(), "  ".into(), "c".into()]).unwrap();
        let d = read_dataset_file(&p, None, &[], "test").unwrap();
        assert_eq!(d.samples, ["a b", "c"]);
        assert_eq!(d.name, "d");
    }
}
