//! Tests of ELF loading against readelf and real fixtures: symbols of every file kind,
//! `.dynsym`-only binaries, build-ids, bad and unsupported files, truncation and replacement
//! during a load, and symbols from separate debug files.

use std::{collections::BTreeSet, fs, os::unix::fs::FileExt as _, sync::Arc};

use super::*;
use crate::elf::test_support::{
    ALPHA_MARK, Fixture, code_has_mark, readelf_build_id, readelf_symbols, scratch_dir,
};

/// Every kind of fixture loads with the right ELF type, and the merged table holds exactly
/// the defined function/data symbols `readelf` lists, with the same values and sizes.
#[test]
fn symbols_match_readelf_for_every_kind() {
    for (fixture, want_type) in [
        (Fixture::Pie, ElfType::Dynamic),
        (Fixture::NoPie, ElfType::Executable),
        (Fixture::SharedLib, ElfType::Dynamic),
        (Fixture::Stripped, ElfType::Dynamic),
    ] {
        let path = fixture.path();
        let image = ElfImage::open(&path).unwrap();
        assert_eq!(image.elf_type(), want_type, "{fixture:?}");
        let ours: BTreeSet<(String, u64, u64)> = image
            .symbols()
            .iter()
            .map(|s| (s.bare_name().to_owned(), s.addr, s.size))
            .collect();
        let theirs: BTreeSet<(String, u64, u64)> = readelf_symbols(&path)
            .into_iter()
            .filter(|s| matches!(&*s.kind, "FUNC" | "OBJECT" | "IFUNC"))
            .filter(|s| s.section != "UND" && s.section != "ABS" && s.value != 0)
            .map(|s| (s.name, s.value, s.size))
            .collect();
        assert_eq!(ours, theirs, "{fixture:?}");
        assert!(
            ours.iter()
                .any(|s| s.0 == "elf_fn_alpha" || s.0 == "elf_lib_fn")
        );
    }
}

/// A stripped binary keeps its exported functions (from .dynsym) but not its statics.
#[test]
fn stripped_binary_uses_dynsym() {
    let image = ElfImage::open(&Fixture::Stripped.path()).unwrap();
    assert!(image.symbols().find("elf_fn_local").is_none());
    let alpha = image
        .symbols()
        .find("elf_fn_alpha")
        .expect("exported via -rdynamic");
    assert!(alpha.size > 0);
    assert!(
        ElfImage::open(&Fixture::Pie.path())
            .unwrap()
            .symbols()
            .find("elf_fn_local")
            .is_some()
    );
}

/// The build-id is the one `readelf -n` prints.
#[test]
fn build_id_matches_readelf() {
    let path = Fixture::SharedLib.path();
    let image = ElfImage::open(&path).unwrap();
    let want = readelf_build_id(&path).expect("gcc on Debian links with a build-id");
    assert_eq!(image.build_id().map(ToString::to_string), Some(want));
}

