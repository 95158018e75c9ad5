//! File offset → symbol, with parsed ELF files cached per (device, inode) and shared across
//! processes and threads.
//!
//! The cache (`cache.rs`) is a `HashMap<FileId, Arc<Slot>>` published through `ArcSwap`: a
//! lookup loads the current map without a lock or a shared write and reads an already loaded
//! [`ElfImage`]; only a miss takes the writer lock, to insert a slot, and the file is then
//! loaded outside that lock (concurrent misses on the same file wait for one load rather
//! than repeat it). An evicted or replaced image is freed when the last reader holding it
//! (a [`Symbolized`], or a lookup in flight) drops it: the counterpart of the kernel's
//! RCU-delayed freeing of backing files.
//!
//! Not-found results are values ([`SymReason`]), and failures are cached too, so a hit in a
//! non-ELF mapping does not reopen the file each time. The rule: failures that are properties
//! of the file's content (not ELF, unsupported, malformed) are cached until the entry is
//! evicted or [`Symbolizer::invalidate`]d; failures of the moment (file unavailable, replaced,
//! changed while read) are retried by the first lookup after [`RETRY_AFTER`].
//!
//! A file with only `.dynsym` whose debug file is on no local path is answered from
//! `.dynsym` and, with debuginfod configured, its debug file is fetched in the background
//! (`fetch.rs`); when it arrives the cached image is replaced by one with the full symbols.
//! A lookup never waits for the network.

mod cache;
mod fetch;
mod shared;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cache::SlotCache;
use fetch::Fetcher;
use shared::{RealFile, SharedImages};

pub use crate::elf::{FileSource, Mapping};
use crate::{
    elf::{BuildId, DebugFetch, ElfError, ElfImage, LocateError, Symbol, debuginfod, open_source},
    file_id::FileId,
};

/// How long a transient failure (file unavailable, replaced, changed while read) is served
/// from the cache before the next lookup tries to load the file again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How many files the cache holds by default before it evicts.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Why a file offset has no symbol. A value, not an error: counted per probe and reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SymReason {
    /// No symbol covers the address (between functions, or a function without a symbol).
    NoSymbol,
    /// The file has no symbol table at all (stripped without `.dynsym`).
    NoSymbols,
    /// The file offset is not in any `PT_LOAD` segment of the file.
    NoSegment,
    /// No route to the file opened (gone, no permission, process exited).
    FileUnavailable,
    /// The file reachable now is not the mapped one (replaced), or it changed while read.
    FileChanged,
    /// The file is not ELF (or not a regular file).
    NotElf,
    /// The file is ELF of a kind probed does not read (32-bit, foreign machine, …).
    UnsupportedElf,
    /// The file's ELF structures are inconsistent.
    MalformedElf,
}

impl SymReason {
    /// A stable short name for counters and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSymbol => "no_symbol",
            Self::NoSymbols => "no_symbols",
            Self::NoSegment => "no_segment",
            Self::FileUnavailable => "file_unavailable",
            Self::FileChanged => "file_changed",
            Self::NotElf => "not_elf",
            Self::UnsupportedElf => "unsupported_elf",
            Self::MalformedElf => "malformed_elf",
        }
    }

    /// True when a later attempt may succeed (see the module docs for the retry rule).
    pub fn is_transient(self) -> bool {
        matches!(self, Self::FileUnavailable | Self::FileChanged)
    }

    fn of_load_error(err: &ElfError) -> Self {
        match err {
            ElfError::NotFound { .. }
            | ElfError::Open { .. }
            | ElfError::NoReadCapability { .. }
            | ElfError::Io { .. } => Self::FileUnavailable,
            ElfError::Changed { .. } => Self::FileChanged,
            ElfError::NotRegularFile { .. } | ElfError::NotElf { .. } => Self::NotElf,
            ElfError::Unsupported { .. } => Self::UnsupportedElf,
            ElfError::Malformed { .. } => Self::MalformedElf,
        }
    }
}

/// A symbolized address, borrowed from the cache; no allocation, no shared write.
#[derive(Clone, Copy, Debug)]
pub struct SymbolizedRef<'a> {
    /// The module's path (the [`FileSource::path`] it was first loaded through).
    pub module: &'a Path,
    /// The symbol; raw name in `symbol.name`, demangled in `symbol.demangled()`.
    pub symbol: &'a Symbol,
    /// Bytes from the symbol's start to the address.
    pub offset: u64,
    /// The module's GNU build-id.
    pub build_id: Option<&'a BuildId>,
}

