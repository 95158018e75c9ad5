//! A kernel side without BPF, for the daemon core's tests (`core_tests.rs`): probes are
//! "attached" into a log the test reads, links are tokens whose drop is logged, counters are
//! what the test says it wrote into the ring, and the processes that map a probed file are a
//! fake maps text under a userspace sequence — the resolver's syscall seam
//! (`resolve::testing`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use probed_common::ProbeStats;

use crate::{
    attach::{AttachError, TrackerErrors},
    file_id::FileId,
    resolve::{
        ProcKey, Resolver, UserSeq,
        testing::{FakeMaps, change},
    },
    ring_source::ChannelRing,
    service::kernel::{Kernel, ProbeSetup},
};

/// What the fake kernel was asked, for the test to read.
#[derive(Debug, Default)]
pub struct KernelLog {
    /// Probes attached: id → (file offset, watched file).
    pub attached: BTreeMap<u32, (u64, Option<FileId>)>,
    /// Links open (taken links count until dropped).
    pub open_links: usize,
    /// Whether the stop's first step ran.
    pub stopped_admitting: bool,
    /// Hit records "written" per probe (what the test sent into the ring).
    pub written: HashMap<u32, u64>,
    /// Processes tracked through `track_running`.
    pub tracked: Vec<ProcKey>,
}

/// A process the fake kernel knows: it maps `file`, its maps text is `maps`.
pub struct FakeProc {
    /// The process.
    pub key: ProcKey,
    /// The probed file it maps.
    pub file: FileId,
    /// Its /proc/PID/maps text.
    pub maps: Vec<u8>,
}

/// The fake kernel side.
pub struct FakeKernel {
    /// Shared with the test.
    pub log: Arc<Mutex<KernelLog>>,
    seq: Arc<UserSeq>,
    maps: Arc<FakeMaps>,
    procs: Vec<FakeProc>,
    /// Attaching a probe on a symbol's offset equal to this fails as the kernel would.
    refuse_offset: Option<u64>,
    links: HashMap<u32, FakeLink>,
}

impl FakeKernel {
    /// A kernel side whose processes are `procs` (seen through `maps`, sequenced by `seq`).
    pub fn new(
        seq: Arc<UserSeq>,
        maps: Arc<FakeMaps>,
        procs: Vec<FakeProc>,
        refuse_offset: Option<u64>,
    ) -> Self {
        Self {
            log: Arc::default(),
            seq,
            maps,
            procs,
            refuse_offset,
            links: HashMap::new(),
        }
    }
}

/// A probe's link: dropping it closes it.
pub struct FakeLink(Arc<Mutex<KernelLog>>);

impl Drop for FakeLink {
    fn drop(&mut self) {
        self.0.lock().unwrap().open_links -= 1;
    }
}

impl Kernel for FakeKernel {
    type Seq = Arc<UserSeq>;
    type Link = FakeLink;
    type Ring = ChannelRing;

    fn attach_probe(&mut self, setup: &ProbeSetup<'_>) -> Result<(), AttachError> {
        let offset = setup.request.file_offset;
        if self.refuse_offset == Some(offset) {
            return Err(AttachError::Attach {
                kind: "uprobe",
                path: PathBuf::from("fake"),
                file_offset: offset,
                source: Box::new(aya::programs::ProgramError::NotLoaded),
            });
        }
        let mut log = self.log.lock().unwrap();
        log.attached.insert(setup.id, (offset, setup.watch));
        log.open_links += 1;
        if setup.reused {
            log.written.remove(&setup.id);
        }
        drop(log);
        self.links.insert(setup.id, FakeLink(self.log.clone()));
        Ok(())
    }

    fn take_link(&mut self, id: u32) -> Option<FakeLink> {
        let link = self.links.remove(&id)?;
        self.log.lock().unwrap().attached.remove(&id);
        Some(link)
    }

    fn stop_admitting(&mut self) -> Result<(), AttachError> {
        self.log.lock().unwrap().stopped_admitting = true;
        Ok(())
    }

    fn detach_all(&mut self) {
        self.links.clear();
        self.log.lock().unwrap().attached.clear();
    }

    fn stats(&self, id: u32) -> Result<ProbeStats, AttachError> {
        let hits = self.log.lock().unwrap().written.get(&id).copied();
        Ok(ProbeStats {
            hits: hits.unwrap_or(0),
            ..ProbeStats::default()
        })
    }

    fn tracker_errors(&self) -> Result<TrackerErrors, AttachError> {
        Ok(TrackerErrors::new())
    }

    fn track_running(
        &self,
        files: &HashSet<FileId>,
        pid: Option<u32>,
        resolver: &Resolver<Arc<UserSeq>>,
    ) -> usize {
        let mut n = 0;
        for p in &self.procs {
            if !files.contains(&p.file) || pid.is_some_and(|pid| pid != p.key.pid) {
                continue;
            }
            // As BPF would: the process gets a sequence slot and its picture at a sequence.
            if self.seq.register(p.key).is_ok()
                && change(&self.seq, &self.maps, p.key, p.maps.clone()).is_ok()
                && resolver.track(p.key).is_ok()
            {
                self.log.lock().unwrap().tracked.push(p.key);
                n += 1;
            }
        }
        n
    }
}