/// A script, an empty file and a missing path give "not an ELF file" / "no such file".
#[test]
fn non_elf_and_missing_files() {
    let dir = scratch_dir("non-elf");
    let script = dir.join("script.sh");
    fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
    let err = ElfImage::open(&script).unwrap_err();
    assert!(matches!(err, ElfError::NotElf { .. }), "{err:?}");
    assert!(!err.is_transient(), "content does not fix itself");
    assert!(
        err.to_string().ends_with("script.sh: not an ELF file"),
        "{err}"
    );
    let empty = dir.join("empty");
    fs::write(&empty, "").unwrap();
    assert!(matches!(
        ElfImage::open(&empty),
        Err(ElfError::NotElf { .. })
    ));
    let err = ElfImage::open(&dir.join("missing")).unwrap_err();
    assert!(matches!(err, ElfError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().ends_with("missing: no such file"), "{err}");
    assert!(err.is_transient(), "a missing file may appear later");
    fs::remove_dir_all(dir).ok();
}

/// 32-bit, big-endian and foreign-machine files are refused as unsupported, by name.
#[test]
fn unsupported_elf_files() {
    let dir = scratch_dir("unsupported");
    let original = fs::read(Fixture::Pie.path()).unwrap();
    for (at, value, what) in [
        (4, 1u8, "32-bit"),
        (5, 2, "big-endian"),
        (18, 183, "machine 183"),
    ] {
        let mut bytes = original.clone();
        bytes[at] = value;
        let path = dir.join(format!("patched-{at}"));
        fs::write(&path, bytes).unwrap();
        let err = ElfImage::open(&path).unwrap_err();
        assert!(matches!(err, ElfError::Unsupported { .. }), "{err:?}");
        assert!(err.to_string().contains(what), "{err}");
    }
    fs::remove_dir_all(dir).ok();
}

/// Files cut short give clean errors: empty is not ELF, a cut header or cut tables are
/// malformed.
#[test]
fn truncated_files_are_errors() {
    let dir = scratch_dir("truncated");
    let original = fs::read(Fixture::Pie.path()).unwrap();
    for (len, empty) in [
        (0, true),
        (40, false),
        (100, false),
        (original.len() / 2, false),
    ] {
        let path = dir.join(format!("cut-{len}"));
        fs::write(&path, &original[..len]).unwrap();
        let err = ElfImage::open(&path).unwrap_err();
        if empty {
            assert!(matches!(err, ElfError::NotElf { .. }), "{len}: {err:?}");
        } else {
            assert!(matches!(err, ElfError::Malformed { .. }), "{len}: {err:?}");
        }
    }
    fs::remove_dir_all(dir).ok();
}

/// A reader that truncates its file after the first few reads, like a binary being
/// rewritten while probed loads it.
struct TruncatingReader {
    file: File,
    reads: std::cell::Cell<u32>,
}

impl ReadAt for TruncatingReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.reads.set(self.reads.get() + 1);
        if self.reads.get() == 3 {
            self.file.set_len(0)?;
        }
        std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
    }
}

/// A file truncated in the middle of loading is reported as changed, not parsed into
/// garbage and not a crash.
#[test]
fn truncation_during_load_is_detected() {
    let dir = scratch_dir("truncate-mid-load");
    let path = dir.join("victim");
    fs::copy(Fixture::Pie.path(), &path).unwrap();
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let meta = file.metadata().unwrap();
    let id = FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    let reader = TruncatingReader {
        file: file.try_clone().unwrap(),
        reads: Default::default(),
    };
    let err = ElfImage::read(
        reader,
        Stamp::of(&meta),
        id,
        &path,
        || file.metadata(),
        DebugFetch::Local,
    )
    .unwrap_err();
    assert!(matches!(err, ElfError::Changed { .. }), "{err:?}");
    fs::remove_dir_all(dir).ok();
}

/// While one thread truncates, rewrites and replaces a binary in a loop, loading it from
/// another never crashes: each load is either the whole binary or a clean error.
#[test]
fn concurrent_truncate_and_replace_never_crash() {
    let dir = scratch_dir("truncate-race");
    let path = Arc::new(dir.join("victim"));
    let original = fs::read(Fixture::Pie.path()).unwrap();
    fs::write(&*path, &original).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match ElfImage::open(&path) {
                    Ok(image) => {
                        let alpha = image.symbols().find("elf_fn_alpha").expect("whole file");
                        assert!(alpha.size > 0);
                        ok += 1;
                    }
                    Err(
                        ElfError::NotElf { .. }
                        | ElfError::Malformed { .. }
                        | ElfError::Changed { .. }
                        | ElfError::NotFound { .. },
                    ) => failed += 1,
                    Err(other) => panic!("unexpected error {other:?}"),
                }
            }
            (ok, failed)
        })
    };
    let replacement = dir.join("replacement");
    for round in 0..300 {
        let f = fs::OpenOptions::new().write(true).open(&*path).unwrap();
        f.set_len(0).unwrap();
        f.write_all_at(&original[..original.len() / (round % 4 + 1)], 0)
            .unwrap();
        f.write_all_at(&original, 0).unwrap();
        fs::write(&replacement, &original).unwrap();
        fs::rename(&replacement, &*path).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = loader.join().expect("loader thread did not panic");
    assert!(ok + failed > 0);
    // The marker check proves the file still is the original after the race.
    let image = ElfImage::open(&path).unwrap();
    let alpha = image.symbols().find("elf_fn_alpha").unwrap();
    let off = image.vaddr_to_file_offset(alpha.addr).unwrap();
    assert!(code_has_mark(&path, off, alpha.size, ALPHA_MARK));
    fs::remove_dir_all(dir).ok();
}

