//! The object catalog: which object ids a journal names, and by what name.
//!
//! Record entries carry only an object id; names live in F-CR / F-RN entries.
//! So that a reader may start in any retained segment, each segment begins with
//! the catalog as it stood at the segment's first sequence (see `segment.rs`).

use std::collections::BTreeMap;

use super::entry::{align_up, Entry, EntryType, NewEntry};
use crate::limits::{CATALOG_BYTES_MAX, OBJECTS_MAX};

/// Object id -> name, as of some journal position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    names: BTreeMap<u64, String>,
}

/// Why an object operation does not fit the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error("HAD0107E object {object_id} already exists as {name:?}")]
    Exists { object_id: u64, name: String },
    #[error("HAD0108E object {object_id} is not known to this journal")]
    Unknown { object_id: u64 },
    #[error("HAD0109E object name {name:?} is already used by object {object_id}")]
    NameTaken { name: String, object_id: u64 },
    #[error("HAD0110E the journal already names {OBJECTS_MAX} objects, the limit")]
    Full,
    #[error("catalog block is malformed: {detail}")]
    Malformed { detail: &'static str },
}

impl Catalog {
    pub fn name(&self, object_id: u64) -> Option<&str> {
        self.names.get(&object_id).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &str)> {
        self.names.iter().map(|(id, n)| (*id, n.as_str()))
    }

