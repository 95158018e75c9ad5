//! Hit recording: one event per probe hit, or one counted loss when the ring buffer is full.
//! Every firing of a running tracer counts in `hits`; a hit of probed's own processes is
//! counted as `self_excluded` and dropped (self_filter.rs); a probe with a pid-namespace
//! filter or a rate limit then asks limit.rs, and a hit refused there is counted (filtered,
//! rate_limited), not written; a count-only probe's admitted hit is counted (`counted`), not
//! written.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, pt_regs},
    helpers::generated::bpf_get_stack,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    programs::{ProbeContext, RetProbeContext},
};
use probed_common::{
    ARG_REGS, EVENT_HIT, EVENT_STACK_HIT, HitEvent, KIND_ENTRY, KIND_RETURN, MAX_FRAMES,
    MAX_PROBES, PROBE_FLAG_ARG_STRINGS, PROBE_FLAG_ARGS, PROBE_FLAG_COUNT_ONLY, PROBE_FLAG_STACK,
    PROBE_FLAG_STACK_COPY, PROBE_FLAGS_LIMITS, StackHitEvent,
};

use crate::{
    args, kseq, limit,
    maps::{PROBE_FLAGS, PROBE_STATS},
    proc_facts,
    ring::Ring,
    self_filter, stack, track,
};

/// Records a uprobe hit with the first six integer arguments. Returns true if the hit waits
/// in `CAPTURE_SCRATCH` for its capture (`capture::record_pending`), which the entry point
/// runs after this returns: a separate call chain, since the verifier bounds each chain's
/// stack to 512 bytes.
/// `typed`: the program evaluates typed arguments (`probed_entry_typed`). A constant at each
/// call, so the verifier prunes the argument code from the plain programs: on older kernels
/// (Debian's 6.1) it makes the program too complex to verify, and only typed probes need it.
#[inline(always)]
pub fn record_entry(ctx: &ProbeContext, typed: bool) -> bool {
    // SAFETY: the kernel hands a uprobe program a valid pt_regs for its whole run.
    let regs = unsafe { &*ctx.regs };
    record(ctx.as_ptr(), KIND_ENTRY, regs, typed)
}

/// Records a uretprobe hit with the return value and the address returned to (see
/// `record_entry` for the result).
#[inline(always)]
pub fn record_return(ctx: &RetProbeContext, typed: bool) -> bool {
    // SAFETY: as above, for a uretprobe.
    let regs = unsafe { &*ctx.regs };
    record(ctx.as_ptr(), KIND_RETURN, regs, typed)
}

