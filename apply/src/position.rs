//! The applied position of a group: per journal, the last applied commit and
//! the first sequence replay must start from.

use crate::txn::TxnMeta;

/// One journal's part of the applied position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalPosition {
    /// Sequence of the last applied transaction's commit entry (0: none).
    /// Transactions of this journal committed at or below it are applied.
    pub applied: u64,
    /// First sequence replay reads from: the first entry of the oldest
    /// transaction that was still open when `applied` committed. Staging
    /// below it is no longer needed.
    pub resume_from: u64,
}

impl Default for JournalPosition {
    fn default() -> Self {
        JournalPosition {
            applied: 0,
            resume_from: 1,
        }
    }
}

/// The group's applied position: the vector over its journals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedPosition {
    journals: Vec<JournalPosition>,
}

impl AppliedPosition {
    /// Nothing applied, for a group of `journals` journals.
    pub fn new(journals: usize) -> AppliedPosition {
        AppliedPosition {
            journals: vec![JournalPosition::default(); journals],
        }
    }

    pub fn journals(&self) -> &[JournalPosition] {
        &self.journals
    }

    /// This journal's position; a journal the position does not know yet
    /// (one added to the group) has applied nothing.
    pub fn journal(&self, journal: u32) -> JournalPosition {
        self.journals
            .get(journal as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Moves past an applied transaction.
    pub fn advance(&mut self, meta: &TxnMeta) {
        let j = meta.journal as usize;
        if j >= self.journals.len() {
            self.journals.resize(j + 1, JournalPosition::default());
        }
        self.journals[j] = JournalPosition {
            applied: meta.commit_sequence,
            resume_from: meta.resume_from,
        };
    }

    /// Fixed little-endian encoding: count u32, then (applied u64,
    /// resume_from u64) per journal. Stores wrap it in their own checksum.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.journals.len() as u32).to_le_bytes());
        for j in &self.journals {
            out.extend_from_slice(&j.applied.to_le_bytes());
            out.extend_from_slice(&j.resume_from.to_le_bytes());
        }
    }

    /// Decodes `encode`'s output from the front of `bytes`; returns the
    /// position and the bytes it took, or `None` if `bytes` is too short or
    /// names more journals than `max_journals`.
    pub fn decode(bytes: &[u8], max_journals: usize) -> Option<(AppliedPosition, usize)> {
        let count = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        if count > max_journals {
            return None;
        }
        let need = 4 + count * 16;
        let body = bytes.get(4..need)?;
        let journals = body
            .chunks_exact(16)
            .map(|c| JournalPosition {
                applied: u64::from_le_bytes(c[..8].try_into().unwrap()),
                resume_from: u64::from_le_bytes(c[8..].try_into().unwrap()),
            })
            .collect();
        Some((AppliedPosition { journals }, need))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips_and_refuses_short_or_oversized_input() {
        let mut p = AppliedPosition::new(1);
        p.advance(&TxnMeta {
            journal: 2,
            commit_sequence: 40,
            resume_from: 31,
            commit_time_ns: 0,
        });
        assert_eq!(p.journal(0), JournalPosition::default());
        assert_eq!(p.journal(2).resume_from, 31);
        assert_eq!(p.journal(9), JournalPosition::default());
        let mut bytes = Vec::new();
        p.encode(&mut bytes);
        assert_eq!(
            AppliedPosition::decode(&bytes, 8),
            Some((p.clone(), bytes.len()))
        );
        assert_eq!(AppliedPosition::decode(&bytes[..bytes.len() - 1], 8), None);
        assert_eq!(AppliedPosition::decode(&bytes, 2), None);
    }
}
