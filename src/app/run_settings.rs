//! What produced an output column: the settings a generation was started with, snapshotted
//! when it was sent to the worker (not when Generate was clicked), shown above each column,
//! compared with the current settings to mark a column stale, and kept in the run history.

use serde::{Deserialize, Serialize};

/// A concept's strength as it was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedConcept {
    /// Concept name.
    pub name: String,
    /// λ (0 = off, 1 = full transport, beyond ±1 extrapolates).
    pub lambda: f32,
    /// The maps' data checksum (`data_sha256`, as `maps-info` shows it): what reproduces
    /// the run.
    pub maps_sha256: String,
}

/// Everything a generation depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The prompt.
    pub prompt: String,
    /// Wrapped in the chat template.
    pub chat: bool,
    /// System message (chat only).
    pub system: String,
    /// New tokens at most.
    pub max_tokens: usize,
    /// Temperature (0 = greedy).
    pub temperature: f32,
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Top-p (1 = off).
    pub top_p: f32,
    /// Seed.
    pub seed: u64,
    /// Which tokens are steered.
    pub scope: String,
    /// Enabled concepts in stack order (empty: unsteered).
    pub concepts: Vec<AppliedConcept>,
}

impl RunSettings {
    /// The part the unsteered column depends on (everything but the steering).
    pub fn unsteered(&self) -> Self {
        Self {
            scope: String::new(),
            concepts: Vec::new(),
            ..self.clone()
        }
    }

    /// One line for the top of a column: sampling, then each concept's λ and the scope.
    pub fn describe(&self, steered: bool) -> String {
        let sampling = if self.temperature <= 0.0 {
            "greedy".to_string()
        } else {
            format!(
                "T {:.2}, top-k {}, top-p {:.2}",
                self.temperature, self.top_k, self.top_p
            )
        };
        let mut s = format!("seed {} · {sampling} · ≤ {} tokens", self.seed, self.max_tokens);
        if steered {
            if self.concepts.is_empty() {
                s.push_str(" · no concept on");
            } else {
                let l: Vec<String> = self
                    .concepts
                    .iter()
                    .map(|c| format!("{} λ={:.2}", c.name, c.lambda))
                    .collect();
                s.push_str(&format!(" · {} · scope {}", l.join(", "), self.scope));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunSettings {
        RunSettings {
            prompt: "Hi".into(),
            chat: false,
            system: String::new(),
            max_tokens: 8,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 3,
            scope: "all".into(),
            concepts: vec![AppliedConcept {
                name: "football".into(),
                lambda: 0.5,
                maps_sha256: "ab".into(),
            }],
        }
    }

    #[test]
    fn the_unsteered_part_ignores_steering_only() {
        let a = run();
        let mut b = run();
        b.concepts[0].lambda = 1.0;
        b.scope = "last".into();
        assert_eq!(a.unsteered(), b.unsteered());
        b.seed = 4;
        assert_ne!(a.unsteered(), b.unsteered());
    }

    #[test]
    fn a_column_says_what_made_it() {
        let r = run();
        assert_eq!(r.describe(false), "seed 3 · greedy · ≤ 8 tokens");
        assert_eq!(
            r.describe(true),
            "seed 3 · greedy · ≤ 8 tokens · football λ=0.50 · scope all"
        );
    }
}
