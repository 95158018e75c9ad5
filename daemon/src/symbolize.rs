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
//!
//! What a lookup answers (the symbol and offset, or why not) is `answer.rs`.

mod answer;
mod cache;
mod fetch;
mod shared;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use answer::{SymReason, Symbolized, SymbolizedRef};
use answer::{locate, view};
use cache::SlotCache;
use fetch::Fetcher;
use shared::{RealFile, SharedImages};

pub use crate::elf::{FileSource, Mapping};
use crate::{
    elf::{DebugFetch, ElfImage, LocateError, debuginfod, open_source},
    file_id::FileId,
};

/// How long a transient failure (file unavailable, replaced, changed while read) is served
/// from the cache before the next lookup tries to load the file again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How many files the cache holds by default before it evicts.
pub const DEFAULT_CAPACITY: usize = 4096;

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

#[cfg(test)]
#[path = "symbolize_tests.rs"]
mod tests;
