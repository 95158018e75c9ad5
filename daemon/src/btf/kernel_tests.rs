//! Checks against the running kernel: [`Btf`] must agree with what
//! `bpftool btf dump file /sys/kernel/btf/vmlinux format raw` prints for the same file — an
//! independent parser (libbpf's) of the same bytes.
//!
//! Without the file or bpftool these tests print why and pass, except under `CI=true`, where
//! they fail: in CI a check that could not run must not look green.

use std::{collections::HashMap, path::Path, process::Command, sync::OnceLock, time::Instant};

use super::{Btf, OffsetError, VMLINUX_BTF};

/// The members the BPF programs read, as (struct, path).
const NEEDED: &[(&str, &[&str])] = &[
    ("task_struct", &["mm"]),
    ("task_struct", &["files"]),
    ("mm_struct", &["mmap_base"]),
    ("vm_area_struct", &["vm_start"]),
    ("vm_area_struct", &["vm_end"]),
    ("vm_area_struct", &["vm_pgoff"]),
    ("vm_area_struct", &["vm_flags"]),
    ("vm_area_struct", &["vm_file"]),
    ("file", &["f_inode"]),
    ("file", &["f_path"]),
    ("file", &["f_path", "dentry"]),
    ("path", &["dentry"]),
    ("inode", &["i_ino"]),
    ("inode", &["i_sb"]),
    ("super_block", &["s_dev"]),
    ("dentry", &["d_parent"]),
    ("dentry", &["d_name"]),
    ("dentry", &["d_name", "name"]),
    ("qstr", &["name"]),
    ("files_struct", &["fdt"]),
    ("fdtable", &["fd"]),
    ("fdtable", &["max_fds"]),
];

/// One type as bpftool prints it.
#[derive(Default)]
struct DumpType {
    kind: String,
    name: String,
    /// `size=`, for sized kinds.
    size: Option<u32>,
    /// `type_id=`: the referred type of modifiers, pointers and arrays (element type).
    type_id: Option<u32>,
    /// `nr_elems=`, for arrays.
    nr_elems: Option<u32>,
    /// STRUCT/UNION members.
    members: Vec<DumpMember>,
}

/// One member line: `'name' type_id=N bits_offset=M [bitfield_size=K]`.
struct DumpMember {
    name: String,
    type_id: u32,
    bits_offset: u64,
    bitfield_size: u32,
}

/// bpftool's view of the whole file.
struct Dump {
    types: HashMap<u32, DumpType>,
    by_name: HashMap<String, Vec<u32>>,
    last_id: u32,
    pointer_size: u32,
}

/// `key=value` from a whitespace-separated field (bpftool ends VAR's `type_id` with a comma).
fn field(line: &str, key: &str) -> Option<u32> {
    line.split_whitespace().find_map(|f| {
        let value = f.strip_prefix(key)?.strip_prefix('=')?;
        value.trim_end_matches(',').parse().ok()
    })
}

/// The text between the first pair of single quotes.
fn quoted(line: &str) -> &str {
    line.split('\'').nth(1).unwrap_or("")
}

