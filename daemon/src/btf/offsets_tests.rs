//! Tests of member offsets and sizes on BTF built by `BtfBuilder`: plain, anonymous and
//! nested members, typedefs, forward declarations and duplicates, and the refusals
//! (bitfields, unaligned members, cycles, empty paths).

use super::*;
use crate::btf::test_support::BtfBuilder;

/// Parses a builder's blob.
fn parse(b: &BtfBuilder) -> Btf {
    Btf::parse(&b.build()).expect("valid btf")
}

/// Direct members give their bit offset / 8 and their type's size; pointers are 8 bytes
/// when `long` is.
#[test]
fn plain_member() {
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    let long = b.int("long int", 8);
    let mm = b.fwd("mm_struct", false);
    let ptr = b.refer(Kind::Ptr, "", mm);
    b.struct_(
        "task",
        24,
        &[("pid", int, 0), ("mm", ptr, 64), ("x", long, 128)],
    );
    let btf = parse(&b);
    assert_eq!(
        btf.member("task", &["pid"]),
        Ok(Member { offset: 0, size: 4 })
    );
    assert_eq!(
        btf.member("task", &["mm"]),
        Ok(Member { offset: 8, size: 8 })
    );
    assert_eq!(btf.member_offset("task", &["x"]), Ok(16));
}

/// `vm_start` inside an anonymous struct inside an anonymous union is found, and offsets
/// of every anonymous level add up.
#[test]
fn member_inside_anonymous_union_and_struct() {
    let mut b = BtfBuilder::new();
    let long = b.int("long unsigned int", 8);
    // struct { unsigned long vm_start, vm_end; } at bit 0 of the union
    let inner = b.struct_("", 16, &[("vm_start", long, 0), ("vm_end", long, 64)]);
    let rcu = b.struct_("rcu_head", 16, &[("next", long, 0), ("func", long, 64)]);
    let union = b.composite(Kind::Union, "", 16, &[("", inner, 0), ("vm_rcu", rcu, 0)]);
    // A second anonymous level at a non-zero offset, behind a const.
    let deep = b.struct_("", 8, &[("pad", long, 0)]);
    let deep_const = b.refer(Kind::Const, "", deep);
    let mid = b.struct_("", 16, &[("y", long, 0), ("", deep_const, 64)]);
    b.struct_(
        "vm_area_struct",
        48,
        &[("", union, 0), ("vm_mm", long, 128), ("", mid, 192)],
    );
    let btf = parse(&b);
    assert_eq!(btf.member_offset("vm_area_struct", &["vm_start"]), Ok(0));
    assert_eq!(btf.member_offset("vm_area_struct", &["vm_end"]), Ok(8));
    assert_eq!(btf.member_offset("vm_area_struct", &["vm_rcu"]), Ok(0));
    assert_eq!(btf.member_size("vm_area_struct", &["vm_rcu"]), Ok(16));
    assert_eq!(btf.member_offset("vm_area_struct", &["vm_mm"]), Ok(16));
    assert_eq!(btf.member_offset("vm_area_struct", &["pad"]), Ok(32));
    assert_eq!(
        btf.member_offset("vm_area_struct", &["nope"]),
        Err(OffsetError::MemberNotFound {
            within: "vm_area_struct".into(),
            member: "nope".into()
        })
    );
}

