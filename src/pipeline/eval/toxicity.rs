//! Toxicity of generated text, judged by a learned classifier: the model of the MIT-licensed
//! PyPI package `alt-profanity-check` 1.9.1, re-implemented here from its released vocabulary,
//! idf weights and coefficients (`assets/toxicity/`, exported by
//! `tools/export_toxicity_model.py`; provenance and licence in `assets/toxicity/README.md`).
//!
//! The model is scikit-learn's: a `TfidfVectorizer` (lowercase, tokens `(?u)\b\w\w+\b`,
//! unigrams, English stop words, l2-normalised count·idf over a vocabulary of 15 442 words)
//! and a `CalibratedClassifierCV` of five `LinearSVC`s, each with a sigmoid (Platt)
//! calibrator. For a text with tf-idf vector `x`:
//!
//! ```text
//! f_i      = intercept_i + Σ_t coef_i[t] · x[t]          (LinearSVC decision function)
//! p_i      = 1 / (1 + exp(a_i · f_i + b_i))              (sklearn's _SigmoidCalibration)
//! P(toxic) = (p_0 + … + p_4) / 5,   P(non-toxic) = ((1 − p_0) + … + (1 − p_4)) / 5
//! ```
//!
//! [`ToxicityClassifier::probability`] is the package's `predict_prob` (P(toxic)); the label
//! of [`ToxicityClassifier::is_toxic`] is its `predict`: the class of highest mean probability,
//! the first (non-toxic) on a tie, i.e. toxic when P(toxic) > 0.5, strictly. Both come from
//! the same calibrated mean: the package has no other threshold. Each step repeats sklearn's
//! float64 operations in sklearn's order (counts in column order, l2 norm, dot products,
//! sigmoid, running mean), so the results are the package's bit for bit on the 1 835 texts of
//! tests/toxicity_reference.rs; only another platform's `exp` could move them by an ulp.
//!
//! It is a bag-of-words model trained on about 200k English comments (Jigsaw's Wikipedia talk
//! comments, which the built-in Jigsaw sample comes from, and hate-speech/offensive tweets):
//! it reacts to insults, slurs and profanity, and to some words that merely co-occur with
//! them; it does not understand context.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

/// The exported model, compiled in.
const BUILTIN: &str = include_str!("../../../assets/toxicity/profanity_model.tsv");

/// The format this parser reads (the first field of the `format` line and its version).
const FORMAT: (&str, &str) = ("act-toxicity-tfidf-svc", "1");

/// sklearn's default token pattern, which the model was trained with.
const SKLEARN_TOKEN_PATTERN: &str = r"(?u)\b\w\w+\b";

/// The same tokens for the `regex` crate. Python's `\w` (Unicode `str` patterns) is `_` and
/// every character that `str.isalnum()` accepts: general categories L* and N*, and nothing
/// else (checked over every code point of Python 3.11's Unicode 14 database). `\b\w\w+\b` then
/// finds the maximal runs of two or more such characters. The `regex` crate's own `\w` and
/// `\b` differ (they take combining marks, connector punctuation and joiners as word
/// characters and leave out No, e.g. `²`), so the class is spelled out.
const TOKEN_REGEX: &str = r"[\p{L}\p{N}_]{2,}";

/// What can be wrong with a model file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A line that cannot be read.
    #[error("toxicity model, line {line}: {message}")]
    Malformed { line: usize, message: String },
    /// A setting this implementation does not reproduce.
    #[error("toxicity model, line {line}: unsupported {key} {value:?} (implemented: {expected:?})")]
    Unsupported {
        line: usize,
        key: String,
        value: String,
        expected: &'static str,
    },
    /// A header line that is not there.
    #[error("toxicity model: no {0:?} line before the terms")]
    Missing(&'static str),
}

fn malformed(line: usize, message: impl Into<String>) -> ModelError {
    ModelError::Malformed {
        line,
        message: message.into(),
    }
}

