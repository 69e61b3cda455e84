//! `balance = "consistent"`: weighted rendezvous (highest random weight) hashing.
//!
//! Each server that takes new sessions scores the request's [`Affinity`] with a hash of the
//! pair (affinity, server name); the highest score wins. The score depends on nothing but the
//! pair and the server's weight, so every node, with no word from the others, ranks the servers
//! alike, and a server leaving the set moves only the keys it won (each to its runner-up).
//! With weights that differ, the score is `weight / -ln(u)` (`u` the pair's hash in (0, 1)): a
//! server wins a share of keys in proportion to its weight. With equal weights (the usual
//! case) the pair hashes are compared as integers, which ranks alike without floating point.
//!
//! The hash is written here rather than taken from `std` because `DefaultHasher` may change
//! between Rust releases, and nodes built by different toolchains must agree. Its seed is a
//! constant for the same reason: a configurable seed would be one more thing for nodes to
//! disagree on.

use std::{net::IpAddr, sync::Arc};

use super::{Affinity, Candidate, Select};

/// The fixed seed of every node's hash: "stickylb" in ASCII.
const SEED: u64 = u64::from_be_bytes(*b"stickylb");

/// Rendezvous hashing over the servers that take new sessions. A server at its `maxconn` is
/// still chosen (the request then waits in the queue): room is a node-local count, and a
/// choice that depended on it would differ between nodes.
pub struct Rendezvous;

impl<S: Candidate> Select<S> for Rendezvous {
    fn select(&self, servers: &[Arc<S>], affinity: Affinity<'_>) -> Option<Arc<S>> {
        let key = affinity_hash(affinity);
        let live = || servers.iter().filter(|s| s.weight() > 0);
        let first = live().next()?.weight();
        let chosen = if live().all(|s| s.weight() == first) {
            // Equal weights: the highest pair hash, no floating point (whose last bit might
            // differ between the C libraries of two nodes).
            live().max_by_key(|s| pair_hash(key, s.identity()))
        } else {
            live().max_by(|a, b| {
                let score = |s: &Arc<S>| score(pair_hash(key, s.identity()), s.weight());
                score(a).total_cmp(&score(b))
            })
        };
        chosen.map(Arc::clone)
    }
}

/// The hash of the pair (the request's key hashed to `key`, the server named `identity`).
fn pair_hash(key: u64, identity: &[u8]) -> u64 {
    fmix64(key ^ hash_bytes(SEED, identity))
}

/// A server's score for a pair hashed to `pair`, with weight `weight` (above zero): the
/// highest wins. `ln` is monotonic, so with equal weights the order is the order of the
/// hashes.
fn score(pair: u64, weight: u32) -> f64 {
    // The 53 high bits as a number in (0, 1), never 0 or 1, so that the logarithm is finite and
    // negative.
    let unit = ((pair >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -unit.ln()
}

/// The hash of what a request offers; each kind is tagged so that a cookie never collides
/// with an address by construction.
fn affinity_hash(affinity: Affinity<'_>) -> u64 {
    match affinity {
        Affinity::Cookie(cookie) => hash_bytes(SEED ^ 1, cookie),
        Affinity::Client(IpAddr::V4(ip)) => hash_bytes(SEED ^ 4, &ip.octets()),
        Affinity::Client(IpAddr::V6(ip)) => hash_bytes(SEED ^ 6, &ip.octets()),
        Affinity::Nothing => hash_bytes(SEED, &[]),
    }
}

/// A 64-bit hash of `bytes`: 8-byte little-endian words, each folded in by MurmurHash3's
/// finalizer, the length folded in first so that trailing zeros count.
fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = fmix64(seed ^ (bytes.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = fmix64(hash ^ u64::from_le_bytes(word)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    }
    fmix64(hash)
}

/// MurmurHash3's 64-bit finalizer: every input bit flips each output bit with probability
/// close to one half.
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests;
