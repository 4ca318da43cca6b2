//! BlueFS's read cache: BlueFS reads the device directly (no kernel page cache under it), so
//! what RocksDB reads again and again — table blocks beyond its own block cache — would go to
//! the device every time. SPDK's blobfs kept a cache for the same reason.
//!
//! Chunks of `CHUNK` bytes of files nobody is writing, keyed by (ino, the file's data
//! generation, chunk index): a file's generation changes whenever it may change (a writer
//! opens it, it is cut), so stale chunks are never found again and age out. Sharded by key,
//! evicted first in, first out within a shard's share of the budget.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bluepoll_base::sync::lock;

/// Bytes per cached chunk (a multiple of the block size).
pub const CHUNK: u64 = 64 << 10;

const SHARDS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    pub ino: u64,
    pub generation: u64,
    pub index: u64,
}

#[derive(Default)]
struct Shard {
    chunks: HashMap<ChunkKey, Arc<Vec<u8>>>,
    order: VecDeque<ChunkKey>,
    bytes: u64,
}

pub struct ReadCache {
    shards: Vec<Mutex<Shard>>,
    shard_budget: u64,
}

impl ReadCache {
    /// A cache of at most `budget` bytes (0: none).
    pub fn new(budget: u64) -> ReadCache {
        ReadCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_budget: budget / SHARDS as u64,
        }
    }

    pub fn enabled(&self) -> bool {
        self.shard_budget >= CHUNK
    }

    fn shard(&self, key: &ChunkKey) -> &Mutex<Shard> {
        let mix =
            bluepoll_base::rand::splitmix(key.ino ^ key.index.rotate_left(32) ^ key.generation);
        &self.shards[(mix % SHARDS as u64) as usize]
    }

    pub fn get(&self, key: &ChunkKey) -> Option<Arc<Vec<u8>>> {
        lock(self.shard(key)).chunks.get(key).cloned()
    }

    pub fn insert(&self, key: ChunkKey, chunk: Arc<Vec<u8>>) {
        if !self.enabled() {
            return;
        }
        let mut shard = lock(self.shard(&key));
        if shard.chunks.contains_key(&key) {
            return;
        }
        shard.bytes += chunk.len() as u64;
        shard.chunks.insert(key, chunk);
        shard.order.push_back(key);
        while shard.bytes > self.shard_budget {
            let Some(old) = shard.order.pop_front() else {
                break;
            };
            if let Some(c) = shard.chunks.remove(&old) {
                shard.bytes -= c.len() as u64;
            }
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_fits_and_forgets_the_oldest_first() {
        let cache = ReadCache::new(SHARDS as u64 * 2 * CHUNK);
        let key = |index| ChunkKey {
            ino: 7,
            generation: 1,
            index,
        };
        for i in 0..200 {
            cache.insert(key(i), Arc::new(vec![i as u8; CHUNK as usize]));
        }
        assert!(cache.bytes() <= SHARDS as u64 * 2 * CHUNK);
        let kept: Vec<u64> = (0..200).filter(|&i| cache.get(&key(i)).is_some()).collect();
        assert!(!kept.is_empty());
        assert!(kept.contains(&199), "the newest chunk was evicted");
        assert_eq!(cache.get(&key(199)).unwrap()[0], 199);
        assert!(
            cache
                .get(&ChunkKey {
                    generation: 2,
                    ..key(199)
                })
                .is_none()
        );
        assert!(!ReadCache::new(0).enabled());
    }
}
