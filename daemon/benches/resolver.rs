//! Resolver benchmarks (shared/design/BENCHMARKS.md): the same recorded address stream — hits
//! on registered probes mixed with stack-like addresses and a few unmapped ones — resolved by
//! each candidate, over a real process whose address space was grown to ~650 and ~7,000
//! executable file mappings (blazesym and procfs read /proc/PID/maps, so the space must be
//! real; the in-process candidates use a snapshot of the same maps).
//!
//! Criterion measures the single-thread figures (`resolver_650/…`, `resolver_7000/…`, and the
//! maps parsers under `parse/…`). When `PROBED_BENCH_REPORT` names a file, a custom timing
//! loop then measures 1- and 2-thread throughput side by side and the fallback rate under
//! mapping churn, and writes them there as JSON for `cargo xtask bench resolver`.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    hint::black_box,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Barrier, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput};
use probed::{
    file_id::FileId,
    fixtures,
    resolve::{
        ProbeId, ProcKey, ProcMaps, Reader, Resolver, Snapshot, UserSeq, Vma,
        testing::{FakeMaps, change},
    },
};

/// Addresses in the recorded stream.
const STREAM: usize = 4096;
/// Probe sites registered (half the stream hits one of them).
const PROBES: usize = 64;

/// The unsynchronized limit uses the same multiply-rotate hash as the resolver's registry
/// (FxHash), so the comparison measures synchronization, not hashing.
#[derive(Default)]
struct Fx(u64);
impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}
type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// A real process with a grown address space, and everything recorded from it.
struct Space {
    vmas: usize,
    child: Child,
    proc: ProcKey,
    /// Its maps text as read once.
    text: Vec<u8>,
    snap: Arc<Snapshot>,
    stream: Vec<u64>,
    probes: Vec<(FileId, u64, ProbeId)>,
}

impl Drop for Space {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn space(count: usize) -> Space {
    let mapper = fixtures::build("resolver_mapper.c", "resolver_mapper", &["-O1"]).unwrap();
    let dir = std::env::temp_dir().join("probed-bench-resolver");
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = (0..8)
        .map(|i| {
            let p = dir.join(format!("blob{i}.bin"));
            let f = std::fs::File::create(&p).unwrap();
            f.set_len(64 * 4096).unwrap();
            p
        })
        .collect();
    let mut child = Command::new(mapper)
        .arg(count.to_string())
        .args(&files)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready"), "mapper: {line}");
    let proc = ProcKey::of_pid(child.id()).unwrap();
    let mut text = Vec::new();
    probed::resolve::MapsSource::read_maps(&ProcMaps::new(), proc, &mut text).unwrap();
    let snap = Arc::new(Snapshot::parse(0, &text).unwrap());
    let vmas = snap.vmas();
    let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ count as u64;
    let probes: Vec<(FileId, u64, ProbeId)> = (0..PROBES)
        .map(|i| {
            let v = &vmas[xorshift(&mut x) as usize % vmas.len()];
            let addr = v.start + xorshift(&mut x) % (v.end - v.start);
            (v.file, v.file_offset(addr), ProbeId(i as u32))
        })
        .collect();
    let probe_addrs: Vec<u64> = probes
        .iter()
        .map(|&(file, off, _)| {
            let v = vmas
                .iter()
                .find(|v| v.file == file && (v.pgoff..v.pgoff + (v.end - v.start)).contains(&off))
                .unwrap();
            v.start + off - v.pgoff
        })
        .collect();
    let stream = (0..STREAM)
        .map(|_| match xorshift(&mut x) % 10 {
            0..5 => probe_addrs[xorshift(&mut x) as usize % probe_addrs.len()],
            5..9 => {
                let v = &vmas[xorshift(&mut x) as usize % vmas.len()];
                v.start + xorshift(&mut x) % (v.end - v.start)
            }
            _ => 0x1000 + xorshift(&mut x) % 0x10_0000,
        })
        .collect();
    let _ = child.stdin.as_mut().map(|s| s.flush());
    Space {
        vmas: vmas.len(),
        child,
        proc,
        text,
        snap,
        stream,
        probes,
    }
}

/// The limit: no synchronization at all.
struct Unsync {
    vmas: Vec<Vma>,
    probes: FxMap<(FileId, u64), ProbeId>,
}

impl Unsync {
    fn new(s: &Space) -> Self {
        Self {
            vmas: s.snap.vmas().to_vec(),
            probes: s.probes.iter().map(|&(f, o, p)| ((f, o), p)).collect(),
        }
    }