/// A second name steps into the member's struct through typedef, const, volatile and
/// type tag, and offsets add; a pointer member stops the path.
#[test]
fn nested_path_through_typedef() {
    let mut b = BtfBuilder::new();
    let int = b.int("unsigned int", 4);
    let uchar = b.int("unsigned char", 1);
    let name_ptr = b.refer(Kind::Ptr, "", uchar);
    let qstr = b.struct_("qstr", 16, &[("hash", int, 0), ("name", name_ptr, 64)]);
    let qstr_t = b.refer(Kind::Typedef, "qstr_t", qstr);
    let tagged = b.refer(Kind::TypeTag, "rcu", qstr_t);
    let volatile = b.refer(Kind::Volatile, "", tagged);
    let konst = b.refer(Kind::Const, "", volatile);
    let dentry_fwd = b.fwd("dentry", false);
    let parent = b.refer(Kind::Ptr, "", dentry_fwd);
    b.struct_(
        "dentry",
        56,
        &[("d_parent", parent, 192), ("d_name", konst, 256)],
    );
    let btf = parse(&b);
    assert_eq!(btf.member_offset("dentry", &["d_name"]), Ok(32));
    assert_eq!(
        btf.member("dentry", &["d_name", "name"]),
        Ok(Member {
            offset: 40,
            size: 8
        })
    );
    assert_eq!(btf.member_size("dentry", &["d_name"]), Ok(16));
    assert_eq!(
        btf.member_offset("dentry", &["d_parent", "d_name"]),
        Err(OffsetError::NotComposite {
            path: "dentry.d_parent".into(),
            kind: "ptr"
        })
    );
    assert_eq!(
        btf.member_offset("dentry", &["d_name", "len"]),
        Err(OffsetError::MemberNotFound {
            within: "dentry.d_name".into(),
            member: "len".into()
        })
    );
}

/// With kind_flag, a member whose offset word has a bitfield size is rejected while a
/// whole member (bitfield size 0) of the same struct resolves; the old encoding (an INT
/// narrower than its size, no kind_flag) is rejected too.
#[test]
fn bitfields_are_rejected() {
    let mut b = BtfBuilder::new();
    let int = b.int("unsigned int", 4);
    b.composite_with(
        Kind::Struct,
        "task",
        8,
        true,
        &[
            ("flag_a", int, 0, 3),
            ("flag_b", int, 3, 5),
            ("count", int, 32, 0),
        ],
    );
    let narrow = b.int_bits("unsigned int", 4, 3);
    b.struct_("old", 8, &[("f", narrow, 0), ("whole", int, 32)]);
    let btf = parse(&b);
    assert_eq!(
        btf.member("task", &["count"]),
        Ok(Member { offset: 4, size: 4 })
    );
    assert_eq!(
        btf.member_offset("task", &["flag_b"]),
        Err(OffsetError::Bitfield {
            path: "task.flag_b".into(),
            bit_offset: 3,
            bits: 5
        })
    );
    assert!(matches!(
        btf.member_offset("old", &["f"]),
        Err(OffsetError::Bitfield { bits: 3, .. })
    ));
    assert_eq!(btf.member_offset("old", &["whole"]), Ok(4));
}

/// A member at a bit offset that is not a multiple of 8 is refused.
#[test]
fn unaligned_member_is_rejected() {
    let mut b = BtfBuilder::new();
    let ch = b.int("char", 1);
    b.struct_("odd", 2, &[("c", ch, 4)]);
    assert_eq!(
        parse(&b).member_offset("odd", &["c"]),
        Err(OffsetError::Unaligned {
            path: "odd.c".into(),
            bit_offset: 4
        })
    );
}

/// A FWD with a lower id than the full struct of the same name does not hide it; a FWD
/// alone is reported as only declared; a FWD-typed member leads to the definition.
#[test]
fn forward_declarations_yield_to_definitions() {
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    let fwd = b.fwd("path", false);
    b.struct_("path", 16, &[("mnt", int, 0), ("dentry", int, 64)]);
    b.struct_("file", 32, &[("f_path", fwd, 64)]);
    b.fwd("lonely", false);
    let btf = parse(&b);
    assert_eq!(btf.member_offset("path", &["dentry"]), Ok(8));
    assert_eq!(btf.member_offset("file", &["f_path", "dentry"]), Ok(16));
    assert_eq!(
        btf.member_offset("lonely", &["x"]),
        Err(OffsetError::OnlyDeclared {
            name: "lonely".into()
        })
    );
    assert_eq!(
        btf.member_offset("missing", &["x"]),
        Err(OffsetError::TypeNotFound {
            name: "missing".into()
        })
    );
}

