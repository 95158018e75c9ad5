//! The change tracker's hooks on the loaded object: which programs attach where for each
//! mode (syscall tracepoints, kprobes, mmap_lock raw tracepoints; sched exec/fork/exit in
//! all), the maps the daemon takes from it, its error counters, and closing its links.

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{KProbe, RawTracePoint, TracePoint},
};
use probed_common::{FileKey, TrackConfig};

use super::{AttachError, Tracer, close_links, map_mut, map_ref, program};
use crate::{
    file_id::FileId,
    track::{BpfSeq, Generations, Tracked, TrackerMode, kprobes, tracepoints},
};

/// Name of the change-sequence array.
const SEQS_MAP: &str = "SEQS";
/// Name of the pid → generation map.
const PROC_GEN_MAP: &str = "PROC_GEN";
/// Name of the tracker mode array (one u32: `TRACK_MODE_*`).
const TRACK_MODE_MAP: &str = "TRACK_MODE";
/// Name of the tracker settings array.
const TRACK_CONFIG_MAP: &str = "TRACK_CONFIG";
/// Name of the set of tracked processes.
const TRACKED_MAP: &str = "TRACKED";
/// Name of the tracker's per-CPU error counters (`probed_common::TRACK_ERR_*`).
const TRACK_ERRORS_MAP: &str = "TRACK_ERRORS";
/// Name of the set of probed files.
const PROBED_FILES_MAP: &str = "PROBED_FILES";
/// Syscall mode's exit program (every sys_exit_* of the tracked syscalls).
const MM_EXIT_PROGRAM: &str = "probed_mm_exit";
/// The sched programs every mode attaches.
const EXEC_PROGRAM: &str = "probed_exec";
const EXIT_PROGRAM: &str = "probed_exit";
const FORK_PROGRAM: &str = "probed_fork";
/// Lock mode's programs and the raw tracepoints they attach to.
const LOCK_PROGRAMS: [(&str, &str); 2] = [
    ("probed_lock_acquired", "mmap_lock_acquire_returned"),
    ("probed_lock_released", "mmap_lock_released"),
];

/// The change tracker's error counters by name (`probed_common::TRACK_ERROR_NAMES`).
pub type TrackerErrors = std::collections::BTreeMap<&'static str, u64>;

impl Tracer {
    /// The change tracker's hooks, and why they were chosen.
    pub fn tracker_mode(&self) -> (TrackerMode, &str) {
        (self.tracker_mode.0, &self.tracker_mode.1)
    }

    /// Loads and attaches the address-space change tracker (ebpf/src/track.rs). It runs for
    /// every process: uprobes may fire in any of them, and a process must be tracked from
    /// before its first hit for that hit's sequence to mean anything.
    /// `kprobe_syscalls`: the syscalls whose functions kprobe mode can hook here
    /// (`kprobes::available`).
    pub(super) fn start_change_tracker(
        &mut self,
        kprobe_syscalls: &[&str],
    ) -> Result<(), AttachError> {
        let config = crate::track::offsets::track_config(tracepoints::exit_group_dead_offset());
        let mut array: Array<&mut MapData, TrackConfig> =
            map_mut(&mut self.ebpf, TRACK_CONFIG_MAP)?;
        array
            .set(0, config, 0)
            .map_err(|e| AttachError::TrackConfig(Box::new(e)))?;

        // Exec, exit (tracepoints) and fork (raw tracepoint) in every mode: none of them puts
        // anyone's syscalls on the slow path.
        let points: Vec<(&'static str, &'static str, String)> = vec![
            (EXEC_PROGRAM, "sched", "sched_process_exec".into()),
            (EXIT_PROGRAM, "sched", "sched_process_exit".into()),
        ];
        for name in [EXEC_PROGRAM, EXIT_PROGRAM] {
            self.load_tracepoint(name)?;
        }
        self.attach_raw(FORK_PROGRAM, "sched_process_fork")?;
        self.attach_tracepoints(points)?;
        match self.tracker_mode.0 {
            TrackerMode::Syscalls => self.attach_syscalls()?,
            TrackerMode::Kprobes => self.attach_kprobes(kprobe_syscalls)?,
            TrackerMode::Lock => self.attach_lock()?,
            // Nothing hooks address-space changes: hits read the kernel's own counter.
            TrackerMode::Kseq => {}
        }
        self.write_tracker_mode()?;
        Ok(())
    }

