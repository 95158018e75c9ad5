//! Tests of the symbolizer: file offsets to symbols, demangling, one load per inode, failures
//! cached by rule, truncated and replaced files, eviction, a live process, and a debug file
//! that arrives in the background.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::*;
use crate::elf::{
    resolve_attach,
    test_support::{Fixture, readelf_symbol, scratch_dir},
};

fn offset_of(path: &Path, name: &str) -> u64 {
    resolve_attach(path, name, 0).unwrap().file_offset
}

/// Offsets inside a function give that function and the offset into it; an offset in
/// the ELF header gives no symbol; one past every segment gives no segment.
#[test]
fn symbolizes_file_offsets() {
    let sym = Symbolizer::new();
    for fixture in [Fixture::Pie, Fixture::NoPie, Fixture::Stripped] {
        let path = fixture.path();
        let src = FileSource::path(FileId::of_path(&path).unwrap(), &path);
        let beta = offset_of(&path, "elf_fn_beta");
        let got = sym.symbolize(&src, beta + 3).unwrap();
        let want = readelf_symbol(&path, "elf_fn_beta");
        assert_eq!(
            (got.name(), got.offset()),
            ("elf_fn_beta", 3),
            "{fixture:?}"
        );
        assert_eq!(got.symbol_vaddr(), want.value);
        assert_eq!(got.module(), path);
        assert_eq!(sym.symbolize(&src, 0x10).unwrap_err(), SymReason::NoSymbol);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            sym.symbolize(&src, len + 0x10000).unwrap_err(),
            SymReason::NoSegment
        );
    }
}

/// Mangled names come back demangled alongside the raw name, through the borrowed path.
#[test]
fn demangled_names_through_the_cache() {
    let path = Fixture::SharedLib.path();
    let sym = Symbolizer::new();
    let src = FileSource::path(FileId::of_path(&path).unwrap(), &path);
    let off = offset_of(&path, "_ZN2ns6Widget4pokeEi");
    let (raw, demangled) = sym.symbolize_with(&src, off + 1, |r| {
        let r = r.unwrap();
        assert_eq!(r.offset, 1);
        (r.symbol.name.to_string(), r.symbol.demangled().to_owned())
    });
    assert_eq!(
        (&*raw, &*demangled),
        ("_ZN2ns6Widget4pokeEi", "ns::Widget::poke(int)")
    );
    let legacy = offset_of(&path, "mycrate::module::legacy");
    assert_eq!(
        sym.symbolize(&src, legacy).unwrap().demangled(),
        "mycrate::module::legacy"
    );
}

/// One inode reached through two hard links, from several threads at once, is loaded
/// once and shared.
#[test]
fn one_load_per_inode_across_paths_and_threads() {
    let dir = scratch_dir("sym-hardlinks");
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::copy(Fixture::Pie.path(), &a).unwrap();
    std::fs::hard_link(&a, &b).unwrap();
    let id = FileId::of_path(&a).unwrap();
    assert_eq!(id, FileId::of_path(&b).unwrap());
    let off = offset_of(&a, "elf_fn_alpha");
    let sym = Symbolizer::new();
    std::thread::scope(|s| {
        for path in [&a, &b, &a, &b] {
            let sym = &sym;
            s.spawn(move || {
                let src = FileSource::path(id, path);
                for i in 0..100 {
                    let name = sym.symbolize_with(&src, off + i % 4, |r| {
                        r.map(|r| r.symbol.name.to_string())
                    });
                    assert_eq!(name.as_deref(), Ok("elf_fn_alpha"));
                }
            });
        }
    });
    assert_eq!(sym.stats().loads, 1);
    assert_eq!(sym.len(), 1);
    std::fs::remove_dir_all(dir).ok();
}

