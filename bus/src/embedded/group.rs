//! Consumer groups of the embedded bus: membership, partition assignment, and committed
//! offsets that survive restarts.
//!
//! All members of a group live in this process, so "rebalancing" is a generation counter:
//! joining or leaving bumps it, and every member recomputes its share on its next poll.
//! Partitions of a topic are dealt round-robin over the members subscribed to it, ordered by
//! join time. A member that gains a partition starts at the group's committed offset (or the
//! log start), which gives the at-least-once behaviour Kafka consumer groups have.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::segment::sync_dir;
use crate::{BusError, Result, TopicPartition};

#[derive(Debug)]
pub(crate) struct Group {
    pub name: String,
    path: PathBuf,
    state: Mutex<GroupState>,
    commit_lock: Mutex<()>,
}

#[derive(Debug, Default)]
struct GroupState {
    generation: u64,
    next_member: u64,
    /// Member id → its topics. Ids grow, so iteration order is join order.
    members: BTreeMap<u64, Vec<Arc<str>>>,
    offsets: BTreeMap<TopicPartition, u64>,
}

/// On-disk form: `{"offsets": {"metrics": {"0": 1234}}}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OffsetsFile {
    offsets: BTreeMap<String, BTreeMap<u32, u64>>,
}

impl Group {
    /// Loads a group's committed offsets, if it ever committed.
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(format!("{name}.json"));
        let mut state = GroupState::default();
        match fs::read(&path) {
            Ok(bytes) => {
                let file: OffsetsFile =
                    serde_json::from_slice(&bytes).map_err(|e| BusError::Corrupt {
                        path: path.clone(),
                        position: e.column() as u64,
                        reason: format!("unreadable committed offsets: {e}"),
                    })?;
                for (topic, partitions) in file.offsets {
                    for (partition, offset) in partitions {
                        state
                            .offsets
                            .insert(TopicPartition::new(&topic, partition), offset);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BusError::io("reading committed offsets", &path, e)),
        }
        Ok(Self {
            name: name.to_owned(),
            path,
            state: Mutex::new(state),
            commit_lock: Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a member; returns its id.
    pub fn join(&self, topics: Vec<Arc<str>>) -> u64 {
        let mut state = self.lock();
        let id = state.next_member;
        state.next_member += 1;
        state.members.insert(id, topics);
        state.generation += 1;
        id
    }

    pub fn leave(&self, member: u64) {
        let mut state = self.lock();
        if state.members.remove(&member).is_some() {
            state.generation += 1;
        }
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The partitions `member` owns now, given each topic's partition count, and the
    /// generation this assignment belongs to.
    pub fn assignment(
        &self,
        member: u64,
        partition_counts: &HashMap<Arc<str>, u32>,
    ) -> (u64, Vec<TopicPartition>) {
        let state = self.lock();
        let mut assigned = Vec::new();
        let Some(topics) = state.members.get(&member) else {
            return (state.generation, assigned);
        };
        for topic in topics {
            let peers: Vec<u64> = state
                .members
                .iter()
                .filter(|(_, their)| their.contains(topic))
                .map(|(id, _)| *id)
                .collect();
            let Some(rank) = peers.iter().position(|id| *id == member) else {
                continue;
            };
            let partitions = partition_counts.get(topic).copied().unwrap_or(0);
            assigned.extend(
                (0..partitions)
                    .filter(|p| *p as usize % peers.len() == rank)
                    .map(|p| TopicPartition {
                        topic: topic.clone(),
                        partition: p,
                    }),
            );
        }
        (state.generation, assigned)
    }

    pub fn committed(&self, partition: &TopicPartition) -> Option<u64> {
        self.lock().offsets.get(partition).copied()
    }

    /// Records offsets and makes them durable before returning (write to a temporary file,
    /// fsync, rename over the old file, fsync the directory), so a crash leaves either the
    /// old or the new offsets, never a mix or nothing. The new offsets become visible to
    /// other members only once they are durable, and the membership lock is not held during
    /// the file I/O, so polling members never wait on a commit's fsync.
    pub fn commit(&self, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        // Serialises commits, so each one writes a superset of the one before it.
        let _writing = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut merged = self.lock().offsets.clone();
        for (partition, offset) in offsets {
            merged.insert(partition.clone(), *offset);
        }
        let mut file = OffsetsFile::default();
        for (tp, offset) in &merged {
            file.offsets
                .entry(tp.topic.to_string())
                .or_default()
                .insert(tp.partition, *offset);
        }
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| BusError::Corrupt {
            path: self.path.clone(),
            position: 0,
            reason: format!("cannot encode offsets: {e}"),
        })?;
        let temp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut out = File::create(&temp)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
            fs::rename(&temp, &self.path)
        };
        write().map_err(|e| BusError::io("writing committed offsets", &self.path, e))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        sync_dir(dir)?;
        let mut state = self.lock();
        for (partition, offset) in offsets {
            state.offsets.insert(partition.clone(), *offset);
        }
        Ok(())
    }
}