    /// Tells BPF which mode runs (`TRACK_MODE`): the hit programs capture mappings only in
    /// lock and kseq modes.
    fn write_tracker_mode(&mut self) -> Result<(), AttachError> {
        let mut array: Array<&mut MapData, u32> = map_mut(&mut self.ebpf, TRACK_MODE_MAP)?;
        array
            .set(0, self.tracker_mode.0.bpf_value(), 0)
            .map_err(|e| AttachError::TrackConfig(Box::new(e)))
    }

    /// Syscall mode: the mapping syscalls' enter and exit tracepoints.
    fn attach_syscalls(&mut self) -> Result<(), AttachError> {
        let mut points: Vec<(&'static str, &'static str, String)> = Vec::new();
        for (syscall, enter) in tracepoints::SYSCALLS {
            for (program, prefix) in [(enter, "sys_enter_"), (MM_EXIT_PROGRAM, "sys_exit_")] {
                let name = format!("{prefix}{syscall}");
                if tracepoints::exists("syscalls", &name) {
                    points.push((program, "syscalls", name));
                } else {
                    tracing::debug!(tracepoint = %name, "not in this kernel; skipped");
                }
            }
        }
        let enters = tracepoints::SYSCALLS.iter().map(|(_, program)| *program);
        for name in unique(enters.chain([MM_EXIT_PROGRAM])) {
            self.load_tracepoint(name)?;
        }
        self.attach_tracepoints(points)
    }

    /// Kprobe mode: a kprobe (the entry) and a kretprobe (the exit) on the function of each
    /// mapping syscall in `present`; those configured out of this kernel are skipped.
    fn attach_kprobes(&mut self, present: &[&str]) -> Result<(), AttachError> {
        let enters = kprobes::FUNCTIONS.iter().map(|(_, program, _)| *program);
        for name in unique(enters.chain([kprobes::EXIT_PROGRAM])) {
            let program: &mut KProbe = program(&mut self.ebpf, name)?;
            program.load().map_err(|source| AttachError::ProgramLoad {
                name,
                source: Box::new(source),
            })?;
        }
        for (syscall, enter, _) in kprobes::FUNCTIONS {
            if !present.contains(&syscall) {
                tracing::debug!(syscall, "no kernel function for it; skipped");
                continue;
            }
            let function = kprobes::function(syscall);
            // The exit first: an entry whose exit is not attached yet would leave a change
            // open until the thread's next entry.
            for name in [kprobes::EXIT_PROGRAM, enter] {
                let program: &mut KProbe = program(&mut self.ebpf, name)?;
                let link = program
                    .attach(&function, 0)
                    .map_err(|source| AttachError::Kprobe {
                        function: function.clone(),
                        source: Box::new(source),
                    })?;
                self.kprobe_links.push((name, link));
            }
        }
        Ok(())
    }

    /// Lock mode: the mmap_lock raw tracepoints.
    fn attach_lock(&mut self) -> Result<(), AttachError> {
        for (program, point) in LOCK_PROGRAMS {
            self.attach_raw(program, point)?;
        }
        Ok(())
    }

    fn load_tracepoint(&mut self, name: &'static str) -> Result<(), AttachError> {
        self.tracepoint(name)?
            .load()
            .map_err(|source| AttachError::ProgramLoad {
                name,
                source: Box::new(source),
            })
    }

    fn attach_tracepoints(
        &mut self,
        points: Vec<(&'static str, &'static str, String)>,
    ) -> Result<(), AttachError> {
        for (program, category, name) in points {
            let link = self
                .tracepoint(program)?
                .attach(category, &name)
                .map_err(|source| AttachError::Tracepoint {
                    category,
                    name: name.clone(),
                    source: Box::new(source),
                })?;
            self.tracker_links.push((program, link));
        }
        Ok(())
    }

    /// Loads `program` (a raw tracepoint program) and attaches it to `point`.
    fn attach_raw(
        &mut self,
        program: &'static str,
        point: &'static str,
    ) -> Result<(), AttachError> {
        let raw: &mut RawTracePoint = self::program(&mut self.ebpf, program)?;
        raw.load().map_err(|source| AttachError::ProgramLoad {
            name: program,
            source: Box::new(source),
        })?;
        let link = raw
            .attach(point)
            .map_err(|source| AttachError::Tracepoint {
                category: "raw",
                name: point.into(),
                source: Box::new(source),
            })?;
        self.raw_links.push((program, link));
        Ok(())
    }

