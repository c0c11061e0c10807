//! Concept presence by keywords: does a generation use any of the concept's words?

/// One keyword: a word, a word prefix (`kick*`), or a phrase of words (`world cup`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Keyword {
    /// Whole words in order, the last one possibly a prefix.
    Words {
        words: Vec<String>,
        last_is_prefix: bool,
    },
}

/// A concept's keyword list, matched case-insensitively against the words of a text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeywordSet {
    keywords: Vec<Keyword>,
}

/// The lowercase words of `text` (letters and digits; apostrophes split words).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl KeywordSet {
    /// Parses keywords: `word`, `prefix*`, or `several words` (the last may end in `*`).
    /// Empty entries are ignored.
    pub fn new<S: AsRef<str>>(list: &[S]) -> Self {
        let keywords = list
            .iter()
            .filter_map(|k| {
                let k = k.as_ref().trim();
                let last_is_prefix = k.ends_with('*');
                let words = words(k.trim_end_matches('*'));
                (!words.is_empty()).then_some(Keyword::Words {
                    words,
                    last_is_prefix,
                })
            })
            .collect();
        Self { keywords }
    }

    /// Reads a keyword file: one keyword per line, or comma-separated; `#` starts a comment.
    pub fn parse_list(text: &str) -> Self {
        let items: Vec<&str> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split(','))
            .collect();
        Self::new(&items)
    }

    /// Whether there are no keywords.
    pub fn is_empty(&self) -> bool {
        self.keywords.is_empty()
    }

    /// The first keyword occurring in `text`, as written in the list (without `*`).
    pub fn find(&self, text: &str) -> Option<String> {
        let ws = words(text);
        self.keywords.iter().find_map(
            |Keyword::Words {
                 words: kw,
                 last_is_prefix,
             }| {
                let n = kw.len();
                (0..ws.len().saturating_sub(n - 1)).find_map(|i| {
                    let window = &ws[i..i + n];
                    let head_ok = window[..n - 1] == kw[..n - 1];
                    let last_ok = if *last_is_prefix {
                        window[n - 1].starts_with(&kw[n - 1])
                    } else {
                        window[n - 1] == kw[n - 1]
                    };
                    (head_ok && last_ok).then(|| kw.join(" "))
                })
            },
        )
    }

    /// Whether any keyword occurs in `text`.
    pub fn matches(&self, text: &str) -> bool {
        self.find(text).is_some()
    }

    /// The fraction of `texts` containing a keyword (0 for no texts).
    pub fn rate<S: AsRef<str>>(&self, texts: &[S]) -> f64 {
        if texts.is_empty() {
            return 0.0;
        }
        texts.iter().filter(|t| self.matches(t.as_ref())).count() as f64 / texts.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_prefixes_and_phrases() {
        let k = KeywordSet::new(&["goal", "kick*", "world cup", "black hole*", " ", "*"]);
        assert!(k.matches("What a GOAL!"));
        assert!(
            !k.matches("The goalkeeper dived."),
            "plain keywords match whole words only"
        );
        assert!(k.matches("She kicked it."));
        assert!(k.matches("the World  Cup final"));
        assert!(!k.matches("the world's cup"));
        assert!(k.matches("two black holes merged"));
        assert!(!k.matches("a black cat"));
        assert_eq!(k.find("kicking a ball"), Some("kick".into()));
        assert_eq!(k.rate(&["goal", "none", "kick", "nothing"]), 0.5);
        assert_eq!(k.rate::<&str>(&[]), 0.0);
        assert!(KeywordSet::new::<&str>(&[]).is_empty());
    }

    #[test]
    fn keyword_files_take_lines_commas_and_comments() {
        let k = KeywordSet::parse_list("# football words\nsoccer, goal\n  referee* # people\n");
        assert!(k.matches("the referees"));
        assert!(k.matches("Soccer"));
        assert!(!k.matches("football"));
    }
}
