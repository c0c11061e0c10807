"""Writes tests/fixtures/toxicity/reference.jsonl for tests/toxicity_reference.rs.

Each line after the first is {"text": ..., "p": "...", "label": ...}: the text, the PyPI
package alt-profanity-check 1.9.1's own `predict_prob` for it (P(toxic): Python's repr of the
float64, in a string so that it is read back with a correctly rounded parser such as Rust's
`str::parse::<f64>`; serde_json's default number parsing can be an ulp off) and its
`predict` (0 or 1). The first line is {"meta": {...}}
with the package, scikit-learn, Python and Unicode versions.

Texts: the comments of assets/concepts/jigsaw_sample.csv, every other sentence of the nine
sentence sets of assets/concepts/ (SENTENCE_FILES), those sentences with an insult or a swear
word added (a spread of probabilities, some close to 0.5), and hand-written edge cases for the
tokenizer (empty and punctuation-only text, accents, combining marks, emoji, CAPITALS, words
joined by underscores, apostrophes and hyphens, digits, other scripts, case mappings that
change length, long and repetitive text).

Run it in the virtual environment of tools/export_toxicity_model.py:

    /tmp/apc-venv/bin/python tools/make_toxicity_fixture.py
"""

import csv
import json
import re
import sys
import unicodedata
from importlib import metadata
from pathlib import Path

import sklearn
from profanity_check import predict, predict_prob

ROOT = Path(__file__).resolve().parent.parent
CONCEPTS = ROOT / "assets" / "concepts"
OUT = ROOT / "tests" / "fixtures" / "toxicity" / "reference.jsonl"

# The sentence sets written for AcT Studio (assets/concepts/ATTRIBUTION.md).
SENTENCE_FILES = [
    "neutral.txt", "football.txt", "cooking.txt", "ocean.txt", "space.txt", "music.txt",
    "weddings.txt", "sentiment_positive.txt", "sentiment_negative.txt",
]

EDGE_CASES = [
    "",
    " ",
    "\n\t\r",
    "!!!",
    "?!...,;:-- ()[]{} <> @#$%^&*",
    "a",
    "I",
    "a b c d e f g",
    "ok",
    "idiot",
    "IDIOT",
    "Idiot!",
    "YOU ARE A STUPID IDIOT",
    "YOU ARE A FUCKING MORON AND EVERYONE HATES YOU",
    "you are a stupid idiot",
    "fuck",
    "f*ck you",
    "f u c k you",
    "fuuuuuck",
    "shit shit shit shit shit shit shit shit shit shit",
    "idiot idiot idiot",
    "the the the the the",
    "stupid_idiot",
    "stupid-idiot",
    "stupid'idiot",
    "you're an idiot",
    "don't be a jerk",
    "it's a dumb-ass idea",
    "user_talk page",
    "__toc__",
    "___",
    "_a_",
    "__",
    "idiot123",
    "123 456 7890",
    "000 00 004",
    "2016 (UTC) 21:51",
    "1st 2nd 3rd 4th",
    "x² ½ ¾ Ⅻ ⅷ ①②",
    "café naïve résumé",
    "cafe\u0301 nai\u0308ve",
    "Pokémon POKÉMON pokémon",
    "POKE\u0301MON",
    "josé JOSÉ José",
    "beyoncé expért trácht míkka",
    "İstanbul",
    "KELVIN \u212a and \u212aelvin",
    "ΟΔΟΣ ΟΔΟΣ μελ ΜΕΛ",
    "ετητης ΕΤΗΤΗΣ",
    "dαlus DΑLUS βcommand ΒCOMMAND",
    "snunɐw",
    "Straße STRASSE",
    "ǅemal ǆ Ǆ",
    "竜龙 聖やや 連絡 見学 迷惑",
    "連絡見学",
    "ውይይት",
    "Привет, ты идиот",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "こんにちは世界",
    "😀 😡🤬 you idiot 🤡",
    "idiot😀idiot",
    "idiot\u200bidiot",
    "idiot\u00a0idiot",
    "stupid\u203fidiot",
    "ｆｕｃｋ ｙｏｕ",
    "ＩＤＩＯＴ",
    "ﬁne ﬂuffy",
    "Hello, World! How are you today?",
    "The weather was mild and the bus was on time.",
    "the city had been transformed by a freak of nature",
    "Thanks for the help with the article, much appreciated.",
    "I will kill you",
    "go kill yourself",
    "I hate you",
    "you suck",
    "shut up",
    "what the hell",
    "damn it",
    "bloody hell",
    "son of a bitch",
    "piece of shit",
    "dick",
    "Dick Cheney was vice president",
    "Please stop vandalizing Wikipedia pages.",
    "You are a vandal and a troll.",
    "gay",
    "gay marriage was legalised",
    "nigger",
    "retard",
    "cunt",
    "asshole",
    "ass",
    "bastard",
    "wanker",
    "suck my dick",
    "The word 'idiot' comes from Greek.",
    "In the 1990s the band played in Manchester.",
    "https://example.com/path?query=1&x=idiot",
    "email me at someone@example.org",
    "\"quoted\" 'single' `back`",
    "line one\nline two\r\nline three",
    "tab\tseparated\tidiot",
    "word " * 400,
    ("This is a long and friendly message about gardening, cooking and the weather. " * 60).strip(),
    ("You are an idiot and a moron. " * 80).strip(),
    "".join(chr(c) for c in range(0x20, 0x250)),
]

