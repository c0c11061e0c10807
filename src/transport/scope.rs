//! Which tokens of a forward chunk a map acts on.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// The tokens steered at a hook point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenScope {
    /// Every token (the paper's setting).
    #[default]
    All,
    /// Only the last token of each chunk: in a prefill the final prompt token (a chunk of a
    /// prompt prefilled in pieces that ends before it steers nothing), in decoding every new
    /// token (each is the last one when it is computed).
    LastToken,
    /// Only tokens at positions inside the prompt.
    PromptOnly,
    /// Only generated tokens (positions at or after the prompt length).
    GeneratedOnly,
}

/// Where a chunk of `seq_len` tokens sits in the sequence: the position of its first token
/// and the prompt length (positions `< prompt_len` are prompt tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenWindow {
    /// Absolute position of the chunk's first token.
    pub first_position: usize,
    /// Number of prompt tokens in the whole sequence.
    pub prompt_len: usize,
}

impl TokenScope {
    /// The token indices `[start, end)` of a chunk of `seq_len` tokens that this scope steers.
    pub fn token_range(&self, seq_len: usize, window: TokenWindow) -> Range<usize> {
        let first = window.first_position;
        let boundary = window.prompt_len.saturating_sub(first).min(seq_len);
        match self {
            TokenScope::All => 0..seq_len,
            // A chunk of a prompt prefilled in pieces that ends before the prompt's last
            // token has no token to steer.
            TokenScope::LastToken if first.saturating_add(seq_len) < window.prompt_len => seq_len..seq_len,
            TokenScope::LastToken => seq_len.saturating_sub(1)..seq_len,
            TokenScope::PromptOnly => 0..boundary,
            TokenScope::GeneratedOnly => boundary..seq_len,
        }
    }

    /// The command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            TokenScope::All => "all",
            TokenScope::LastToken => "last",
            TokenScope::PromptOnly => "prompt",
            TokenScope::GeneratedOnly => "generated",
        }
    }
}

impl std::str::FromStr for TokenScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(TokenScope::All),
            "last" | "last-token" => Ok(TokenScope::LastToken),
            "prompt" | "prompt-only" => Ok(TokenScope::PromptOnly),
            "generated" | "generated-only" => Ok(TokenScope::GeneratedOnly),
            other => Err(format!(
                "unknown token scope `{other}`: use all, last, prompt or generated"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_prompt_boundary() {
        let prefill = TokenWindow {
            first_position: 0,
            prompt_len: 5,
        };
        assert_eq!(TokenScope::All.token_range(5, prefill), 0..5);
        assert_eq!(TokenScope::LastToken.token_range(5, prefill), 4..5);
        assert_eq!(TokenScope::PromptOnly.token_range(5, prefill), 0..5);
        assert_eq!(TokenScope::GeneratedOnly.token_range(5, prefill), 5..5);
        let decode = TokenWindow {
            first_position: 7,
            prompt_len: 5,
        };
        assert_eq!(TokenScope::PromptOnly.token_range(1, decode), 0..0);
        assert_eq!(TokenScope::GeneratedOnly.token_range(1, decode), 0..1);
        let mixed = TokenWindow {
            first_position: 3,
            prompt_len: 5,
        };
        assert_eq!(TokenScope::PromptOnly.token_range(4, mixed), 0..2);
        assert_eq!(TokenScope::GeneratedOnly.token_range(4, mixed), 2..4);
        assert_eq!(TokenScope::LastToken.token_range(0, mixed), 0..0);
    }

    /// A 10-token prompt prefilled as chunks of 4, 4 and 2: only the prompt's last token is
    /// the last token steered, as in one pass; decoding steers each new token.
    #[test]
    fn last_token_in_a_chunked_prefill_is_the_prompts_last() {
        let w = |first| TokenWindow {
            first_position: first,
            prompt_len: 10,
        };
        assert_eq!(TokenScope::LastToken.token_range(4, w(0)), 4..4);
        assert_eq!(TokenScope::LastToken.token_range(4, w(4)), 4..4);
        assert_eq!(TokenScope::LastToken.token_range(2, w(8)), 1..2);
        assert_eq!(TokenScope::LastToken.token_range(10, w(0)), 9..10);
        assert_eq!(TokenScope::LastToken.token_range(1, w(10)), 0..1);
        assert_eq!(TokenScope::PromptOnly.token_range(4, w(4)), 0..4);
        assert_eq!(TokenScope::GeneratedOnly.token_range(4, w(4)), 4..4);
    }
}