/// A symbolized address that keeps its module's symbol table alive.
#[derive(Clone, Debug)]
pub struct Symbolized {
    /// The loaded file.
    image: Arc<ElfImage>,
    /// The symbol's index in the file's table.
    index: usize,
    /// Bytes from the symbol's start to the address.
    offset: u64,
}

impl Symbolized {
    /// The module's path (the [`FileSource::path`] it was first loaded through).
    pub fn module(&self) -> &Path {
        self.image.path()
    }

    /// The symbol.
    pub fn symbol(&self) -> &Symbol {
        self.image
            .symbols()
            .get(self.index)
            .expect("index came from this table")
    }

    /// The raw (mangled) name.
    pub fn name(&self) -> &str {
        &self.symbol().name
    }

    /// The demangled name (the raw one for C).
    pub fn demangled(&self) -> &str {
        self.symbol().demangled()
    }

    /// Bytes from the symbol's start to the address.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The symbol's virtual address in the file's layout.
    pub fn symbol_vaddr(&self) -> u64 {
        self.symbol().addr
    }

    /// The borrowed view.
    pub fn as_ref(&self) -> SymbolizedRef<'_> {
        SymbolizedRef {
            module: self.image.path(),
            symbol: self.symbol(),
            offset: self.offset,
            build_id: self.image.build_id(),
        }
    }
}

/// Counters of the cache's slow path (the hit path counts nothing: a shared counter would
/// be the contention this design avoids).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// Attempts to open and parse a file.
    pub loads: u64,
    /// Attempts that failed.
    pub load_failures: u64,
    /// Entries evicted to stay within capacity.
    pub evictions: u64,
    /// Misses answered, without parsing, by the image of the same real file already parsed
    /// under another identity (an image-layer file seen through another container's overlay
    /// mount; see `shared.rs`).
    pub shared: u64,
    /// Debug files downloaded from debuginfod (at attach or in the background).
    pub debuginfod_fetched: u64,
    /// debuginfod requests that ended without a file (no server had it, or failed).
    pub debuginfod_failed: u64,
    /// Cached files whose symbols were completed by a debug file that arrived after they
    /// were loaded (one per (device, inode) entry replaced).
    pub resymbolized: u64,
}

/// The outcome of loading one file.
#[derive(Debug)]
enum Loaded {
    Ready(Arc<ElfImage>),
    Failed {
        reason: SymReason,
        /// When a transient failure may be retried; `None` for permanent ones.
        retry_at: Option<Instant>,
    },
}