impl Dump {
    fn parse(text: &str) -> Dump {
        let mut types = HashMap::new();
        let mut current: Option<(u32, DumpType)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                types.extend(current.take());
                let (id, rest) = rest.split_once("] ").expect("`[id] KIND` line");
                let ty = DumpType {
                    kind: rest.split_whitespace().next().unwrap_or("").into(),
                    name: quoted(rest).into(),
                    size: field(rest, "size"),
                    type_id: field(rest, "type_id"),
                    nr_elems: field(rest, "nr_elems"),
                    members: Vec::new(),
                };
                current = Some((id.parse().expect("numeric id"), ty));
            } else if let Some((_, ty)) = &mut current
                && matches!(ty.kind.as_str(), "STRUCT" | "UNION")
                && line.starts_with("\t'")
            {
                ty.members.push(DumpMember {
                    name: quoted(line).into(),
                    type_id: field(line, "type_id").expect("member type_id"),
                    bits_offset: field(line, "bits_offset")
                        .expect("member bits_offset")
                        .into(),
                    bitfield_size: field(line, "bitfield_size").unwrap_or(0),
                });
            }
        }
        types.extend(current);
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (&id, ty) in &types {
            if matches!(ty.kind.as_str(), "STRUCT" | "UNION") && !ty.members.is_empty() {
                by_name.entry(ty.name.clone()).or_default().push(id);
            }
        }
        let pointer_size = types
            .values()
            .find(|t| t.kind == "INT" && t.name == "long int")
            .and_then(|t| t.size)
            .expect("vmlinux has `long int`");
        Dump {
            last_id: types.keys().copied().max().unwrap_or(0),
            types,
            by_name,
            pointer_size,
        }
    }

    /// Follows TYPEDEF/CONST/VOLATILE/RESTRICT/TYPE_TAG.
    fn strip(&self, mut id: u32) -> u32 {
        while let Some(t) = self.types.get(&id)
            && matches!(
                t.kind.as_str(),
                "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG"
            )
        {
            id = t.type_id.expect("modifier has type_id");
        }
        id
    }

    fn is_composite(&self, id: u32) -> bool {
        self.types
            .get(&id)
            .is_some_and(|t| matches!(t.kind.as_str(), "STRUCT" | "UNION"))
    }

    /// Every member reachable from struct `id` by name, anonymous members flattened, as
    /// (name, bit offset from `id`, type id, bitfield size): the kernel's C layout rule.
    fn flatten(&self, id: u32, base: u64, out: &mut Vec<(String, u64, u32, u32)>) {
        for m in &self.types[&id].members {
            let bits = base + m.bits_offset;
            if m.name == "(anon)" {
                let inner = self.strip(m.type_id);
                if self.is_composite(inner) {
                    self.flatten(inner, bits, out);
                }
            } else {
                out.push((m.name.clone(), bits, m.type_id, m.bitfield_size));
            }
        }
    }

    /// Bit offset and type of `path` in the one definition of `name`.
    fn locate(&self, name: &str, path: &[&str]) -> (u64, u32) {
        let defs = &self.by_name[name];
        assert_eq!(
            defs.len(),
            1,
            "`{name}` has one definition in bpftool's dump"
        );
        let (mut id, mut bits, mut type_id) = (defs[0], 0, 0);
        for (i, member) in path.iter().enumerate() {
            if i > 0 {
                id = self.strip(type_id);
            }
            let mut flat = Vec::new();
            self.flatten(id, 0, &mut flat);
            let (_, b, t, _) = flat
                .into_iter()
                .find(|(n, ..)| n == member)
                .unwrap_or_else(|| panic!("bpftool shows `{member}` in `{name}`"));
            bits += b;
            type_id = t;
        }
        (bits, type_id)
    }

    /// Bytes in type `id`.
    fn size(&self, id: u32) -> u32 {
        let t = &self.types[&self.strip(id)];
        match t.kind.as_str() {
            "PTR" => self.pointer_size,
            "ARRAY" => self.size(t.type_id.expect("elem")) * t.nr_elems.expect("nr_elems"),
            _ => t.size.expect("sized type"),
        }
    }
}