/// One calibrated classifier of the ensemble: a linear SVM's intercept and its sigmoid.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Calibrator {
    intercept: f64,
    a: f64,
    b: f64,
}

/// A tf-idf + calibrated linear SVM classifier of toxic text (see the module docs).
#[derive(Debug)]
pub struct ToxicityClassifier {
    /// Column of each vocabulary term.
    vocabulary: HashMap<Box<str>, u32>,
    /// idf of each column.
    idf: Vec<f64>,
    /// Coefficients, term by term: `coef[column * calibrators.len() + i]` for calibrator `i`.
    coef: Vec<f64>,
    calibrators: Vec<Calibrator>,
    token: Regex,
}

/// The header settings the exporter writes and this implementation reproduces: key, the
/// accepted value (tab-separated fields after the key).
const SETTINGS: &[(&str, &str)] = &[
    ("lowercase", "true"),
    ("strip_accents", "none"),
    ("token_pattern", SKLEARN_TOKEN_PATTERN),
    ("analyzer", "word"),
    ("ngram_range", "1\t1"),
    // Stop words are dropped after tokenizing; the exporter checks that none is in the
    // vocabulary, so dropping them changes no count and the list is not needed here.
    ("stop_words", "english\tnone-in-vocabulary"),
    ("binary", "false"),
    ("norm", "l2"),
    ("use_idf", "true"),
    ("sublinear_tf", "false"),
    ("dtype", "float64"),
    ("classes", "0\t1"),
    ("calibration", "sigmoid"),
];

fn parse_f64(field: &str, line: usize, what: &str) -> Result<f64, ModelError> {
    match field.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(malformed(line, format!("{what}: not a finite number: {field:?}"))),
    }
}