/// A cache of parsed ELF symbol tables keyed by (device, inode). `Send + Sync`; share it
/// behind an `Arc`.
#[derive(Debug)]
pub struct Symbolizer {
    /// Loaded files and cached failures (shared with the debuginfod worker, which replaces
    /// images when their debug files arrive).
    cache: Arc<SlotCache<Loaded>>,
    /// Background debuginfod fetches, if debuginfod is configured.
    fetcher: Option<Arc<Fetcher>>,
    /// Entries whose image was replaced by one with a debug file's symbols.
    resymbolized: Arc<AtomicU64>,
    /// How long a transient failure is served from the cache.
    retry_after: Duration,
    /// Attempts to open and parse a file.
    loads: AtomicU64,
    /// Attempts that failed.
    load_failures: AtomicU64,
    /// Images by real file, for overlay files seen under several identities.
    shared: SharedImages,
    /// Misses answered from `shared`.
    shared_hits: AtomicU64,
    /// The cache's capacity (bounds `shared` too).
    capacity: usize,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A cache holding up to [`DEFAULT_CAPACITY`] files.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A cache holding up to `capacity` files (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            cache: Arc::new(SlotCache::new(capacity)),
            fetcher: None,
            resymbolized: Arc::new(AtomicU64::new(0)),
            retry_after: RETRY_AFTER,
            loads: AtomicU64::new(0),
            load_failures: AtomicU64::new(0),
            shared: SharedImages::default(),
            shared_hits: AtomicU64::new(0),
            capacity,
        }
    }

    /// Sets how long a transient failure is served from the cache (default [`RETRY_AFTER`]).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = delay;
        self
    }

    /// Fetches missing debug files through `client` in the background (`None`: never).
    pub fn with_debuginfod(mut self, client: Option<&'static debuginfod::Client>) -> Self {
        self.fetcher = client.map(|c| Arc::new(Fetcher::new(c)));
        self
    }

    /// The symbol at `file_offset` in the file `source` names.
    pub fn symbolize(
        &self,
        source: &FileSource<'_>,
        file_offset: u64,
    ) -> Result<Symbolized, SymReason> {
        let image = self.image(source)?;
        let (index, offset) = locate(&image, file_offset)?;
        Ok(Symbolized {
            image,
            index,
            offset,
        })
    }

    /// Like [`Symbolizer::symbolize`], but hands `f` a view borrowed from the cache: on a
    /// cached file this allocates nothing and writes no shared memory (not even a reference
    /// count), so threads symbolizing in the same module do not contend.
    pub fn symbolize_with<R>(
        &self,
        source: &FileSource<'_>,
        file_offset: u64,
        f: impl FnOnce(Result<SymbolizedRef<'_>, SymReason>) -> R,
    ) -> R {
        let map = self.cache.read();
        if let Some(slot) = map.get(&source.id) {
            slot.touch();
            match slot.state.get() {
                Some(Loaded::Ready(image)) => return f(view(image, file_offset)),
                Some(Loaded::Failed {
                    reason,
                    retry_at: None,
                }) => return f(Err(*reason)),
                Some(Loaded::Failed {
                    reason,
                    retry_at: Some(at),
                }) if Instant::now() < *at => return f(Err(*reason)),
                _ => {}
            }
        }
        drop(map);
        match self.image(source) {
            Ok(image) => f(view(&image, file_offset)),
            Err(reason) => f(Err(reason)),
        }
    }

    /// The parsed file `source` names, loading it on a miss.
    pub fn image(&self, source: &FileSource<'_>) -> Result<Arc<ElfImage>, SymReason> {
        if let Some(slot) = self.cache.read().get(&source.id)
            && let Some(Loaded::Ready(image)) = slot.state.get()
        {
            slot.touch();
            return Ok(image.clone());
        }
        // Two rounds at most: the second after dropping a transient failure that is due.
        let mut last = SymReason::FileUnavailable;
        for _ in 0..2 {
            let slot = self.cache.slot(source.id);
            slot.touch();
            let mut loaded_here = false;
            let state = slot.state.get_or_init(|| {
                loaded_here = true;
                self.load(source)
            });
            match state {
                Loaded::Ready(image) => {
                    // After the slot is filled, so that an arrival finds the image to swap.
                    if loaded_here {
                        self.fetch_debug_file(image);
                    }
                    return Ok(image.clone());
                }
                Loaded::Failed {
                    reason,
                    retry_at: Some(at),
                } if !loaded_here && Instant::now() >= *at => {
                    last = *reason;
                    self.cache.remove(source.id, Some(&slot));
                }
                Loaded::Failed { reason, .. } => return Err(*reason),
            }
        }
        // Only reached if another thread's fresh failure was already due (a zero delay).
        Err(last)
    }

    /// Installs an image already parsed (a container probe's file, read when its SPEC was
    /// checked) for `id`, unless the cache has one: hits of a container that stopped before
    /// its file was first opened from the host — its root gone, its path not on the host —
    /// still find their symbols. Not counted in `loads`.
    pub fn preload(&self, id: FileId, image: Arc<ElfImage>) {
        let slot = self.cache.slot(id);
        let _ = slot.state.set(Loaded::Ready(image));
    }

    /// Starts a background fetch of `image`'s debug file if it lacks one and debuginfod is
    /// configured; on arrival every cache entry holding `image` gets the completed image.
    fn fetch_debug_file(&self, image: &Arc<ElfImage>) {
        let (Some(fetcher), Some(id)) = (&self.fetcher, image.missing_debug_file()) else {
            return;
        };
        let cache = Arc::downgrade(&self.cache);
        let old = Arc::downgrade(image);
        let resymbolized = self.resymbolized.clone();
        fetcher.request(
            id.clone(),
            Box::new(move |path| {
                let (Some(cache), Some(old)) = (cache.upgrade(), old.upgrade()) else {
                    return;
                };
                let Some(new) = old.with_debug_file(path).map(Arc::new) else {
                    return;
                };
                let replaced = cache.replace(
                    |v| matches!(v, Loaded::Ready(i) if Arc::ptr_eq(i, &old)),
                    || Loaded::Ready(new.clone()),
                );
                resymbolized.fetch_add(replaced, Ordering::Relaxed);
                tracing::debug!(file = %old.path().display(), debug_file = %path.display(), replaced, "symbols completed from debuginfod");
            }),
        );
    }

    /// Forgets `id`, e.g. when the resolver learns the file was rewritten in place (same
    /// inode, new content). Readers holding the old image keep it until they drop it.
    pub fn invalidate(&self, id: FileId) {
        self.cache.remove(id, None);
    }

    /// The number of cached files (loaded or failed).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slow-path counters.
    pub fn stats(&self) -> SymbolizerStats {
        SymbolizerStats {
            loads: self.loads.load(Ordering::Relaxed),
            load_failures: self.load_failures.load(Ordering::Relaxed),
            evictions: self.cache.evictions(),
            shared: self.shared_hits.load(Ordering::Relaxed),
            debuginfod_fetched: self.fetcher.as_ref().map_or(0, |f| f.client().counts().0),
            debuginfod_failed: self.fetcher.as_ref().map_or(0, |f| f.client().counts().1),
            resymbolized: self.resymbolized.load(Ordering::Relaxed),
        }
    }

    /// Opens and parses the file; never panics on a bad or changing file.
    fn load(&self, source: &FileSource<'_>) -> Loaded {
        let result = open_source(source)
            .map_err(|err| {
                self.loads.fetch_add(1, Ordering::Relaxed);
                match err {
                    LocateError::Replaced { .. } => (SymReason::FileChanged, err.to_string()),
                    LocateError::Unavailable(ref e) => (SymReason::of_load_error(e), e.to_string()),
                }
            })
            .and_then(|(file, meta, _route)| {
                let real = RealFile::of(&file, &meta);
                if let Some(image) = real.as_ref().and_then(|r| self.shared.get(r)) {
                    self.shared_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(image);
                }
                self.loads.fetch_add(1, Ordering::Relaxed);
                // Never the network here: a miss is on the hit path (see fetch_debug_file).
                let image = ElfImage::from_file(&file, &meta, source.path, DebugFetch::Local)
                    .map(Arc::new)
                    .map_err(|e| (SymReason::of_load_error(&e), e.to_string()))?;
                if let Some(real) = real {
                    self.shared.insert(real, &image, self.capacity);
                }
                Ok(image)
            });
        match result {
            Ok(image) => Loaded::Ready(image),
            Err((reason, message)) => {
                self.load_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(file = %source.id, reason = reason.as_str(), %message, "cannot symbolize file");
                Loaded::Failed {
                    reason,
                    retry_at: reason
                        .is_transient()
                        .then(|| Instant::now() + self.retry_after),
                }
            }
        }
    }
}

/// The index of the symbol at `file_offset` in `image`, and the offset into it.
fn locate(image: &ElfImage, file_offset: u64) -> Result<(usize, u64), SymReason> {
    let vaddr = image
        .file_offset_to_vaddr(file_offset)
        .ok_or(SymReason::NoSegment)?;
    let symbols = image.symbols();
    if symbols.is_empty() {
        return Err(SymReason::NoSymbols);
    }
    let index = symbols.symbolize_index(vaddr).ok_or(SymReason::NoSymbol)?;
    let start = symbols.get(index).map_or(vaddr, |s| s.addr);
    Ok((index, vaddr - start))
}

/// The borrowed answer for `file_offset` in `image`.
fn view(image: &ElfImage, file_offset: u64) -> Result<SymbolizedRef<'_>, SymReason> {
    let (index, offset) = locate(image, file_offset)?;
    Ok(SymbolizedRef {
        module: image.path(),
        symbol: image.symbols().get(index).ok_or(SymReason::NoSymbol)?,
        offset,
        build_id: image.build_id(),
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        path::PathBuf,
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
            std::io::Write::write_all(out, &self.bytes)
                .map_err(debuginfod::TransportError::Write)?;
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
}