/// Our parse and bpftool's dump of the running kernel, made once per test binary.
fn sources(test: &str) -> Option<&'static (Btf, Dump)> {
    static SOURCES: OnceLock<Result<(Btf, Dump), String>> = OnceLock::new();
    let loaded = SOURCES.get_or_init(|| {
        let btf = kernel_btf()?;
        let out = ["bpftool", "/usr/sbin/bpftool"]
            .iter()
            .find_map(|bin| {
                Command::new(bin)
                    .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
                    .output()
                    .ok()
            })
            .ok_or("bpftool is not installed")?;
        if !out.status.success() {
            return Err(format!(
                "bpftool failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok((btf, Dump::parse(&String::from_utf8_lossy(&out.stdout))))
    });
    skip_unless(test, loaded.as_ref().map_err(Clone::clone))
}

/// The kernel's BTF, or why it cannot be read.
fn kernel_btf() -> Result<Btf, String> {
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(format!(
            "{VMLINUX_BTF} is missing (kernel without CONFIG_DEBUG_INFO_BTF)"
        ));
    }
    Btf::from_sys_fs().map_err(|e| format!("parse failed: {e}"))
}

/// `Some` to run; `None` (skip, with a printed reason) unless `CI=true`, where it panics.
fn skip_unless<T>(test: &str, ready: Result<T, String>) -> Option<T> {
    match ready {
        Ok(t) => Some(t),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: cannot run under CI=true: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// The running kernel's BTF parses, and its type count equals bpftool's last id; the parse
/// time is printed (`--nocapture`) for the figure in mod.rs.
#[test]
fn parses_running_kernel() {
    let ready = Path::new(VMLINUX_BTF)
        .exists()
        .then_some(())
        .ok_or_else(|| format!("{VMLINUX_BTF} is missing"));
    if skip_unless("parses_running_kernel", ready).is_none() {
        return;
    }
    let start = Instant::now();
    let btf = Btf::from_sys_fs().expect("running kernel's btf parses");
    let elapsed = start.elapsed();
    eprintln!(
        "parsed {VMLINUX_BTF}: {} types in {elapsed:?}",
        btf.type_count()
    );
    if let Some((_, dump)) = sources("parses_running_kernel") {
        assert_eq!(btf.type_count(), dump.last_id as usize);
    }
}

/// Each member the BPF programs need is found, with bpftool's offset (anonymous levels
/// summed) and size; `super_block.s_dev` is 4 bytes and, on 64-bit, `inode.i_ino` 8.
#[test]
fn needed_members_match_bpftool() {
    let Some((btf, dump)) = sources("needed_members_match_bpftool") else {
        return;
    };
    for &(name, path) in NEEDED {
        let ours = btf
            .member(name, path)
            .unwrap_or_else(|e| panic!("{name}.{}: {e}", path.join(".")));
        let (bits, type_id) = dump.locate(name, path);
        assert_eq!(bits % 8, 0, "{name}.{path:?} byte-aligned in bpftool");
        assert_eq!(
            u64::from(ours.offset),
            bits / 8,
            "offset of {name}.{path:?}"
        );
        assert_eq!(ours.size, dump.size(type_id), "size of {name}.{path:?}");
    }
    assert_eq!(btf.member_size("super_block", &["s_dev"]), Ok(4));
    if cfg!(target_pointer_width = "64") {
        assert_eq!(btf.member_size("inode", &["i_ino"]), Ok(8));
        assert_eq!(btf.member_size("vm_area_struct", &["vm_file"]), Ok(8));
    }
}

/// Every member of every uniquely named struct/union in the kernel — anonymous members
/// flattened — has bpftool's offset and size, and every bitfield is refused.
#[test]
fn every_kernel_member_matches_bpftool() {
    let Some((btf, dump)) = sources("every_kernel_member_matches_bpftool") else {
        return;
    };
    let (mut checked, mut bitfields) = (0, 0);
    for (name, ids) in &dump.by_name {
        if ids.len() != 1 || name == "(anon)" {
            continue;
        }
        let mut flat = Vec::new();
        dump.flatten(ids[0], 0, &mut flat);
        for (member, bits, type_id, bitfield_size) in flat {
            let ours = btf.member(name, &[&member]);
            if bitfield_size != 0 {
                assert!(
                    matches!(ours, Err(OffsetError::Bitfield { bits, .. }) if bits == bitfield_size),
                    "{name}.{member}: {ours:?}"
                );
                bitfields += 1;
                continue;
            }
            let ours = ours.unwrap_or_else(|e| panic!("{name}.{member}: {e}"));
            assert_eq!(
                u64::from(ours.offset) * 8,
                bits,
                "offset of {name}.{member}"
            );
            assert_eq!(ours.size, dump.size(type_id), "size of {name}.{member}");
            checked += 1;
        }
    }
    eprintln!("{checked} members and {bitfields} bitfields agree with bpftool");
    assert!(checked > 10_000, "only {checked} members compared");
}