/// Records one hit: entry probes with their six integer arguments, return probes with the
/// return value and the address returned to. Not inlined (see `record_entry`).
#[inline(never)]
fn record(ctx: *mut core::ffi::c_void, kind: u32, regs: &pt_regs, typed: bool) -> bool {
    let (args, retval, ret_addr) = if kind == KIND_ENTRY {
        (
            [regs.rdi, regs.rsi, regs.rdx, regs.rcx, regs.r8, regs.r9],
            0,
            0,
        )
    } else {
        ([0; ARG_REGS], regs.rax, regs.rip)
    };
    // SAFETY: bpf_get_attach_cookie only reads the current program's run context.
    let cookie = unsafe { aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx) };
    let probe_id = cookie as u32;
    if probe_id >= MAX_PROBES {
        return false;
    }
    // A stopping run admits nothing more: the probe is as good as detached (its link may take
    // the kernel tens of milliseconds to close), so the firing is not counted either.
    if self_filter::stopping() {
        return false;
    }
    let Some(stats) = PROBE_STATS.get_ptr_mut(probe_id) else {
        return false;
    };
    // SAFETY: a per-CPU array slot belongs to this CPU while the program runs (preemption is
    // disabled for uprobe programs), so this is the only writer.
    unsafe { (*stats).hits += 1 };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // probed itself (this tracer, or any process running a probed binary): refused before
    // anything else, so that its own work can never make more hits (self_filter.rs).
    // The process's generation (`PROC_GEN`), which its facts are kept for and the record
    // carries.
    let proc_gen = track::generation(tgid);
    let facts = proc_facts::of(tgid, proc_gen);
    if facts.probed != 0 {
        // SAFETY: as above.
        unsafe { (*stats).self_excluded += 1 };
        return false;
    }

    // SAFETY: bpf_ktime_get_ns has no preconditions; aya-ebpf marks every raw helper unsafe.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let flags = PROBE_FLAGS.get(probe_id).copied().unwrap_or(0);
    // Before anything else is done for the hit (tracking the process included): a refused
    // hit costs nothing more.
    if flags & PROBE_FLAGS_LIMITS != 0 && !limit::admit(probe_id, flags, tgid, ts_ns, stats) {
        return false;
    }
    // A count-only probe's admitted hit is this counter and nothing more: no record, no
    // process tracking (`--count-in-bpf`, bpftrace's `count()`).
    if flags & PROBE_FLAG_COUNT_ONLY != 0 {
        // SAFETY: as above (this CPU's slot).
        unsafe { (*stats).counted += 1 };
        return false;
    }
    // For a uprobe the kernel sets ip to the breakpoint address before running the program;
    // for a uretprobe ip is the return address, so take the function's address from
    // bpf_get_func_ip (which reports the probed address for both kinds, kernel >= 6.4).
    // SAFETY: bpf_get_func_ip only reads the current program's run context.
    let ip = unsafe { aya_ebpf::helpers::generated::bpf_get_func_ip(ctx) };
    let ip = if ip != 0 {
        ip
    } else if kind == KIND_RETURN {
        // Before 6.4 bpf_get_func_ip gives uprobe programs 0: ask the kernel's uretprobe
        // bookkeeping instead; without its offsets, the registers' ip (the caller's).
        match crate::kread::uretprobe_func() {
            0 => regs.rip,
            func => func,
        }
    } else {
        regs.rip
    };
    let tid = pid_tgid as u32;
    // Typed arguments (USDT operands, a SPEC's argument list): evaluated from the registers
    // instead of the raw argument registers; their strings go out just before the hit.
    let (args, retval) = if typed
        && flags & PROBE_FLAG_ARGS != 0
        && let Some(specs) = args::specs(probe_id)
    {
        let mut values = [0u64; ARG_REGS];
        args::evaluate(regs, ip, specs, &mut values);
        if flags & PROBE_FLAG_ARG_STRINGS != 0 {
            args::record_strings(probe_id, tid, ts_ns, &values, specs);
        }
        if kind == KIND_ENTRY {
            (values, 0)
        } else {
            ([0; ARG_REGS], values[0])
        }
    } else {
        (args, retval)
    };
    // The pids the process sees itself by, inside its container (see kread::ns_pids).
    let (ns_pid, ns_tid) = crate::kread::ns_pids(tgid, tid, facts.ns_level);
    // A process is tracked from its first hit on (before its sequence is read, so that any
    // change after the hit moves the sequence). The lost-report count is read after the
    // sequence: a hit whose sequence includes a change whose report was lost then also
    // carries the increased count.
    track::track(tgid);
    // Kseq mode stamps the hit with the kernel's own counter of its address space (kseq.rs);
    // if it cannot be read, with an odd value no capture is ever cached at, and the hit
    // captures.
    let kseq_mode = kseq::enabled();
    let k = if kseq_mode {
        kseq::read(facts.mm)
    } else {
        None
    };
    let seq = if kseq_mode {
        k.map_or(1, |k| k.seq)
    } else {
        track::read_seq(tgid)
    };
    let lost_reports = track::lost_reports();
    let with_stack = flags & PROBE_FLAG_STACK != 0;
    // With a stack, an entry probe also records the word at the top of the user stack: at a
    // function's first instruction that is the caller's return address, which the
    // frame-pointer walk misses (the callee has not pushed its frame yet).
    let ret_addr = if with_stack && kind == KIND_ENTRY {
        // SAFETY: bpf_probe_read_user copies 8 bytes from the user stack pointer into a
        // valid local and fails cleanly (returning an error, value 0) if unreadable.
        unsafe { bpf_probe_read_user(regs.rsp as *const u64) }.unwrap_or(0)
    } else {
        ret_addr
    };
    let with_copy = with_stack && flags & PROBE_FLAG_STACK_COPY != 0;
    let hit = HitEvent {
        event: if with_copy {
            probed_common::EVENT_STACK_COPY_HIT
        } else if with_stack {
            EVENT_STACK_HIT
        } else {
            EVENT_HIT
        },
        probe_id,
        kind,
        pid: tgid,
        tid,
        lost_reports,
        ts_ns,
        ip,
        ret_addr,
        seq,
        proc_gen,
        args,
        retval,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ns_pid,
        ns_tid,
    };
    if with_copy {
        // Registers and a stack copy for the daemon's CFI unwinder (stack.rs). Not captured
        // in lock mode: the frames are only known once unwound in the daemon, whose module
        // lookups then go through the picture of the hit's sequence (or fail, counted).
        stack::record(hit, regs, stats, flags);
        return false;
    }
    // Lock mode, and the daemon's picture of this process is not of this sequence; or kseq
    // mode, and no capture of this sequence holds the address (a stack is checked frame by
    // frame there): the hit carries the kernel's mappings of its addresses (capture.rs).
    let needed = if kseq_mode {
        with_stack || k.is_none_or(|k| !kseq::cached(tgid, k, ip))
    } else {
        crate::capture::needed(tgid, seq)
    };
    if needed {
        return crate::capture::park(&hit, k.map_or(0, |k| k.mm));
    }
    let ring = Ring::of(tgid);
    if with_stack {
        let Some((mut entry, wake)) = ring.reserve::<StackHitEvent>() else {
            // SAFETY: as above.
            unsafe { (*stats).lost += 1 };
            return false;
        };
        let e = entry.as_mut_ptr();
        // Written in place: the event (1 KiB of frames) does not fit the BPF stack. The
        // frames are written by bpf_get_stack straight into the ring buffer record.
        // SAFETY: `e` points to a reserved, writable record of StackHitEvent's size.
        unsafe {
            (&raw mut (*e).hit).write(hit);
            (&raw mut (*e)._reserved).write(0);
            let frames = (&raw mut (*e).frames).cast::<core::ffi::c_void>();
            let got = bpf_get_stack(
                ctx,
                frames,
                (MAX_FRAMES * 8) as u32,
                BPF_F_USER_STACK as u64,
            );
            let n = if got > 0 { (got as u64 / 8) as u32 } else { 0 };
            (&raw mut (*e).nframes).write(n);
        }
        entry.submit(wake);
    } else {
        let Some((mut entry, wake)) = ring.reserve::<HitEvent>() else {
            // SAFETY: as above.
            unsafe { (*stats).lost += 1 };
            return false;
        };
        entry.write(hit);
        entry.submit(wake);
    }
    false
}