/// Same-named definitions must agree on the path; one lacking the member is ignored.
#[test]
fn duplicate_definitions_must_agree() {
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    b.struct_("dup", 8, &[("a", int, 0), ("b", int, 32)]);
    b.struct_("dup", 12, &[("a", int, 0), ("c", int, 32), ("b", int, 64)]);
    let btf = parse(&b);
    assert_eq!(btf.member_offset("dup", &["a"]), Ok(0));
    assert_eq!(btf.member_offset("dup", &["c"]), Ok(4));
    assert_eq!(
        btf.member_offset("dup", &["b"]),
        Err(OffsetError::Ambiguous {
            name: "dup".into(),
            path: "dup.b".into()
        })
    );
}

/// Sizes resolve typedefs and multiply array lengths; void and function members have no
/// size; a named union works as a root.
#[test]
fn member_sizes() {
    let mut b = BtfBuilder::new();
    let u32_ = b.int("unsigned int", 4);
    let dev_t = b.refer(Kind::Typedef, "dev_t", u32_);
    let arr = b.array(u32_, u32_, 6);
    let arr2 = b.array(arr, u32_, 2);
    let void_ptr_target = b.refer(Kind::Const, "", 0);
    b.composite(
        Kind::Union,
        "u",
        48,
        &[
            ("dev", dev_t, 0),
            ("grid", arr2, 0),
            ("v", void_ptr_target, 0),
        ],
    );
    let btf = parse(&b);
    assert_eq!(btf.member_size("u", &["dev"]), Ok(4));
    assert_eq!(btf.member_size("u", &["grid"]), Ok(48));
    assert_eq!(
        btf.member_size("u", &["v"]),
        Err(OffsetError::NoSize {
            path: "u.v".into(),
            kind: "void"
        })
    );
}

/// Cyclic typedefs and a struct that contains itself anonymously end in TooDeep, not a
/// hang or stack overflow.
#[test]
fn cycles_are_bounded() {
    let mut b = BtfBuilder::new();
    // ids: 1 = typedef a -> 2, 2 = typedef b -> 1
    b.refer(Kind::Typedef, "a", 2);
    b.refer(Kind::Typedef, "b", 1);
    b.struct_("s", 4, &[("m", 1, 0)]);
    // id 4 contains itself as an anonymous member.
    b.struct_("self", 4, &[("", 4, 0)]);
    let btf = parse(&b);
    assert!(matches!(
        btf.member_offset("s", &["m", "x"]),
        Err(OffsetError::TooDeep { .. })
    ));
    assert!(matches!(
        btf.member_size("s", &["m"]),
        Err(OffsetError::TooDeep { .. })
    ));
    assert!(matches!(
        btf.member_offset("self", &["x"]),
        Err(OffsetError::TooDeep { .. })
    ));
}

/// An empty path, or an empty name that would match anonymous members, is invalid.
#[test]
fn empty_paths_are_invalid() {
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    b.struct_("s", 4, &[("a", int, 0)]);
    let btf = parse(&b);
    assert!(matches!(
        btf.member_offset("s", &[]),
        Err(OffsetError::InvalidPath { .. })
    ));
    assert!(matches!(
        btf.member_offset("s", &["a", ""]),
        Err(OffsetError::InvalidPath { .. })
    ));
}

/// The struct after one record of every kind still resolves: no kind desyncs the ids.
#[test]
fn every_kind_keeps_ids_in_step() {
    let mut b = BtfBuilder::new();
    b.one_of_every_kind();
    let btf = parse(&b);
    assert_eq!(
        btf.member("last", &["x"]),
        Ok(Member { offset: 0, size: 4 })
    );
    assert_eq!(btf.member_offset("pair", &["b"]), Ok(4));
}
