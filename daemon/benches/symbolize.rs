//! Symbolizer benchmarks: loading ELF files, the cached hit path on one and two threads
//! (borrowed vs owned results), and demangling on first use vs cached.
//!
//! Inputs are files every machine of this kind has: glibc (a stripped `.dynsym` library),
//! libstdc++ (C++ names) and this bench binary itself (a large `.symtab` of Rust names).

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use probed::{
    elf::{ElfImage, Symbol},
    file_id::FileId,
    symbolize::{FileSource, Symbolizer},
};

/// Every benchmarked offset is the middle of a sized function, so it must symbolize.
const IN_FUNCTION: &str = "offset inside a function symbolizes";

/// Files to load, those that exist here.
fn inputs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect();
    files.push(std::env::current_exe().expect("bench binary path"));
    files
}

/// File offsets in the middle of every sized function of `image`, shuffled so lookups do not
/// walk the table in order.
fn offsets(image: &ElfImage) -> Vec<u64> {
    let mut offs: Vec<u64> = image
        .symbols()
        .iter()
        .filter(|s| s.kind.is_code() && s.size > 0)
        .filter_map(|s| image.vaddr_to_file_offset(s.addr + s.size / 2))
        .collect();
    // A fixed multiplicative shuffle: deterministic, no rand dependency.
    let n = offs.len();
    for i in 0..n {
        offs.swap(i, (i.wrapping_mul(2_654_435_761)) % n);
    }
    offs
}

fn short_name(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    if name.starts_with("symbolize-") {
        "bench_exe".into()
    } else {
        name.into_owned()
    }
}

fn load(c: &mut Criterion) {
    let mut group = c.benchmark_group("symbolize/load");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for path in inputs() {
        let syms = ElfImage::open(&path).unwrap().symbols().len();
        group.bench_function(format!("{} ({syms} symbols)", short_name(&path)), |b| {
            b.iter(|| ElfImage::open(black_box(&path)).unwrap())
        });
    }
    group.finish();
}

fn hits(c: &mut Criterion) {
    let path = PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6");
    let path = if path.exists() {
        path
    } else {
        std::env::current_exe().unwrap()
    };
    let id = FileId::of_path(&path).unwrap();
    let offs = offsets(&ElfImage::open(&path).unwrap());
    let sym = Symbolizer::new();
    let src = FileSource::path(id, &path);
    sym.symbolize(&src, offs[0]).unwrap();

    let image = sym.image(&src).unwrap();

    // Each lookup kind, on one thread and on two threads at once. For two threads the time
    // reported is per pair of concurrent lookups, so perfect scaling shows the one-thread
    // figure. `table` is the bare binary search on a shared image: the limit, and the control
    // for how much the machine itself scales.
    let lookups: [(&str, &(dyn Fn(u64) -> u64 + Sync)); 3] = [
        ("table", &|off| {
            let vaddr = image.file_offset_to_vaddr(off).expect(IN_FUNCTION);
            image.symbolize(vaddr).expect(IN_FUNCTION).1
        }),
        ("borrowed", &|off| {
            sym.symbolize_with(&src, off, |r| r.expect(IN_FUNCTION).offset)
        }),
        ("owned", &|off| {
            sym.symbolize(&src, off).expect(IN_FUNCTION).offset()
        }),
    ];
    let mut group = c.benchmark_group("symbolize/hit");
    for (name, lookup) in lookups {
        let mut i = 0;
        group.bench_function(format!("{name}_1t"), |b| {
            b.iter(|| {
                i = (i + 1) % offs.len();
                black_box(lookup(offs[i]))
            })
        });
        group.bench_function(format!("{name}_2t"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for t in 0..2 {
                        let offs = &offs;
                        s.spawn(move || {
                            for k in 0..iters as usize {
                                black_box(lookup(offs[(k * 2 + t) % offs.len()]));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    group.finish();
}

fn demangle(c: &mut Criterion) {
    let exe = ElfImage::open(&std::env::current_exe().unwrap()).unwrap();
    let names: Vec<Box<str>> = exe
        .symbols()
        .iter()
        .filter(|s| s.name.starts_with("_ZN") || s.name.starts_with("_R"))
        .map(|s| s.name.clone())
        .take(4096)
        .collect();
    let fresh = |n: &str| {
        Symbol::new(
            n,
            1,
            1,
            probed::elf::SymbolKind::Function,
            probed::elf::SymbolBinding::Global,
        )
    };
    let cached: Vec<Symbol> = names.iter().map(|n| fresh(n)).collect();
    for s in &cached {
        black_box(s.demangled());
    }
    let mut group = c.benchmark_group("symbolize/demangle");
    let mut i = 0;
    group.bench_function("first_use", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % names.len();
                fresh(&names[i])
            },
            |s| black_box(s.demangled().len()),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("cached", |b| {
        b.iter(|| {
            i = (i + 1) % cached.len();
            black_box(cached[i].demangled().len())
        })
    });
    group.finish();
}

criterion_group!(benches, load, hits, demangle);
criterion_main!(benches);