fn objcopy(args: &[&str]) {
    let out = std::process::Command::new("objcopy")
        .args(args)
        .output()
        .expect("run objcopy (binutils)");
    assert!(out.status.success(), "objcopy {args:?}: {out:?}");
}

/// A binary stripped of `.symtab` whose debug file (objcopy --only-keep-debug) is named
/// by `.gnu_debuglink` in `.debug/` gets its static function back, and says where from;
/// a debug file whose CRC does not match is refused; found by build-id under a debug
/// root, the build-id is checked.
#[test]
fn symbols_from_separate_debug_files() {
    let dir = scratch_dir("debuglink");
    let full = dir.join("prog.full");
    fs::copy(Fixture::Pie.path(), &full).unwrap();
    fs::create_dir_all(dir.join(".debug")).unwrap();
    let debug = dir.join(".debug/prog.debug");
    objcopy(&[
        "--only-keep-debug",
        full.to_str().unwrap(),
        debug.to_str().unwrap(),
    ]);
    let prog = dir.join("prog");
    let link = format!("--add-gnu-debuglink={}", debug.display());
    objcopy(&[
        "--strip-all",
        &link,
        full.to_str().unwrap(),
        prog.to_str().unwrap(),
    ]);

    let has_local = |image: &ElfImage| image.symbols().find("elf_fn_local").is_some();
    let image = ElfImage::open(&prog).unwrap();
    assert!(
        has_local(&image),
        "elf_fn_local not found through .gnu_debuglink"
    );
    assert_eq!(image.debug_file(), Some(debug.as_path()));
    // Its address is the full binary's.
    let want = ElfImage::open(&full).unwrap();
    assert_eq!(
        image.symbols().find("elf_fn_local").map(|s| s.addr),
        want.symbols().find("elf_fn_local").map(|s| s.addr)
    );

    // Another build's debug file under the same name: the CRC no longer matches.
    let mut bytes = fs::read(&debug).unwrap();
    bytes.push(0);
    fs::write(&debug, &bytes).unwrap();
    let image = ElfImage::open(&prog).unwrap();
    assert!(!has_local(&image) && image.debug_file().is_none());

    // By build-id under a debug root (no debuglink match needed), build-id checked.
    let id = image
        .build_id()
        .expect("the fixture has a build-id")
        .to_string();
    let root = dir.join("root");
    let by_id = root
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    fs::create_dir_all(by_id.parent().unwrap()).unwrap();
    objcopy(&[
        "--only-keep-debug",
        full.to_str().unwrap(),
        by_id.to_str().unwrap(),
    ]);
    let found = debug_symbols(&prog, image.build_id(), None, &root).expect("found by build-id");
    assert_eq!(found.0, by_id);
    assert!(found.1.iter().any(|s| &*s.name == "elf_fn_local"));
    let other = BuildId::new(&[1, 2, 3, 4]);
    let other_hex = other.to_string();
    let wrong = root
        .join(".build-id")
        .join(&other_hex[..2])
        .join(format!("{}.debug", &other_hex[2..]));
    fs::create_dir_all(wrong.parent().unwrap()).unwrap();
    fs::copy(&by_id, &wrong).unwrap();
    assert!(
        debug_symbols(&prog, Some(&other), None, &root).is_none(),
        "a debug file of another build-id was used"
    );
    let _ = fs::remove_dir_all(&dir);
}
