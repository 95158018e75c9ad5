//! Name → type id for the types a member path can start from (STRUCT, UNION, FWD).
//!
//! A sorted vector of ids searched by binary search: one allocation for the whole index, none
//! per name, and a blob-borrowing key instead of owned `String`s.

use std::cmp::Ordering;

use super::{Btf, kind::Kind};

/// Named STRUCT, UNION and FWD ids, sorted by name; within a name, complete definitions come
/// before forward declarations, then lower ids first.
#[derive(Debug, Default)]
pub(crate) struct NameIndex {
    /// The sorted ids.
    ids: Vec<u32>,
}

impl NameIndex {
    /// Sorts `ids` (all named STRUCT/UNION/FWD types of `btf`).
    pub(crate) fn build(btf: &Btf, ids: Vec<u32>) -> Self {
        // Decoding the key once per id, not once per comparison, keeps the sort cheap.
        let mut keyed: Vec<(&[u8], bool, u32)> = ids
            .into_iter()
            .map(|id| {
                let ty = btf.ty(id).expect("indexed ids exist");
                (btf.name(ty.name_off), ty.kind == Kind::Fwd, id)
            })
            .collect();
        keyed.sort_unstable();
        NameIndex {
            ids: keyed.into_iter().map(|(_, _, id)| id).collect(),
        }
    }

    /// Ids named `name`, complete definitions first.
    pub(crate) fn lookup<'i>(&'i self, btf: &Btf, name: &[u8]) -> &'i [u32] {
        let name_of = |id: u32| btf.name(btf.ty(id).expect("indexed ids exist").name_off);
        let start = self.ids.partition_point(|&id| name_of(id) < name);
        let len = self.ids[start..]
            .iter()
            .position(|&id| name_of(id).cmp(name) != Ordering::Equal)
            .unwrap_or(self.ids.len() - start);
        &self.ids[start..start + len]
    }
}

#[cfg(test)]
mod tests {
    use crate::btf::{Btf, kind::Kind, test_support::BtfBuilder};

    /// Lookup finds every id with the name, definitions before the FWD, and nothing for a
    /// prefix or an absent name.
    #[test]
    fn lookup_orders_definitions_before_declarations() {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let fwd = b.fwd("file", false);
        let file = b.struct_("file", 4, &[("f", int, 0)]);
        let u = b.composite(Kind::Union, "fil", 4, &[("f", int, 0)]);
        b.struct_("files", 4, &[("f", int, 0)]);
        let btf = Btf::parse(&b.build()).expect("valid");
        assert_eq!(btf.named("file"), &[file, fwd]);
        assert_eq!(btf.named("fil"), &[u]);
        assert!(btf.named("fi").is_empty());
        assert!(btf.named("zzz").is_empty());
        // Only composites are indexed.
        assert!(btf.named("int").is_empty());
    }
}
