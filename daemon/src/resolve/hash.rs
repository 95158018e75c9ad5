//! A small, fast, non-cryptographic hasher for the resolver's in-process tables.
//!
//! The keys (process identities, (file, offset) pairs) are integers chosen by the kernel, not
//! by an adversary who could craft collisions, and they are hashed on the fast path, where
//! std's SipHash (≈20 ns for 16 bytes) would cost as much as the whole lookup. This is the
//! multiply-rotate scheme of rustc's FxHasher.

use std::hash::{BuildHasherDefault, Hasher};

/// An FxHash-style hasher: one rotate, xor and multiply per word.
#[derive(Default, Clone, Copy)]
pub struct FastHasher {
    hash: u64,
}

/// Odd constant from FxHash (⌊2^64 / φ⌋ made odd): spreads low-entropy integers.
const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown takes its control bits from the top 7 bits: fold the well-mixed high
        // half down so both ends of the word vary.
        self.hash ^ (self.hash >> 32)
    }
}

/// `BuildHasher` for [`FastHasher`].
pub type FastBuild = BuildHasherDefault<FastHasher>;

/// A `HashMap` keyed with [`FastHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastBuild>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    /// Consecutive integer keys hash to distinct values (no trivial collisions).
    #[test]
    fn consecutive_keys_spread() {
        let build = FastBuild::default();
        let mut seen = std::collections::HashSet::new();
        for pid in 0u32..10_000 {
            assert!(
                seen.insert(build.hash_one((pid, 7u64))),
                "collision at {pid}"
            );
        }
    }
}
