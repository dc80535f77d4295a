//! The in-process limiter: one TAT per bucket in a sharded map.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use tokio::time::Instant;

use super::{Limit, RateDecision, gcra};

/// log2 of the number of shards.
const SHARD_BITS: u32 = 6;
/// Number of shards. Enough that two cores never contend in practice.
const SHARDS: usize = 1 << SHARD_BITS;
/// A shard is swept for idle buckets when it grows past this (and past twice its size after
/// the previous sweep), so sweeping is amortised O(1) per insertion.
const MIN_SWEEP_AT: usize = 1_024;

/// GCRA buckets of this process.
///
/// A hit takes one shard read lock and one compare-and-swap on the bucket's TAT; only a new
/// bucket takes the shard's write lock.
pub struct LocalLimiter {
    shards: Box<[Shard]>,
    /// Random seed of the shard spreader, so callers cannot aim many buckets at one shard.
    shard_seed: u64,
    /// Zero of the nanosecond clock the TATs are measured on.
    epoch: Instant,
}

struct Shard {
    /// Bucket key → TAT in nanoseconds since `epoch`. Keys are bytes: the pipeline passes a
    /// 33-byte binary [`super::LocalKey`], which hashes in about half the time of its text form.
    buckets: RwLock<HashMap<Box<[u8]>, AtomicU64>>,
    /// Size at which the next insertion sweeps idle buckets first.
    sweep_at: AtomicUsize,
}

// === impl LocalLimiter ===

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalLimiter {
    /// An empty limiter. Its clock is `tokio::time::Instant`, so tests can pause and advance it.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    buckets: RwLock::default(),
                    sweep_at: AtomicUsize::new(MIN_SWEEP_AT),
                })
                .collect(),
            shard_seed: RandomState::new().hash_one(0_u64) | 1,
            epoch: Instant::now(),
        }
    }

    /// Admits or refuses one request in bucket `key` under `limit`.
    pub fn check(&self, key: impl AsRef<[u8]>, limit: Limit) -> RateDecision {
        let key = key.as_ref();
        let now = self.now_ns();
        let shard = self.shard(key);
        if let Some(tat) = read(&shard.buckets).get(key) {
            return update(tat, now, limit);
        }
        let mut buckets = write(&shard.buckets);
        if buckets.len() >= shard.sweep_at.load(Ordering::Relaxed) {
            buckets.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
            shard
                .sweep_at
                .store((buckets.len() * 2).max(MIN_SWEEP_AT), Ordering::Relaxed);
        }
        let tat = buckets
            .entry(key.into())
            .or_insert_with(|| AtomicU64::new(0));
        update(tat, now, limit)
    }

    /// What [`Self::check`] would decide for bucket `key` now, without spending anything.
    pub fn peek(&self, key: impl AsRef<[u8]>, limit: Limit) -> RateDecision {
        let key = key.as_ref();
        let now = self.now_ns();
        let tat = read(&self.shard(key).buckets)
            .get(key)
            .map_or(0, |tat| tat.load(Ordering::Acquire));
        gcra::decide(tat, now, limit).1
    }

    /// Forgets every idle bucket and returns how many were forgotten.
    ///
    /// LOSSLESS: a bucket whose TAT is not in the future is full, which is exactly the state of
    /// a bucket that does not exist, so forgetting it changes no decision.
    pub fn evict_idle(&self) -> usize {
        let now = self.now_ns();
        self.shards
            .iter()
            .map(|shard| {
                let mut buckets = write(&shard.buckets);
                let before = buckets.len();
                buckets.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
                before - buckets.len()
            })
            .sum()
    }

    /// Number of buckets held (idle ones included until swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(&s.buckets).len()).sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard of `key`. Deliberately cheaper than the maps' SipHash (which guards each shard
    /// against hash flooding): a poor spread only costs lock contention, never a wrong decision.
    fn shard(&self, bytes: &[u8]) -> &Shard {
        const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut hash = self.shard_seed;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0_u8; 8];
            word.copy_from_slice(chunk);
            hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(MULTIPLIER);
        }
        let mut tail = [0_u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        hash = (hash ^ u64::from_le_bytes(tail) ^ bytes.len() as u64).wrapping_mul(MULTIPLIER);
        // The high bits are the well-mixed ones.
        &self.shards[(hash >> (64 - SHARD_BITS)) as usize]
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Applies one GCRA step to a bucket, retrying when another request updated it concurrently.
fn update(tat: &AtomicU64, now: u64, limit: Limit) -> RateDecision {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let (next, decision) = gcra::decide(current, now, limit);
        let Some(next) = next else {
            return decision;
        };
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return decision,
            Err(actual) => current = actual,
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Nothing panics while holding these locks; recover rather than fail every request.
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