    fn tracepoint(&mut self, name: &'static str) -> Result<&mut TracePoint, AttachError> {
        program(&mut self.ebpf, name)
    }

    /// Tells the change tracker which files are probed: a process that execs one, or maps
    /// one executable, is tracked from then on.
    pub fn watch_files(
        &mut self,
        files: impl IntoIterator<Item = FileId>,
    ) -> Result<(), AttachError> {
        let mut set: aya::maps::HashMap<&mut MapData, FileKey, u32> =
            map_mut(&mut self.ebpf, PROBED_FILES_MAP)?;
        for file in files {
            // The kernel's dev_t encoding (major << 20 | minor), as BPF reads it from s_dev.
            let key = FileKey {
                dev: file.kernel_dev(),
                ino: file.ino,
            };
            set.insert(key, 1, 0)
                .map_err(|e| AttachError::TrackConfig(Box::new(e)))?;
        }
        Ok(())
    }

    /// Takes the change tracker's sequence array (mapped into memory), generation map and
    /// set of tracked processes.
    pub fn take_tracker(&mut self) -> Result<(BpfSeq, Generations, Tracked), AttachError> {
        let seqs = match self.ebpf.take_map(SEQS_MAP) {
            Some(aya::maps::Map::Array(data)) => data,
            _ => return Err(AttachError::Map(SEQS_MAP)),
        };
        let gens = self
            .ebpf
            .take_map(PROC_GEN_MAP)
            .ok_or(AttachError::Map(PROC_GEN_MAP))?;
        let tracked = self
            .ebpf
            .take_map(TRACKED_MAP)
            .ok_or(AttachError::Map(TRACKED_MAP))?;
        Ok((
            BpfSeq::new(seqs)?,
            Generations::new(gens).map_err(|_| AttachError::Map(PROC_GEN_MAP))?,
            Tracked::new(tracked).map_err(|_| AttachError::Map(TRACKED_MAP))?,
        ))
    }

    /// Starts closing the change tracker's links (~20 tracepoints and the fork raw
    /// tracepoint) on another thread and returns it; join it before exiting. A stop does this
    /// while it drains: each close waits for the kernel (RCU grace periods: ~1 s in all under
    /// load, measured), and the reports the queued hits need are already in the ring.
    pub fn close_tracker_in_background(&mut self) -> std::thread::JoinHandle<()> {
        let links = self.take_tracker_links();
        std::thread::spawn(move || close_links(links))
    }

    /// Takes the change tracker's links (tracepoints, raw tracepoints, kprobes) out of the
    /// tracer: dropping them detaches the tracker.
    pub(super) fn take_tracker_links(&mut self) -> Vec<Box<dyn Send>> {
        let mut links: Vec<Box<dyn Send>> = Vec::new();
        for (program, link) in std::mem::take(&mut self.tracker_links) {
            if let Ok(tp) = self.tracepoint(program)
                && let Ok(link) = tp.take_link(link)
            {
                links.push(Box::new(link));
            }
        }
        for (program, link) in std::mem::take(&mut self.kprobe_links) {
            if let Ok(kprobe) = self::program::<KProbe>(&mut self.ebpf, program)
                && let Ok(link) = kprobe.take_link(link)
            {
                links.push(Box::new(link));
            }
        }
        for (program, link) in std::mem::take(&mut self.raw_links) {
            if let Some(Ok(raw)) = self
                .ebpf
                .program_mut(program)
                .map(<&mut RawTracePoint>::try_from)
                && let Ok(link) = raw.take_link(link)
            {
                links.push(Box::new(link));
            }
        }
        links
    }

    /// The change tracker's error counters (`probed_common::TRACK_ERROR_NAMES`), summed over
    /// CPUs: each is a case where the tracker fell back to rescans instead of replaying.
    pub fn tracker_errors(&self) -> Result<TrackerErrors, AttachError> {
        let array: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, TRACK_ERRORS_MAP)?;
        let mut out = TrackerErrors::new();
        for (index, name) in (0u32..).zip(probed_common::TRACK_ERROR_NAMES) {
            let values = array
                .get(&index, 0)
                .map_err(|e| AttachError::Stats(Box::new(e)))?;
            out.insert(name, values.iter().sum());
        }
        Ok(out)
    }
}

/// `names` once each, in first-seen order (several syscalls share an entry program, which
/// is loaded once).
fn unique(names: impl Iterator<Item = &'static str>) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}