    #[inline]
    fn resolve(&self, addr: u64) -> u64 {
        let i = self.vmas.partition_point(|v| v.end <= addr);
        match self.vmas.get(i).filter(|v| v.start <= addr) {
            Some(v) => {
                let off = v.file_offset(addr);
                off + self
                    .probes
                    .get(&(v.file, off))
                    .map_or(0, |p| u64::from(p.0) + 1)
            }
            None => 0,
        }
    }
}

type Spec = Resolver<Arc<UserSeq>>;

/// A resolver over the space with a hit sequence that stays current (no churn).
fn speculative(s: &Space) -> (Arc<Spec>, Arc<UserSeq>, u64) {
    let seq = Arc::new(UserSeq::with_capacity(16));
    let at = seq.register(s.proc).unwrap();
    let maps = FakeMaps::new();
    maps.set(s.proc, s.text.clone());
    let resolver = Arc::new(Resolver::new(seq.clone(), maps));
    for &(f, o, p) in &s.probes {
        resolver.registry().insert(f, o, p);
    }
    resolver.track(s.proc).unwrap();
    (resolver, seq, at)
}

#[inline]
fn spec_resolve(reader: &mut Reader<Arc<UserSeq>>, proc: ProcKey, addr: u64, at: u64) -> u64 {
    reader.resolve_with(proc, addr, Some(at), |r| match r.outcome {
        Ok(h) => h.file_offset + h.probe.map_or(0, |p| u64::from(p.0) + 1),
        Err(_) => 0,
    })
}

fn criterion_benches(c: &mut Criterion, s: &Space) {
    let unsync = Unsync::new(s);
    let (resolver, _seq, at) = speculative(s);
    let mut reader = Reader::new(&resolver);
    let rw = RwLock::new(Unsync::new(s));
    // The candidates must agree before their speed means anything.
    let want: u64 = s.stream.iter().map(|&a| unsync.resolve(a)).sum();
    let got: u64 = s
        .stream
        .iter()
        .map(|&a| spec_resolve(&mut reader, s.proc, a, at))
        .sum();
    assert_eq!(got, want, "speculative and unsynchronized answers differ");

    let mut g = c.benchmark_group(format!("resolver_{}", s.vmas_label()));
    g.throughput(Throughput::Elements(STREAM as u64));
    g.bench_function("unsync", |b| {
        b.iter(|| {
            s.stream
                .iter()
                .map(|&a| unsync.resolve(black_box(a)))
                .sum::<u64>()
        })
    });
    g.bench_function("speculative", |b| {
        b.iter(|| {
            s.stream
                .iter()
                .map(|&a| spec_resolve(&mut reader, s.proc, black_box(a), at))
                .sum::<u64>()
        })
    });
    // The floor of any seqcount scheme: the same snapshot lookup bracketed by two loads of
    // one bare atomic (no process lookup, no slot, no counters). Reported to show how much
    // of the speculative path's overhead is inherent to validating at all.
    let bare = std::sync::atomic::AtomicU64::new(2);
    let snap = s.snap.clone();
    g.bench_function("bare_seqlock", |b| {
        b.iter(|| {
            s.stream
                .iter()
                .map(|&a| {
                    let st = bare.load(Ordering::Acquire);
                    let r = match snap.lookup(black_box(a)) {
                        Some(v) => {
                            let off = v.file_offset(a);
                            off + unsync
                                .probes
                                .get(&(v.file, off))
                                .map_or(0, |p| u64::from(p.0) + 1)
                        }
                        None => 0,
                    };
                    std::sync::atomic::fence(Ordering::Acquire);
                    if bare.load(Ordering::Relaxed) == st {
                        r
                    } else {
                        0
                    }
                })
                .sum::<u64>()
        })
    });
    g.bench_function("rwlock_1t", |b| {
        b.iter(|| {
            s.stream
                .iter()
                .map(|&a| rw.read().unwrap().resolve(black_box(a)))
                .sum::<u64>()
        })
    });
    g.finish();

    // The slow peers read /proc/PID/maps per call: a short prefix of the same stream.
    const SHORT: usize = 8;
    let short = &s.stream[..SHORT];
    let pid = blazesym::Pid::from(s.proc.pid);
    let mut g = c.benchmark_group(format!("resolver_{}", s.vmas_label()));
    g.throughput(Throughput::Elements(SHORT as u64));
    g.sample_size(10);
    // VMA caching on, build IDs off: blazesym's fastest configuration (one per thread).
    let cached = blazesym::normalize::Normalizer::builder()
        .enable_vma_caching(true)
        .enable_build_ids(false)
        .build();
    let first = cached.normalize_user_addrs(pid, short).unwrap();
    assert_eq!(first.outputs.len(), SHORT);
    g.bench_function("blazesym_cached", |b| {
        b.iter(|| {
            short
                .iter()
                .map(|&a| {
                    let out = cached.normalize_user_addrs(pid, &[black_box(a)]).unwrap();
                    out.outputs[0].0
                })
                .sum::<u64>()
        })
    });
    let default = blazesym::normalize::Normalizer::new();
    g.bench_function("blazesym_default", |b| {
        b.iter(|| {
            short
                .iter()
                .map(|&a| {
                    let out = default.normalize_user_addrs(pid, &[black_box(a)]).unwrap();
                    out.outputs[0].0
                })
                .sum::<u64>()
        })
    });
    g.bench_function("procfs_per_lookup", |b| {
        b.iter(|| {
            short
                .iter()
                .map(|&a| {
                    let maps = procfs::process::Process::new(s.proc.pid as i32)
                        .unwrap()
                        .maps()
                        .unwrap();
                    maps.iter()
                        .find(|m| m.address.0 <= a && a < m.address.1)
                        .map_or(0, |m| a - m.address.0 + m.offset)
                })
                .sum::<u64>()
        })
    });
    g.finish();
}

fn parse_benches(c: &mut Criterion, s: &Space) {
    use procfs::FromBufRead;
    let lines = s.text.iter().filter(|&&b| b == b'\n').count();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(lines as u64));
    g.bench_function(format!("probed_{lines}_lines"), |b| {
        b.iter(|| Snapshot::parse(0, black_box(&s.text)).unwrap().vmas().len())
    });
    g.bench_function(format!("procfs_{lines}_lines"), |b| {
        b.iter(|| {
            procfs::process::MemoryMaps::from_buf_read(black_box(&s.text[..]))
                .unwrap()
                .len()
        })
    });
    g.bench_function(format!("read_proc_maps_{lines}_lines"), |b| {
        let mut buf = Vec::new();
        b.iter(|| {
            probed::resolve::MapsSource::read_maps(&ProcMaps::new(), s.proc, &mut buf).unwrap();
            buf.len()
        })
    });
    g.finish();
}