INSULTS = [
    "idiot", "stupid", "moron", "fuck", "fucking", "shit", "bitch", "ass", "dumb", "hate",
    "suck", "loser", "damn", "crap", "jerk", "pathetic", "ugly", "fat", "kill", "die",
]


def sentences():
    out = []
    for name in SENTENCE_FILES:
        path = CONCEPTS / name
        lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
        out.extend(lines[::2])
    return out


def jigsaw():
    with open(CONCEPTS / "jigsaw_sample.csv", newline="", encoding="utf-8") as f:
        return [row["comment_text"] for row in csv.DictReader(f)]


def runs_of_word_chars(text):
    """Maximal runs of two or more characters of categories L*, N* or '_'."""
    out, cur = [], []
    for ch in text:
        if ch == "_" or unicodedata.category(ch)[0] in "LN":
            cur.append(ch)
        else:
            if len(cur) >= 2:
                out.append("".join(cur))
            cur = []
    if len(cur) >= 2:
        out.append("".join(cur))
    return out


def main():
    base = sentences()
    mixed = []
    for i, s in enumerate(base[::4]):
        word = INSULTS[i % len(INSULTS)]
        mixed.append(f"{s.rstrip('.!?')}, you {word}.")
        mixed.append(f"{word.upper()}! {s}")
    texts = jigsaw() + base + mixed + EDGE_CASES
    # Texts whose probabilities fall near the 0.5 threshold, to check labels there.
    near = []
    for s in base[1::4]:
        for w in INSULTS:
            near.append(f"{s} {w}")
    p_near = predict_prob(near)
    picked = sorted(range(len(near)), key=lambda k: abs(p_near[k] - 0.5))[:40]
    texts += [near[k] for k in sorted(picked)]

    seen, unique = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            unique.append(t)

    # The tokenizer the Rust side implements: the package's regex finds the maximal runs of
    # word characters (categories L*, N* and '_' in Python's Unicode database).
    pattern = re.compile(r"(?u)\b\w\w+\b")
    for t in unique:
        low = t.lower()
        assert pattern.findall(low) == runs_of_word_chars(low), t

    probs = predict_prob(unique)
    labels = predict(unique)
    meta = {
        "package": "alt-profanity-check",
        "version": metadata.version("alt-profanity-check"),
        "scikit_learn": sklearn.__version__,
        "python": sys.version.split()[0],
        "unicode": unicodedata.unidata_version,
        "texts": len(unique),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for t, p, y in zip(unique, probs, labels):
            f.write(json.dumps({"text": t, "p": repr(float(p)), "label": int(y)}) + "\n")
    flagged = int(sum(labels))
    close = sum(abs(p - 0.5) < 0.05 for p in probs)
    print(f"wrote {OUT}: {len(unique)} texts, {flagged} flagged, {close} within 0.05 of 0.5, "
          f"{OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
