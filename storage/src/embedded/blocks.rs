//! Decoded sample blocks, kept for the next read: a dashboard asks for the same series
//! and time ranges again every time it refreshes.
//!
//! A block is the samples of one series in one part between two of its checkpoints
//! ([`super::parts::CHECKPOINT_ROWS`] rows), the unit a part read is narrowed to anyway:
//! a read takes the blocks it finds here and decodes only the others, so a first read
//! costs what it did without the cache, and a repeated one decodes nothing. Parts never
//! change once written, so a block never goes stale; a removed part's blocks are simply
//! never asked for again and age out.
//!
//! The cache holds at most its budget of bytes. Eviction is CLOCK (second chance): blocks
//! wait in a queue in the order they came; one read since its last pass stays for another
//! round, one not read goes. It costs a flag per block instead of a reordering per read,
//! and a scan of a long range that will not be repeated pushes out blocks no sooner than
//! ones read once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use model::Sample;

/// A block's samples, shared with the reads using it (a `Vec` behind the `Arc`: made
/// from the decoded rows without copying them again).
pub(crate) type Block = Arc<Vec<Sample>>;

/// Which block: the part (a number the part got when opened), the series, and the block's
/// number within the series' rows in that part.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct BlockKey {
    pub part: u64,
    pub series: u32,
    pub block: u32,
}

/// The decoded blocks of sample parts, shared by every read of a store.
#[derive(Debug)]
pub(crate) struct DecodedBlocks {
    budget_bytes: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Each block with whether it was read since the clock last passed it.
    blocks: HashMap<BlockKey, (Block, bool)>,
    /// The clock: every block in `blocks`, once.
    queue: VecDeque<BlockKey>,
    bytes: u64,
}

/// What one block costs the budget: its samples and its share of the map and the queue.
fn cost(samples: &[Sample]) -> u64 {
    (std::mem::size_of_val(samples) + 96) as u64
}

impl DecodedBlocks {
    /// A cache of at most `budget_bytes` (0 keeps nothing).
    pub fn new(budget_bytes: u64) -> Self {
        Self {
            budget_bytes,
            state: Mutex::default(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.budget_bytes > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The blocks `first..last` of `series` in `part` that are kept, `None` for the others,
    /// into `out` (cleared first): one lock for a series' whole range.
    pub fn get(
        &self,
        part: u64,
        series: u32,
        blocks: std::ops::Range<u32>,
        out: &mut Vec<Option<Block>>,
    ) {
        out.clear();
        let mut state = self.lock();
        for block in blocks {
            let key = BlockKey {
                part,
                series,
                block,
            };
            out.push(state.blocks.get_mut(&key).map(|(samples, referenced)| {
                *referenced = true;
                samples.clone()
            }));
        }
    }

    /// Keeps `blocks` (decoded by a read), making room by the clock.
    pub fn insert(&self, blocks: impl IntoIterator<Item = (BlockKey, Block)>) {
        if !self.is_enabled() {
            return;
        }
        let mut state = self.lock();
        for (key, samples) in blocks {
            let added = cost(&samples);
            if added > self.budget_bytes {
                continue;
            }
            // A block starts with its second chance: the read that decoded it used it.
            if let Some((old, _)) = state.blocks.insert(key, (samples, true)) {
                // Decoded twice by reads that raced: the same samples, the queue has it.
                state.bytes -= cost(&old);
            } else {
                state.queue.push_back(key);
            }
            state.bytes += added;
            while state.bytes > self.budget_bytes {
                let Some(oldest) = state.queue.pop_front() else {
                    break;
                };
                match state.blocks.get_mut(&oldest) {
                    Some((_, referenced)) if *referenced => {
                        *referenced = false;
                        state.queue.push_back(oldest);
                    }
                    Some(_) => {
                        if let Some((samples, _)) = state.blocks.remove(&oldest) {
                            state.bytes -= cost(&samples);
                        }
                    }
                    None => {}
                }
            }
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(samples: usize) -> Block {
        Arc::new(
            (0..samples)
                .map(|i| Sample {
                    timestamp_ms: i as i64,
                    value: i as f64,
                })
                .collect(),
        )
    }

    fn key(block: u32) -> BlockKey {
        BlockKey {
            part: 1,
            series: 7,
            block,
        }
    }

    fn kept(cache: &DecodedBlocks, blocks: std::ops::Range<u32>) -> Vec<bool> {
        let mut out = Vec::new();
        cache.get(1, 7, blocks, &mut out);
        out.iter().map(Option::is_some).collect()
    }

    #[test]
    fn blocks_come_back_and_the_budget_holds_evicting_the_unread_first() {
        let one = cost(&block(256));
        let cache = DecodedBlocks::new(3 * one);
        cache.insert((0..3).map(|b| (key(b), block(256))));
        assert_eq!(kept(&cache, 0..4), [true, true, true, false]);
        assert_eq!(cache.bytes(), 3 * one);
        let mut out = Vec::new();
        cache.get(1, 7, 1..2, &mut out);
        assert_eq!(out[0].as_ref().unwrap().len(), 256);
        cache.insert([(key(3), block(256))]);
        assert_eq!(cache.bytes(), 3 * one);
        // The clock passed 0, 1 and 2 (all read), cleared them, and took 0 on its second
        // round: the oldest not read since.
        assert_eq!(kept(&cache, 0..4), [false, true, true, true]);
        cache.get(1, 7, 3..4, &mut out);
        cache.insert([(key(4), block(256))]);
        // 1 and 2 were read by the `kept` above, 3 twice: all second chances; 1 goes.
        assert!(cache.bytes() <= 3 * one);
        assert_eq!(kept(&cache, 4..5), [true]);
    }

    #[test]
    fn a_cache_without_budget_keeps_nothing_and_a_block_over_budget_is_not_kept() {
        let none = DecodedBlocks::new(0);
        none.insert([(key(0), block(4))]);
        assert_eq!(kept(&none, 0..1), [false]);
        let small = DecodedBlocks::new(cost(&block(4)));
        small.insert([(key(0), block(5))]);
        assert_eq!(kept(&small, 0..1), [false]);
        assert_eq!(small.bytes(), 0);
        small.insert([(key(0), block(4)), (key(0), block(4))]);
        assert_eq!(
            small.bytes(),
            cost(&block(4)),
            "a block inserted twice counts once"
        );
    }
}