impl Space {
    fn vmas_label(&self) -> &'static str {
        if self.vmas < 2000 { "650" } else { "7000" }
    }
}

/// Runs `work` on `threads` threads for `window`, all timed over the same window; returns
/// addresses resolved per second (all threads together).
fn throughput<W>(threads: usize, window: Duration, make: impl Fn() -> W + Sync) -> f64
where
    W: FnMut() -> usize,
{
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    let total: usize = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                sc.spawn(|| {
                    let mut work = make();
                    work(); // warm the caches and the reader's snapshot
                    start.wait();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += work();
                    }
                    n
                })
            })
            .collect();
        start.wait();
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / window.as_secs_f64()
}

/// 1- and 2-thread throughput of the speculative, RwLock and unsynchronized candidates.
fn threads_report(s: &Space) -> serde_json::Value {
    let window = Duration::from_millis(700);
    let unsync = Unsync::new(s);
    let (resolver, _seq, at) = speculative(s);
    let rw = RwLock::new(Unsync::new(s));
    let mut out = serde_json::Map::new();
    for threads in [1, 2] {
        let spec = throughput(threads, window, || {
            let mut reader = Reader::new(&resolver);
            move || {
                let sum: u64 = s
                    .stream
                    .iter()
                    .map(|&a| spec_resolve(&mut reader, s.proc, black_box(a), at))
                    .sum();
                black_box(sum);
                s.stream.len()
            }
        });
        let lock = throughput(threads, window, || {
            || {
                let sum: u64 = s
                    .stream
                    .iter()
                    .map(|&a| rw.read().unwrap().resolve(black_box(a)))
                    .sum();
                black_box(sum);
                s.stream.len()
            }
        });
        let limit = throughput(threads, window, || {
            || {
                let sum: u64 = s.stream.iter().map(|&a| unsync.resolve(black_box(a))).sum();
                black_box(sum);
                s.stream.len()
            }
        });
        // ns per address as one thread sees it: threads / aggregate rate.
        let ns = |rate: f64| threads as f64 * 1e9 / rate;
        out.insert(format!("speculative_{threads}t_per_s"), spec.into());
        out.insert(format!("rwlock_{threads}t_per_s"), lock.into());
        out.insert(format!("unsync_{threads}t_per_s"), limit.into());
        out.insert(format!("speculative_{threads}t_ns"), ns(spec).into());
        out.insert(format!("rwlock_{threads}t_ns"), ns(lock).into());
        out.insert(format!("unsync_{threads}t_ns"), ns(limit).into());
    }
    let fast = resolver.counters();
    out.insert(
        "fallbacks_no_churn".into(),
        (fast.fallbacks() - fast.fallback_no_snapshot).into(),
    );
    serde_json::Value::Object(out)
}

