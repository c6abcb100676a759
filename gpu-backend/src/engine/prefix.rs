//! The prefix KV cache: a new sequence whose prompt starts like an earlier sequence's tokens
//! starts from a copy of that history's keys and values and prefills only the rest.
//!
//! Chat prompts share long prefixes: the template's system prompt opens every request, and
//! each turn of a conversation repeats the whole conversation before it. Recomputing them
//! is most of a short request's time to first token. A position's keys and values depend
//! only on the tokens up to it (see [`KvCache::prefix`]), so reusing them changes no output.
//!
//! Each worker keeps one store per loaded chat model (in its registry entry, so evicting or
//! reloading a model drops it): the caches of finished sequences, moved in without a copy,
//! least recently used first out when their bytes exceed the budget. A new sequence takes
//! the longest prefix it shares with a stored history or with a sequence still running, and
//! always leaves at least its last prompt token to prefill, since that step's logits give
//! its first completion token. The match is a linear scan: the store holds a few dozen
//! histories at most, and comparing token ids costs nothing beside a forward step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::ModelError;
use crate::llama::KvCache;

/// A history kept for reuse: its tokens and their keys and values.
struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
}

/// The reusable histories of one chat model on one worker.
pub(super) struct PrefixCache {
    /// Most recently used last.
    entries: Vec<Entry>,
    budget_bytes: u64,
    bytes_per_token: u64,
    held_tokens: u64,
    /// The process-wide gauge of bytes held by every store, kept in step with this one's.
    gauge: Arc<AtomicU64>,
}

/// Where a reused prefix comes from: a stored history, or a running sequence's cache.
pub(super) struct Source<'a> {
    /// The tokens whose keys and values `cache` holds (its first `cache.len()` positions).
    pub(super) tokens: &'a [u32],
    pub(super) cache: &'a KvCache,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// An empty store that keeps at most `budget_bytes` of keys and values (0: keeps
    /// nothing), counting what it holds in `gauge`.
    pub(super) fn new(budget_bytes: u64, bytes_per_token: u64, gauge: Arc<AtomicU64>) -> Self {
        Self {
            entries: Vec::new(),
            budget_bytes,
            bytes_per_token: bytes_per_token.max(1),
            held_tokens: 0,
            gauge,
        }
    }

    /// Whether reuse is on for this model.
    pub(super) fn enabled(&self) -> bool {
        self.budget_bytes > 0
    }

    /// Bytes of keys and values held now.
    pub(super) fn held_bytes(&self) -> u64 {
        self.held_tokens * self.bytes_per_token
    }

    /// The longest reusable prefix of `prompt` among the stored histories and `running`:
    /// how many tokens it covers and a cache holding a copy of them, or `None` when nothing
    /// is shared (or reuse is off).
    pub(super) fn lookup<'a>(
        &mut self,
        prompt: &[u32],
        running: impl Iterator<Item = Source<'a>>,
    ) -> Result<Option<(usize, KvCache)>, ModelError> {
        if !self.enabled() || prompt.len() < 2 {
            return Ok(None);
        }
        // The last prompt token is always fed, for the logits of the first new token.
        let usable = |tokens: &[u32], cache: &KvCache| {
            common_prefix(prompt, &tokens[..cache.len().min(tokens.len())]).min(prompt.len() - 1)
        };
        let stored = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (usable(&e.tokens, &e.cache), i))
            .max();
        let live = running
            .map(|s| (usable(s.tokens, s.cache), s))
            .max_by_key(|(n, _)| *n);
        let (n, cache) = match (stored, live) {
            (Some((n, i)), live) if live.as_ref().is_none_or(|(m, _)| *m <= n) => {
                // Touched: the entry moves to the most recently used end.
                let entry = self.entries.remove(i);
                let copy = entry.cache.prefix(n)?;
                self.entries.push(entry);
                (n, copy)
            }
            (_, Some((n, s))) => (n, s.cache.prefix(n)?),
            _ => return Ok(None),
        };
        Ok((n > 0).then_some((n, cache)))
    }

    /// Keeps a finished sequence's history: `tokens` whose first `cache.len()` positions
    /// `cache` holds. A stored history that the new one extends is dropped (the new one
    /// serves every prompt it served); a new one that a stored history already extends is
    /// not kept. Then the least recently used go until the store fits its budget.
    pub(super) fn insert(&mut self, mut tokens: Vec<u32>, mut cache: KvCache) {
        tokens.truncate(cache.len());
        if !self.enabled() || tokens.is_empty() {
            return;
        }
        let before = self.held_bytes();
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.tokens.len() >= tokens.len() && e.tokens[..tokens.len()] == tokens[..])
        {
            let entry = self.entries.remove(i);
            self.entries.push(entry);
            return;
        }
        let mut i = 0;
        while i < self.entries.len() {
            let e = &self.entries[i];
            if e.tokens.len() < tokens.len() && tokens[..e.tokens.len()] == e.tokens[..] {
                self.held_tokens -= e.tokens.len() as u64;
                self.entries.remove(i);
            } else {
                i += 1;
            }
        }
        cache.shrink_to_fit();
        self.held_tokens += tokens.len() as u64;
        self.entries.push(Entry { tokens, cache });
        while self.held_bytes() > self.budget_bytes && !self.entries.is_empty() {
            let e = self.entries.remove(0);
            self.held_tokens -= e.tokens.len() as u64;
        }
        let after = self.held_bytes();
        if after >= before {
            self.gauge.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.gauge.fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

impl Drop for PrefixCache {
    /// The model went away (evicted, reloaded, or the worker stopped): its bytes leave the
    /// gauge with it.
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.held_bytes(), Ordering::Relaxed);
    }
}