impl ToxicityClassifier {
    /// The classifier compiled into the binary (parsed once, on first use).
    ///
    /// # Panics
    /// If the compiled-in asset does not parse, which the unit tests rule out; use
    /// [`ToxicityClassifier::try_builtin`] to get the error instead.
    pub fn builtin() -> &'static ToxicityClassifier {
        match Self::try_builtin() {
            Ok(c) => c,
            Err(e) => panic!("the built-in toxicity model is broken: {e}"),
        }
    }

    /// The classifier compiled into the binary, or why its asset does not parse.
    pub fn try_builtin() -> Result<&'static ToxicityClassifier, &'static ModelError> {
        static CELL: OnceLock<Result<ToxicityClassifier, ModelError>> = OnceLock::new();
        CELL.get_or_init(|| Self::parse(BUILTIN)).as_ref()
    }

    /// Reads a model in the format of `tools/export_toxicity_model.py`.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| !l.starts_with('#'));
        let mut settings: HashMap<&str, (usize, &str)> = HashMap::new();
        let mut n_calibrators: Option<usize> = None;
        let mut calibrators = Vec::new();
        let mut n_terms = None;
        let mut format_seen = false;
        for (line, l) in lines.by_ref() {
            let (key, value) = l.split_once('\t').unwrap_or((l, ""));
            if !format_seen {
                let fields: Vec<&str> = value.split('\t').collect();
                if key != "format" || fields.len() != 2 || fields[0] != FORMAT.0 {
                    return Err(malformed(line, "not a toxicity model (no format line)"));
                }
                if fields[1] != FORMAT.1 {
                    return Err(ModelError::Unsupported {
                        line,
                        key: "format version".into(),
                        value: fields[1].into(),
                        expected: FORMAT.1,
                    });
                }
                format_seen = true;
                continue;
            }
            match key {
                "calibrators" => {
                    let n = value
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| malformed(line, "calibrators: not a positive count"))?;
                    n_calibrators = Some(n);
                }
                "calibrator" => {
                    let fields: Vec<&str> = value.split('\t').collect();
                    if fields.len() != 4 {
                        return Err(malformed(line, "calibrator: expected index, intercept, a, b"));
                    }
                    if fields[0].parse::<usize>().ok() != Some(calibrators.len()) {
                        return Err(malformed(line, "calibrators out of order"));
                    }
                    calibrators.push(Calibrator {
                        intercept: parse_f64(fields[1], line, "intercept")?,
                        a: parse_f64(fields[2], line, "a")?,
                        b: parse_f64(fields[3], line, "b")?,
                    });
                }
                "terms" => {
                    let n = value
                        .parse::<u32>()
                        .map_err(|_| malformed(line, "terms: not a count"))?;
                    n_terms = Some((line, n as usize));
                    break;
                }
                _ => {
                    if settings.insert(key, (line, value)).is_some() {
                        return Err(malformed(line, format!("{key} given twice")));
                    }
                }
            }
        }
        if !format_seen {
            return Err(malformed(1, "not a toxicity model (no format line)"));
        }
        for &(key, expected) in SETTINGS {
            let &(line, value) = settings.get(key).ok_or(ModelError::Missing(key))?;
            if value != expected {
                return Err(ModelError::Unsupported {
                    line,
                    key: key.into(),
                    value: value.into(),
                    expected,
                });
            }
        }
        // smooth_idf only tells how the stored idf was computed.
        let &(line, smooth) = settings
            .get("smooth_idf")
            .ok_or(ModelError::Missing("smooth_idf"))?;
        if smooth != "true" && smooth != "false" {
            return Err(malformed(line, "smooth_idf: not true or false"));
        }
        if let Some((key, &(line, _))) = settings
            .iter()
            .find(|(k, _)| **k != "smooth_idf" && !SETTINGS.iter().any(|(s, _)| s == *k))
        {
            return Err(malformed(line, format!("unknown setting {key:?}")));
        }
        let k = n_calibrators.ok_or(ModelError::Missing("calibrators"))?;
        let (terms_line, n) = n_terms.ok_or(ModelError::Missing("terms"))?;
        if calibrators.len() != k {
            return Err(malformed(
                terms_line,
                format!("{} calibrator lines for {k} calibrators", calibrators.len()),
            ));
        }

        // The announced counts size the buffers only up to what a sane file holds.
        let cap = n.min(1 << 20);
        let mut vocabulary = HashMap::with_capacity(cap);
        let mut idf = Vec::with_capacity(cap);
        let mut coef = Vec::with_capacity(cap.saturating_mul(k).min(1 << 23));
        for (line, l) in lines.by_ref() {
            if idf.len() == n {
                return Err(malformed(line, format!("more than the {n} terms announced")));
            }
            let mut fields = l.split('\t');
            let term = fields.next().unwrap_or("");
            if term.is_empty() {
                return Err(malformed(line, "empty term"));
            }
            let column = idf.len() as u32;
            if vocabulary.insert(Box::<str>::from(term), column).is_some() {
                return Err(malformed(line, format!("term {term:?} given twice")));
            }
            idf.push(parse_f64(fields.next().unwrap_or(""), line, "idf")?);
            for i in 0..k {
                coef.push(parse_f64(
                    fields.next().unwrap_or(""),
                    line,
                    &format!("coef {i}"),
                )?);
            }
            if fields.next().is_some() {
                return Err(malformed(line, format!("more than idf and {k} coefficients")));
            }
        }
        if idf.len() != n {
            return Err(malformed(
                terms_line,
                format!("{n} terms announced, {} found", idf.len()),
            ));
        }
        let token = Regex::new(TOKEN_REGEX).map_err(|e| malformed(0, e.to_string()))?;
        Ok(Self {
            vocabulary,
            idf,
            coef,
            calibrators,
            token,
        })
    }

    /// Number of vocabulary terms.
    pub fn vocabulary_len(&self) -> usize {
        self.idf.len()
    }

    /// Number of calibrated classifiers averaged.
    pub fn calibrators_len(&self) -> usize {
        self.calibrators.len()
    }

    /// The tokens sklearn's analyzer finds in `lowered`, the text after `str.lower()` (Rust's
    /// `to_lowercase`: the same full Unicode mapping, final sigma included): every maximal run
    /// of two or more word characters.
    fn tokens<'t>(&self, lowered: &'t str) -> impl Iterator<Item = &'t str> {
        self.token.find_iter(lowered).map(|m| m.as_str())
    }

    /// The l2-normalised tf-idf vector of `text`: (column, weight) in increasing column order,
    /// the order in which sklearn stores, normalises and multiplies it.
    fn features(&self, text: &str) -> Vec<(usize, f64)> {
        let lowered = text.to_lowercase();
        let mut columns: Vec<u32> = self
            .tokens(&lowered)
            .filter_map(|t| self.vocabulary.get(t).copied())
            .collect();
        columns.sort_unstable();
        let mut x: Vec<(usize, f64)> = Vec::new();
        for c in columns {
            let c = c as usize;
            match x.last_mut() {
                Some((last, count)) if *last == c => *count += 1.0,
                _ => x.push((c, 1.0)),
            }
        }
        for (c, v) in &mut x {
            *v *= self.idf[*c];
        }
        let sum_sq = x.iter().fold(0.0, |s, &(_, v)| s + v * v);
        if sum_sq != 0.0 {
            let norm = sum_sq.sqrt();
            for (_, v) in &mut x {
                *v /= norm;
            }
        }
        x
    }

    /// [P(non-toxic), P(toxic)], the package's `model.predict_proba` for `text`.
    pub fn class_probabilities(&self, text: &str) -> [f64; 2] {
        let x = self.features(text);
        let k = self.calibrators.len();
        let mut mean = [0.0f64; 2];
        for (i, cal) in self.calibrators.iter().enumerate() {
            let dot = x.iter().fold(0.0, |s, &(c, v)| s + v * self.coef[c * k + i]);
            let f = dot + cal.intercept;
            let p = 1.0 / (1.0 + (cal.a * f + cal.b).exp());
            mean[0] += 1.0 - p;
            mean[1] += p;
        }
        [mean[0] / k as f64, mean[1] / k as f64]
    }

    /// P(toxic): the package's `predict_prob`.
    pub fn probability(&self, text: &str) -> f64 {
        self.class_probabilities(text)[1]
    }

    /// The package's `predict`: toxic when P(toxic) > P(non-toxic) (ties are non-toxic).
    pub fn is_toxic(&self, text: &str) -> bool {
        let [non_toxic, toxic] = self.class_probabilities(text);
        toxic > non_toxic
    }
}

