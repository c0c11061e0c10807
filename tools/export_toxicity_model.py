"""Exports the toxicity classifier of the PyPI package alt-profanity-check 1.9.1 to plain text.

Writes assets/toxicity/profanity_model.tsv, which src/pipeline/eval/toxicity.rs compiles in,
and copies the package's licence to assets/toxicity/LICENSE-alt-profanity-check.txt.

The package (MIT licence) is a scikit-learn TfidfVectorizer and a CalibratedClassifierCV of
five LinearSVC models with sigmoid (Platt) calibrators, stored with joblib. This script reads
the fitted parameters and writes them out; it checks that the vectorizer options are the ones
the Rust side implements and stops otherwise.

Run it in a virtual environment that has exactly that package (it pins scikit-learn 1.9.1 and
joblib 1.6.0, and needs Python >= 3.11):

    python3 -m venv /tmp/apc-venv
    /tmp/apc-venv/bin/pip install alt-profanity-check==1.9.1
    /tmp/apc-venv/bin/python tools/export_toxicity_model.py

Then regenerate the verification fixture with tools/make_toxicity_fixture.py and update the
SHA-256 sums in assets/toxicity/README.md.

File format (UTF-8, tab-separated, one record a line, '#' lines are comments):

    format  act-toxicity-tfidf-svc  1
    <key>   <value>...                     vectorizer options and model structure
    calibrator  <i>  <intercept>  <a>  <b>  one line per calibrated classifier, i = 0, 1, ...
    terms   <n>
    <term>  <idf>  <coef_0> ... <coef_k-1>   n lines, in the vectorizer's column order

Floats are Python's repr of the float64 values, which reads back to the same float64.
"""

import sys
from importlib import metadata, resources
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
from sklearn.svm import LinearSVC

PACKAGE = "alt-profanity-check"
VERSION = "1.9.1"
TOKEN_PATTERN = r"(?u)\b\w\w+\b"

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "assets" / "toxicity"


def check(cond, what):
    if not cond:
        sys.exit(f"export_toxicity_model: unexpected model: {what}")


def main():
    check(metadata.version(PACKAGE) == VERSION, f"{PACKAGE} {metadata.version(PACKAGE)} installed")
    data = resources.files("profanity_check") / "data"
    vectorizer = joblib.load(data / "vectorizer.joblib")
    model = joblib.load(data / "model.joblib")

    # The vectorizer: the options the Rust tokenizer and weighting implement.
    check(type(vectorizer) is TfidfVectorizer, f"vectorizer {type(vectorizer)}")
    p = vectorizer.get_params()
    check(p["input"] == "content" and p["analyzer"] == "word", "input/analyzer")
    check(p["preprocessor"] is None and p["tokenizer"] is None, "custom preprocessor/tokenizer")
    check(p["lowercase"] is True and p["strip_accents"] is None, "lowercase/strip_accents")
    check(p["token_pattern"] == TOKEN_PATTERN, f"token_pattern {p['token_pattern']!r}")
    check(p["ngram_range"] == (1, 1), f"ngram_range {p['ngram_range']}")
    check(p["binary"] is False, "binary")
    check(p["norm"] == "l2" and p["use_idf"] is True, "norm/use_idf")
    check(p["sublinear_tf"] is False, "sublinear_tf")
    check(p["dtype"] is np.float64, f"dtype {p['dtype']}")
    check(p["stop_words"] == "english", f"stop_words {p['stop_words']!r}")
    vocabulary = vectorizer.vocabulary_
    n_terms = len(vocabulary)
    terms = [None] * n_terms
    for term, column in vocabulary.items():
        terms[column] = term
    check(all(t is not None for t in terms), "vocabulary columns not 0..n")
    # Stop words are removed after tokenizing; none is in the vocabulary, so at inference the
    # removal changes no count and the Rust side need not carry the list.
    check(not any(t in ENGLISH_STOP_WORDS for t in terms), "a stop word in the vocabulary")
    # Terms are tokens of the pattern: lowercase runs of word characters, no tabs or newlines.
    check(all(t == t.lower() and len(t) >= 2 and t.isprintable() for t in terms), "odd term")
    check(all("\t" not in t and " " not in t for t in terms), "whitespace in a term")
    idf = vectorizer.idf_
    check(idf.dtype == np.float64 and idf.shape == (n_terms,), "idf_")

    # The model: CalibratedClassifierCV(LinearSVC, method="sigmoid") on classes [0, 1].
    check(type(model) is CalibratedClassifierCV, f"model {type(model)}")
    check(model.method == "sigmoid", f"method {model.method}")
    check(list(model.classes_) == [0, 1], f"classes {model.classes_}")
    calibrated = model.calibrated_classifiers_
    rows = []
    coefs = []
    for i, cc in enumerate(calibrated):
        est = cc.estimator
        check(type(est) is LinearSVC, f"estimator {type(est)}")
        check(list(est.classes_) == [0, 1] and list(cc.classes) == [0, 1], "estimator classes")
        check(est.coef_.shape == (1, n_terms) and est.intercept_.shape == (1,), "coef shape")
        check(cc.method == "sigmoid" and len(cc.calibrators) == 1, "calibrators")
        cal = cc.calibrators[0]
        a, b = float(cal.a_), float(cal.b_)
        rows.append(f"calibrator\t{i}\t{float(est.intercept_[0])!r}\t{a!r}\t{b!r}")
        coefs.append(est.coef_[0].astype(np.float64))

    lines = [
        f"# Toxicity classifier of the PyPI package {PACKAGE} {VERSION} (MIT licence,",
        "# Copyright (c) 2018 Victor Zhou, 2021 Menelaos Kotoglou, and Dimitrios Mistriotis;",
        "# see LICENSE-alt-profanity-check.txt). Exported by tools/export_toxicity_model.py",
        f"# with scikit-learn {sklearn.__version__}, numpy {np.__version__}, "
        f"Python {sys.version.split()[0]}.",
        "# P(toxic) = mean over calibrators i of 1 / (1 + exp(a_i * f_i + b_i)),",
        "# f_i = intercept_i + sum_t coef_i[t] * x[t], x = l2-normalised (count * idf).",
        "format\tact-toxicity-tfidf-svc\t1",
        "lowercase\ttrue",
        "strip_accents\tnone",
        f"token_pattern\t{TOKEN_PATTERN}",
        "analyzer\tword",
        "ngram_range\t1\t1",
        "stop_words\tenglish\tnone-in-vocabulary",
        "binary\tfalse",
        "norm\tl2",
        "use_idf\ttrue",
        f"smooth_idf\t{'true' if p['smooth_idf'] else 'false'}",
        "sublinear_tf\tfalse",
        "dtype\tfloat64",
        "classes\t0\t1",
        "calibration\tsigmoid",
        f"calibrators\t{len(calibrated)}",
        *rows,
        f"terms\t{n_terms}",
    ]
    for t, term in enumerate(terms):
        values = [repr(float(idf[t]))] + [repr(float(c[t])) for c in coefs]
        lines.append(term + "\t" + "\t".join(values))

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / "profanity_model.tsv"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    licence = metadata.distribution(PACKAGE).read_text("licenses/LICENSE")
    check(licence is not None and "MIT License" in licence, "licence file")
    (OUT_DIR / "LICENSE-alt-profanity-check.txt").write_text(licence, encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes, {n_terms} terms, {len(calibrated)} calibrators)")


if __name__ == "__main__":
    main()