/// One reader resolves (stamping each hit with the sequence read just before, as BPF would)
/// while a mutator bumps the sequence `rate` times a second and republishes the snapshot.
fn fallback_report(s: &Space, rate: u32) -> serde_json::Value {
    let seq = Arc::new(UserSeq::with_capacity(16));
    seq.register(s.proc).unwrap();
    let maps = Arc::new(FakeMaps::new());
    maps.set(s.proc, s.text.clone());
    let resolver = Arc::new(Resolver::new(seq.clone(), maps.clone()));
    resolver.track(s.proc).unwrap();
    let window = Duration::from_millis(1000);
    let stop = AtomicBool::new(false);
    let mut reader = Reader::new(&resolver);
    spec_resolve(
        &mut reader,
        s.proc,
        s.stream[0],
        seq.current(s.proc).unwrap(),
    );
    let before = resolver.counters();
    let started = Instant::now();
    let changes = std::thread::scope(|sc| {
        let mutator = sc.spawn(|| {
            let mut n = 0u64;
            if rate == 0 {
                return 0;
            }
            let period = Duration::from_secs(1) / rate;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                next += period;
                change(&seq, &maps, s.proc, s.text.clone()).unwrap();
                let _ = resolver.refresh(s.proc);
                n += 1;
                loop {
                    let now = Instant::now();
                    if now >= next || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if next - now > Duration::from_micros(200) {
                        std::thread::sleep(next - now - Duration::from_micros(100));
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
            n
        });
        while started.elapsed() < window {
            for &a in &s.stream {
                let at = seq.current(s.proc).unwrap();
                black_box(spec_resolve(&mut reader, s.proc, a, at));
            }
        }
        stop.store(true, Ordering::Relaxed);
        mutator.join().unwrap()
    });
    let elapsed = started.elapsed().as_secs_f64();
    drop(reader);
    let after = resolver.counters();
    let total = after.total() - before.total();
    let fallbacks = after.fallbacks() - before.fallbacks();
    serde_json::json!({
        "target_changes_per_s": rate,
        "changes_per_s": changes as f64 / elapsed,
        "resolutions": total,
        "fallbacks": fallbacks,
        "fallback_rate": fallbacks as f64 / total.max(1) as f64,
        "rescans": after.rescans - before.rescans,
    })
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    let spaces = [space(650), space(7000)];
    for s in &spaces {
        criterion_benches(&mut c, s);
    }
    parse_benches(&mut c, &spaces[1]);
    c.final_summary();

    let Some(report) = std::env::var_os("PROBED_BENCH_REPORT") else {
        return;
    };
    let mut out = serde_json::Map::new();
    for s in &spaces {
        let mut r = threads_report(s);
        r["vmas"] = s.vmas.into();
        out.insert(format!("threads_{}", s.vmas_label()), r);
    }
    let fallback: Vec<_> = [0, 1_000, 10_000]
        .into_iter()
        .map(|rate| fallback_report(&spaces[0], rate))
        .collect();
    out.insert("fallback".into(), fallback.into());
    out.insert("stream".into(), STREAM.into());
    std::fs::write(report, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
}