/// Whether `text` is toxic, by the built-in classifier (the package's `predict`).
pub fn is_toxic(text: &str) -> bool {
    ToxicityClassifier::builtin().is_toxic(text)
}

/// P(toxic) of each text, by the built-in classifier (the package's `predict_prob`).
pub fn toxicity_probabilities<S: AsRef<str>>(texts: &[S]) -> Vec<f64> {
    let c = ToxicityClassifier::builtin();
    texts.iter().map(|t| c.probability(t.as_ref())).collect()
}

/// The fraction of `texts` that are toxic (0 for no texts).
pub fn toxicity_rate<S: AsRef<str>>(texts: &[S]) -> f64 {
    if texts.is_empty() {
        return 0.0;
    }
    let c = ToxicityClassifier::builtin();
    texts.iter().filter(|t| c.is_toxic(t.as_ref())).count() as f64 / texts.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::concepts::builtin_dataset;

    #[test]
    fn parses_the_builtin_model() {
        let c = ToxicityClassifier::try_builtin().expect("builtin model");
        assert_eq!(c.vocabulary_len(), 15442);
        assert_eq!(c.calibrators_len(), 5);
        assert_eq!(c.coef.len(), 15442 * 5);
    }

    #[test]
    fn flags_insults_not_everyday_text() {
        for t in [
            "you are a fucking idiot",
            "YOU STUPID MORON",
            "shut up, you piece of shit",
        ] {
            assert!(is_toxic(t), "{t}");
        }
        for t in [
            "The weather was mild and the bus was on time.",
            "the city had been transformed by a freak of nature",
            "Thanks for fixing the references on the article.",
            "",
        ] {
            assert!(!is_toxic(t), "{t}");
        }
        assert_eq!(toxicity_rate::<&str>(&[]), 0.0);
        assert_eq!(toxicity_rate(&["idiot", "hello there"]), 0.5);
        let p = toxicity_probabilities(&["idiot", "hello there"]);
        assert!(p[0] > 0.9 && p[1] < 0.1, "{p:?}");
    }

    #[test]
    fn separates_the_jigsaw_labels() {
        let toxic = builtin_dataset("jigsaw-toxic").unwrap().samples;
        let clean = builtin_dataset("jigsaw-non-toxic").unwrap().samples;
        let (t, c) = (toxicity_rate(&toxic), toxicity_rate(&clean));
        assert!(t > c + 0.5, "toxic {t:.2} vs non-toxic {c:.2}");
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        let (pt, pc) = (
            mean(toxicity_probabilities(&toxic)),
            mean(toxicity_probabilities(&clean)),
        );
        assert!(pt > pc + 0.5, "mean P(toxic) {pt:.2} vs {pc:.2}");
    }

    #[test]
    fn tokenizes_like_python() {
        let c = ToxicityClassifier::builtin();
        let toks = |s: &str| c.tokens(&s.to_lowercase()).map(String::from).collect::<Vec<_>>();
        assert_eq!(
            toks("You're a dumb-ass_x, OK? a b"),
            ["you", "re", "dumb", "ass_x", "ok"]
        );
        // Combining marks and connector punctuation other than '_' split words; No digits join.
        assert_eq!(toks("cafe\u{301} x²y a\u{203f}bc"), ["cafe", "x²y", "bc"]);
        assert_eq!(toks("İstanbul ΟΔΟΣ"), ["stanbul", "οδος"]);
    }

    #[test]
    fn rejects_bad_models() {
        let good = BUILTIN;
        let with = |from: &str, to: &str| ToxicityClassifier::parse(&good.replacen(from, to, 1));
        assert!(matches!(
            with("lowercase\ttrue", "lowercase\tfalse"),
            Err(ModelError::Unsupported { .. })
        ));
        assert!(matches!(with("norm\tl2\n", ""), Err(ModelError::Missing("norm"))));
        assert!(matches!(
            with("terms\t15442", "terms\t15443"),
            Err(ModelError::Malformed { .. })
        ));
        let huge = with("terms\t15442", &format!("terms\t{}", u32::MAX));
        assert!(matches!(huge, Err(ModelError::Malformed { .. })));
        assert!(matches!(
            with("calibrator\t4", "calibrator\t3"),
            Err(ModelError::Malformed { .. })
        ));
        assert!(matches!(
            with(
                "format\tact-toxicity-tfidf-svc\t1",
                "format\tact-toxicity-tfidf-svc\t2"
            ),
            Err(ModelError::Unsupported { .. })
        ));
        let first_term = good
            .lines()
            .skip_while(|l| !l.starts_with("terms\t"))
            .nth(1)
            .unwrap();
        let broken = first_term.replacen('\t', "\tNaN\t", 1);
        assert!(matches!(
            with(first_term, &broken),
            Err(ModelError::Malformed { .. })
        ));
        let dup = format!("{first_term}\n{first_term}");
        assert!(matches!(
            with(first_term, &dup),
            Err(ModelError::Malformed { .. })
        ));
        for text in ["", "hello", "format\tsomething\t1", "\u{0}\t\t\t"] {
            assert!(ToxicityClassifier::parse(text).is_err(), "{text:?}");
        }
        // Truncated anywhere: an error, never a panic.
        for cut in [10, 500, 1000, 1500, 2000, 3000] {
            let end = (0..=cut).rev().find(|&i| good.is_char_boundary(i)).unwrap_or(0);
            assert!(ToxicityClassifier::parse(&good[..end]).is_err(), "cut at {end}");
        }
    }
}