    fn id_of(&self, name: &str) -> Option<u64> {
        self.names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| *id)
    }

    /// Checks that `entry` (an object-level entry) is legal against this catalog.
    pub fn check(&self, entry: &NewEntry<'_>) -> Result<(), CatalogError> {
        let id = entry.object_id;
        let name = std::str::from_utf8(entry.key).unwrap_or_default();
        match entry.entry_type {
            EntryType::ObjectCreate => {
                if let Some(existing) = self.names.get(&id) {
                    return Err(CatalogError::Exists {
                        object_id: id,
                        name: existing.clone(),
                    });
                }
                if self.names.len() >= OBJECTS_MAX {
                    return Err(CatalogError::Full);
                }
            }
            EntryType::ObjectDrop | EntryType::ObjectClear | EntryType::ObjectRename => {
                if !self.names.contains_key(&id) {
                    return Err(CatalogError::Unknown { object_id: id });
                }
            }
            _ => return Ok(()),
        }
        if matches!(
            entry.entry_type,
            EntryType::ObjectCreate | EntryType::ObjectRename
        ) {
            if let Some(other) = self.id_of(name).filter(|other| *other != id) {
                return Err(CatalogError::NameTaken {
                    name: name.to_owned(),
                    object_id: other,
                });
            }
        }
        Ok(())
    }

    /// Applies an object-level entry that was already checked (writer) or read
    /// back from the journal (recovery, scraper). Other entries are ignored.
    pub fn apply(&mut self, entry_type: EntryType, object_id: u64, name: Option<&str>) {
        match entry_type {
            EntryType::ObjectCreate | EntryType::ObjectRename => {
                if let Some(name) = name {
                    self.names.insert(object_id, name.to_owned());
                }
            }
            EntryType::ObjectDrop => {
                self.names.remove(&object_id);
            }
            _ => {}
        }
    }

    pub fn apply_entry(&mut self, entry: &Entry<'_>) {
        self.apply(entry.entry_type(), entry.object_id(), entry.object_name());
    }

    /// Encodes the catalog block written after a segment header:
    /// `count u32, crc32c u32, then per object: id u64, name_bytes u16, name`,
    /// the whole padded to a multiple of 8.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 8];
        for (id, name) in &self.names {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        let crc = crate::checksum::crc32c(&out[8..]);
        out[0..4].copy_from_slice(&(self.names.len() as u32).to_le_bytes());
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out.resize(align_up(out.len()), 0);
        debug_assert!(out.len() <= CATALOG_BYTES_MAX);
        out
    }

    /// Decodes a catalog block of exactly `block.len()` bytes (padding
    /// included). Only the block `encode` writes is taken: the objects in
    /// ascending id order (so no id twice), as a fuzzer's block with two
    /// objects in the other order showed was needed.
    pub fn decode(block: &[u8]) -> Result<Catalog, CatalogError> {
        let bad = |detail| CatalogError::Malformed { detail };
        if block.len() < 8 || block.len() > CATALOG_BYTES_MAX {
            return Err(bad("block length out of range"));
        }
        let count = u32::from_le_bytes(block[0..4].try_into().unwrap()) as usize;
        let stored_crc = u32::from_le_bytes(block[4..8].try_into().unwrap());
        if count > OBJECTS_MAX {
            return Err(bad("more objects than the limit"));
        }
        let mut names = BTreeMap::new();
        let mut at = 8;
        for _ in 0..count {
            let header = block
                .get(at..at + 10)
                .ok_or(bad("record runs past the block"))?;
            let id = u64::from_le_bytes(header[0..8].try_into().unwrap());
            if names.last_key_value().is_some_and(|(last, _)| *last >= id) {
                return Err(bad("object ids are not in ascending order"));
            }
            let len = u16::from_le_bytes(header[8..10].try_into().unwrap()) as usize;
            let name = block
                .get(at + 10..at + 10 + len)
                .ok_or(bad("name runs past the block"))?;
            let name = std::str::from_utf8(name).map_err(|_| bad("name is not UTF-8"))?;
            names.insert(id, name.to_owned());
            at += 10 + len;
        }
        if crate::checksum::crc32c(&block[8..at]) != stored_crc {
            return Err(bad("checksum mismatch"));
        }
        if align_up(at) != block.len() || block[at..].iter().any(|b| *b != 0) {
            return Err(bad("padding is not zero or block length is wrong"));
        }
        Ok(Catalog { names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_roundtrip_and_checks() {
        let mut c = Catalog::default();
        assert_eq!(Catalog::decode(&c.encode()).unwrap(), c);
        c.check(&NewEntry::create_object(7, "A/ORDERS")).unwrap();
        c.apply(EntryType::ObjectCreate, 7, Some("A/ORDERS"));
        c.apply(EntryType::ObjectCreate, 9, Some("B"));
        assert!(c.check(&NewEntry::create_object(7, "X")).is_err());
        assert!(c.check(&NewEntry::create_object(8, "B")).is_err());
        assert!(c.check(&NewEntry::drop_object(8)).is_err());
        c.check(&NewEntry::rename_object(7, "A/ORDERS2")).unwrap();
        let block = c.encode();
        assert_eq!(Catalog::decode(&block).unwrap(), c);
        for i in 0..block.len() {
            let mut bad = block.clone();
            bad[i] ^= 0x10;
            assert!(
                Catalog::decode(&bad).map(|d| d != c).unwrap_or(true),
                "flip at {i}"
            );
        }
        c.apply(EntryType::ObjectDrop, 7, None);
        assert_eq!(c.name(7), None);
        assert_eq!(c.name(9), Some("B"));
    }

    /// A block whose objects are out of id order, or name one id twice,
    /// is refused: it would not encode back to itself (found by the
    /// `segment_metadata` fuzz target).
    #[test]
    fn objects_out_of_id_order_or_twice_are_refused() {
        let block = |ids: &[u64]| {
            let mut out = vec![0u8; 8];
            for id in ids {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&1u16.to_le_bytes());
                out.push(b'A' + (*id % 26) as u8);
            }
            let crc = crate::checksum::crc32c(&out[8..]);
            out[0..4].copy_from_slice(&(ids.len() as u32).to_le_bytes());
            out[4..8].copy_from_slice(&crc.to_le_bytes());
            out.resize(align_up(out.len()), 0);
            out
        };
        // The fuzzer's block: two objects, the larger id first.
        let found = [
            2, 0, 0, 0, 73, 209, 14, 72, 0, 0, 81, 6, 0, 251, 255, 255, 44, 0, 0, 0, 12, 0, 0, 8,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0,
            0, 0, 1, 0, 0, 0, 0, 0, 0, 8, 0, 16, 0, 32, 0, 0, 8, 0, 0,
        ];
        assert!(Catalog::decode(&found).is_err());
        let sorted = block(&[3, 9]);
        assert_eq!(Catalog::decode(&sorted).unwrap().encode(), sorted);
        for ids in [[9, 3], [3, 3]] {
            let err = Catalog::decode(&block(&ids)).unwrap_err();
            assert_eq!(
                err,
                CatalogError::Malformed {
                    detail: "object ids are not in ascending order"
                },
                "{ids:?}"
            );
        }
    }
}