/// A non-ELF file is opened once however often it is hit; a missing file is retried
/// only once its retry delay has passed.
#[test]
fn failures_are_cached_by_rule() {
    let dir = scratch_dir("sym-negative");
    let script = dir.join("script");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let sym = Symbolizer::new().retry_after(Duration::from_millis(50));
    let src = FileSource::path(FileId::of_path(&script).unwrap(), &script);
    for _ in 0..3 {
        assert_eq!(sym.symbolize(&src, 0).unwrap_err(), SymReason::NotElf);
        assert_eq!(
            sym.symbolize_with(&src, 0, |r| r.unwrap_err()),
            SymReason::NotElf
        );
    }
    assert_eq!(sym.stats().loads, 1);

    let missing = dir.join("missing");
    let gone = FileSource::path(FileId { dev: 1, ino: 1 }, &missing);
    for _ in 0..3 {
        assert_eq!(
            sym.symbolize(&gone, 0).unwrap_err(),
            SymReason::FileUnavailable
        );
    }
    assert_eq!(sym.stats().loads, 2);
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(
        sym.symbolize_with(&gone, 0, |r| r.unwrap_err()),
        SymReason::FileUnavailable
    );
    assert_eq!(sym.stats().loads, 3);
    assert_eq!(sym.stats().load_failures, 3);
    std::fs::remove_dir_all(dir).ok();
}

/// A loaded file keeps answering from owned data after it is truncated; reloaded, the
/// truncated inode is "not ELF"; a path now naming another inode is "file changed".
#[test]
fn truncated_and_replaced_files() {
    let dir = scratch_dir("sym-truncate");
    let path = dir.join("bin");
    std::fs::copy(Fixture::Pie.path(), &path).unwrap();
    let id = FileId::of_path(&path).unwrap();
    let off = offset_of(&path, "elf_fn_alpha");
    let sym = Symbolizer::new();
    let src = FileSource::path(id, &path);
    let held = sym.symbolize(&src, off).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(sym.symbolize(&src, off).unwrap().name(), "elf_fn_alpha");
    sym.invalidate(id);
    assert_eq!(sym.symbolize(&src, off).unwrap_err(), SymReason::NotElf);
    assert_eq!(
        held.name(),
        "elf_fn_alpha",
        "a held result outlives its cache entry"
    );

    let new = dir.join("new");
    std::fs::copy(Fixture::Pie.path(), &new).unwrap();
    std::fs::rename(&new, &path).unwrap();
    sym.invalidate(id);
    assert_eq!(
        sym.symbolize(&src, off).unwrap_err(),
        SymReason::FileChanged
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Past capacity the least recently used entry goes; a result held from it stays valid.
#[test]
fn eviction_keeps_held_results_alive() {
    let sym = Symbolizer::with_capacity(1);
    let (pie, lib) = (Fixture::Pie.path(), Fixture::SharedLib.path());
    let pie_src = FileSource::path(FileId::of_path(&pie).unwrap(), &pie);
    let lib_src = FileSource::path(FileId::of_path(&lib).unwrap(), &lib);
    let held = sym
        .symbolize(&pie_src, offset_of(&pie, "elf_fn_alpha"))
        .unwrap();
    sym.symbolize(&lib_src, offset_of(&lib, "elf_lib_fn"))
        .unwrap();
    assert_eq!((sym.len(), sym.stats().evictions), (1, 1));
    assert_eq!(held.name(), "elf_fn_alpha");
    sym.symbolize(&pie_src, offset_of(&pie, "elf_fn_alpha"))
        .unwrap();
    assert_eq!(sym.stats().loads, 3);
}

/// Against a live process: addresses it reports for its own functions, normalized
/// through its /proc/PID/maps, symbolize to those functions via the mapping's routes.
#[test]
fn symbolizes_a_live_process() {
    let exe = Fixture::Pie.path();
    let mut child = Command::new(&exe)
        .arg("wait")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addrs: Vec<u64> = line
        .split_whitespace()
        .map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).unwrap())
        .collect();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap();
    let sym = Symbolizer::new();
    for (addr, want) in addrs
        .iter()
        .zip(["elf_fn_alpha", "elf_fn_beta", "elf_fn_local"])
    {
        let (start, end, pgoff, id, path) = maps
            .lines()
            .find_map(|l| parse_maps_line(l).filter(|m| (m.0..m.1).contains(addr)))
            .expect("address is mapped");
        let src = FileSource::mapped(id, &path, child.id(), start, end);
        let got = sym.symbolize(&src, addr + 1 - start + pgoff).unwrap();
        assert_eq!((got.name(), got.offset()), (want, 1));
    }
    assert_eq!(sym.stats().loads, 1);
    drop(child.stdin.take());
    child.wait().unwrap();
}

