//! The pipeline in-process, with the resolver over fakes at the syscall seam (a maps text and
//! a userspace sequence) and a real probe on the system's libc: the hit-checks-itself oracle
//! (`probe_mismatch`) stays 0 when the resolver's picture is right and counts when it is not.

use std::{
    io::Write,
    os::unix::fs::MetadataExt as _,
    sync::{Arc, Mutex},
};

use probed_common::HitEvent;

use super::Pipeline;
use crate::{
    output::{Format, Writer},
    probes::{self, Probe},
    resolve::{
        ProcKey, Resolver, UserSeq,
        testing::{FakeMaps, FakeVma, change, render},
    },
    symbolize::Symbolizer,
};

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
const PID: u32 = 4242;
const GEN: u64 = 7;
const BASE: u64 = 0x7f00_0000_0000;

/// An output the test reads after the pipeline wrote to it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A probe on libc's malloc (libc6 is on every machine probed's tests run on).
fn malloc_probe() -> Probe {
    let spec = format!("uprobe:{LIBC}:malloc").parse().unwrap();
    probes::prepare_one(0, spec, probes::Scope::default()).unwrap()
}

/// libc's text mapped at [`BASE`] with file offset `pgoff`, as the maps text would say.
fn libc_text(pgoff: u64) -> FakeVma {
    let meta = std::fs::metadata(LIBC).unwrap();
    FakeVma {
        start: BASE,
        end: BASE + 0x20_0000,
        perms: "r-xp",
        pgoff,
        major: libc::major(meta.dev()),
        minor: libc::minor(meta.dev()),
        ino: meta.ino(),
        path: LIBC.into(),
    }
}

/// A hit of probe 0 at `ip`, stamped with `seq`.
fn hit_at(ip: u64, seq: u64) -> HitEvent {
    crate::events::test_records::hit(0, PID, GEN, ip, seq)
}

/// A pipeline over a resolver that sees libc's text mapped with file offset `mapped_pgoff`
/// for [`PID`]; also the sequence the hit must carry and the output.
fn pipeline(mapped_pgoff: u64) -> (Pipeline<Shared, UserSeq>, u64, Shared) {
    let probe = malloc_probe();
    let proc = ProcKey::new(PID, GEN);
    let seq = UserSeq::with_capacity(4);
    seq.register(proc).unwrap();
    let maps = Arc::new(FakeMaps::new());
    let at = change(&seq, &maps, proc, render(&[libc_text(mapped_pgoff)])).unwrap();
    let resolver = Arc::new(Resolver::new(seq, Arc::clone(&maps)));
    resolver.track(proc).unwrap();
    let out = Shared::default();
    let writer = Writer::new(out.clone(), Format::Json);
    let pipeline = Pipeline::new(
        vec![probe],
        writer,
        None,
        &resolver,
        Arc::new(Symbolizer::new()),
    );
    (pipeline, at, out)
}

/// Runs one hit of malloc through a pipeline whose resolver sees libc's text mapped with
/// file offset `mapped_pgoff` (the hit's address computed from the true one, `true_pgoff`);
/// returns probe 0's `probe_mismatch` and the JSON line written.
fn one_hit(true_pgoff: u64, mapped_pgoff: u64) -> (u64, String) {
    let (mut pipeline, at, out) = pipeline(mapped_pgoff);
    let ip = BASE + pipeline.probe(0).unwrap().0.file_offset - true_pgoff;
    assert!(pipeline.handle(&hit_at(ip, at), None));
    let mismatch = pipeline.probe(0).unwrap().1.probe_mismatch;
    let out = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    (mismatch, out)
}

/// The resolver's picture matches the kernel's: the hit lands on the probe, named malloc.
#[test]
fn a_right_picture_agrees_with_the_probe() {
    let (mismatch, out) = one_hit(0, 0);
    assert_eq!(mismatch, 0, "{out}");
    // Answered by the resolver's picture, not by the probe standing in for it.
    assert!(out.contains("\"via\":\"mirror\""), "{out}");
    assert!(out.contains("malloc"), "{out}");
}

/// A deliberately wrong picture (the text mapped one page off): the resolver places the hit
/// at another file offset than where the kernel matched it, and the oracle counts it.
#[test]
fn a_wrong_picture_is_caught() {
    let (mismatch, out) = one_hit(0, 0x1000);
    assert_eq!(mismatch, 1, "{out}");
    assert!(out.contains("\"via\":\"mirror\""), "{out}");
}

/// A frame that resolves nowhere is counted as its probe's `unresolved`, by reason; the hit
/// itself still resolves.
#[test]
fn unresolved_frames_are_counted_per_probe() {
    let (mut pipeline, at, _out) = pipeline(0);
    let ip = BASE + pipeline.probe(0).unwrap().0.file_offset;
    // A user address nothing is mapped at in the picture.
    let frames = [ip, 0x5555_0000_1234];
    assert!(pipeline.handle(&hit_at(ip, at), Some(&frames)));
    let counts = pipeline.probe(0).unwrap().1;
    assert_eq!(counts.unresolved.get("unmapped"), Some(&1), "{counts:?}");
    assert_eq!(counts.printed, 1);
    assert_eq!(counts.probe_mismatch, 0);
}

/// A hit naming a probe the pipeline does not have is counted, and reported with the
/// resolver's counters (summary, `ctl stats`).
#[test]
fn hits_of_unknown_probes_are_counted() {
    let (mut pipeline, at, _out) = pipeline(0);
    let mut hit = hit_at(BASE, at);
    hit.probe_id = 9;
    assert!(pipeline.handle(&hit, None));
    assert_eq!(pipeline.unknown_probe, 1);
    let reported = pipeline.resolver_counters();
    assert!(reported.contains(&("unknown_probe", 1)), "{reported:?}");
}
