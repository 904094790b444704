//! Interned strings with dense ids, kept in one arena.
//!
//! A `HashMap<Arc<str>, _>` compares a looked-up key against strings spread
//! over the heap: a cache miss per lookup on the engine's hot path (host
//! names, destination names). Here the table holds ids only and the strings
//! sit side by side in one buffer that stays in cache.

use std::hash::BuildHasher;

use hashbrown::HashTable;

#[derive(Default)]
pub(crate) struct StrTable {
    arena: String,
    /// (start, end) of each id's string in `arena`.
    spans: Vec<(u32, u32)>,
    /// (id, start, end): a probe compares against the arena directly.
    table: HashTable<(u32, u32, u32)>,
    hasher: foldhash::fast::RandomState,
}

impl StrTable {
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    /// Bytes of all strings held.
    pub(crate) fn bytes(&self) -> usize {
        self.arena.len()
    }

    #[cfg(test)]
    pub(crate) fn str_of(&self, id: u32) -> &str {
        let (a, b) = self.spans[id as usize];
        &self.arena[a as usize..b as usize]
    }

    pub(crate) fn get(&self, s: &str) -> Option<u32> {
        let h = self.hasher.hash_one(s);
        self.table
            .find(h, |&(_, a, b)| &self.arena[a as usize..b as usize] == s)
            .map(|e| e.0)
    }

    /// The id of `s`, added (with the next id) if absent; and whether it was.
    pub(crate) fn intern(&mut self, s: &str) -> (u32, bool) {
        if let Some(id) = self.get(s) {
            return (id, false);
        }
        let id = u32::try_from(self.spans.len()).expect("fewer than 2^32 strings");
        let start = u32::try_from(self.arena.len()).expect("arena under 4 GiB");
        self.arena.push_str(s);
        let end = u32::try_from(self.arena.len()).expect("arena under 4 GiB");
        self.spans.push((start, end));
        let h = self.hasher.hash_one(s);
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table.insert_unique(h, (id, start, end), |&(_, a, b)| {
            hasher.hash_one(&arena[a as usize..b as usize])
        });
        (id, true)
    }

    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.spans.clear();
        self.table.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_stable_and_found_again() {
        let mut t = StrTable::default();
        let words: Vec<String> = (0..5000).map(|i| format!("host-{i:05}.example")).collect();
        for (i, w) in words.iter().enumerate() {
            assert_eq!(t.intern(w), (i as u32, true));
        }
        assert_eq!(t.len(), words.len());
        assert_eq!(t.bytes(), words.iter().map(String::len).sum::<usize>());
        for (i, w) in words.iter().enumerate() {
            assert_eq!(t.get(w), Some(i as u32));
            assert_eq!(t.intern(w), (i as u32, false));
            assert_eq!(t.str_of(i as u32), w);
        }
        assert_eq!(t.get("host-5"), None);
        assert_eq!(t.get(""), None);
        assert_eq!(t.intern(""), (5000, true));
        assert_eq!(t.get(""), Some(5000));
        t.clear();
        assert_eq!((t.len(), t.get("host-00001.example")), (0, None));
        assert_eq!(t.intern("b"), (0, true));
    }
}