fn parse_maps_line(line: &str) -> Option<(u64, u64, u64, FileId, PathBuf)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (start, end) = f.first()?.split_once('-')?;
    let (major, minor) = f.get(3)?.split_once(':')?;
    Some((
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
        u64::from_str_radix(f.get(2)?, 16).ok()?,
        FileId::from_major_minor(
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
            f.get(4)?.parse().ok()?,
        ),
        PathBuf::from(f.get(5)?),
    ))
}

/// The network seam for the test below: serves `bytes` once `gate` opens.
struct Gated {
    bytes: Vec<u8>,
    gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl debuginfod::Transport for Gated {
    fn get(
        &self,
        _url: &str,
        out: &mut std::fs::File,
    ) -> Result<debuginfod::Got, debuginfod::TransportError> {
        self.gate.lock().unwrap().recv().ok();
        std::io::Write::write_all(out, &self.bytes).map_err(debuginfod::TransportError::Write)?;
        Ok(debuginfod::Got::Body)
    }
}

/// A file with only `.dynsym` is answered at once while its debug file is still on its
/// way (the server is held back): its static function has no name. Once the file has
/// arrived in the background, the same cache entry names it, without a reload.
#[test]
fn debug_file_arrives_in_the_background() {
    let dir = scratch_dir("sym-debuginfod");
    let full = Fixture::Pie.path();
    let debug = dir.join("prog.debug");
    let prog = dir.join("prog");
    for args in [
        [
            "--only-keep-debug",
            full.to_str().unwrap(),
            debug.to_str().unwrap(),
        ],
        [
            "--strip-all",
            full.to_str().unwrap(),
            prog.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("objcopy").args(args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let (open, gate) = std::sync::mpsc::channel();
    let transport = Gated {
        bytes: std::fs::read(&debug).unwrap(),
        gate: std::sync::Mutex::new(gate),
    };
    let client: &'static debuginfod::Client = Box::leak(Box::new(debuginfod::Client::new(
        vec!["http://server".into()],
        dir.join("cache"),
        Box::new(transport),
    )));
    let sym = Symbolizer::new().with_debuginfod(Some(client));
    let src = FileSource::path(FileId::of_path(&prog).unwrap(), &prog);
    let local = offset_of(&full, "elf_fn_local");
    let name = |sym: &Symbolizer| {
        sym.symbolize_with(&src, local, |r| r.map(|r| r.symbol.name.to_string()))
    };
    assert_ne!(
        name(&sym).as_deref(),
        Ok("elf_fn_local"),
        "before the file arrived"
    );
    open.send(()).unwrap();
    let named = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        name(&sym).as_deref() == Ok("elf_fn_local")
    });
    assert!(named, "the debug file's symbols were not swapped in");
    let stats = sym.stats();
    assert_eq!(
        (stats.loads, stats.debuginfod_fetched, stats.resymbolized),
        (1, 1, 1)
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Reason names are distinct snake_case words, stable for counters and JSON.
#[test]
fn reason_names_are_stable() {
    use SymReason::*;
    let all = [
        NoSymbol,
        NoSymbols,
        NoSegment,
        FileUnavailable,
        FileChanged,
        NotElf,
        UnsupportedElf,
        MalformedElf,
    ];
    let names: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), all.len());
    assert!(
        names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    );
    assert_eq!(FileChanged.as_str(), "file_changed");
}
