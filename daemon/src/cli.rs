//! Command-line argument types shared by the binary and tests, and error formatting.

use std::{num::NonZeroU32, path::PathBuf};

use clap::Args;

use crate::{attach::RateLimit, output::Format};

/// `probed trace SPEC... [--pid PID] [--container PID] [--rate-limit N [--burst N]]
/// [--format text|json] [--duration SECS] [--count N]`.
#[derive(Args, Clone, Debug)]
#[command(group(
    clap::ArgGroup::new("aggregating")
        .multiple(true)
        .args(["aggregate", "latency"])
))]
pub struct TraceArgs {
    /// Probes: uprobe:/path:symbol, uretprobe:/path:symbol, uprobe:/path:symbol+16,
    /// uprobe:/path:0x1a2b (file offset), uprobe:libc:malloc (library name),
    /// uprobe:/path:read* (wildcard), usdt:/path:provider:name (wildcards too), each
    /// optionally typed: uprobe:/path:f(str,i32), uretprobe:/path:f(ret:str).
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<String>,
    /// Trace only this process (its threads included).
    #[arg(long, value_name = "PID")]
    pub pid: Option<NonZeroU32>,
    /// Trace only processes in the pid namespace (container) of process PID. Hits from
    /// other processes are dropped in BPF and counted as `filtered` in the summary.
    #[arg(long, value_name = "PID")]
    pub container: Option<NonZeroU32>,
    /// Record at most N hits per second per probe (a token bucket enforced in BPF, shared by
    /// all CPUs). Hits over the limit are dropped and counted as `rate_limited`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_limit: Option<u64>,
    /// With --rate-limit: hits a probe may record at once after a quiet period (the bucket
    /// size). Default: the rate, i.e. one second's worth.
    #[arg(long, value_name = "N", requires = "rate_limit", value_parser = clap::value_parser!(u64).range(1..))]
    pub burst: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Stop after this many hits have been printed (or, when hits are not printed, taken
    /// into the aggregations).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// At the end (--duration, --count, SIGINT, SIGTERM), process the hits already in the
    /// ring buffer for at most this long; what is left then is counted as dropped_at_stop.
    /// A second SIGINT or SIGTERM ends the run at once.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs)]
    pub drain_timeout: f64,
    /// Capture the user stack with every hit (up to 127 frames), each frame resolved to
    /// module, symbol and offset. `auto` (the default): BPF copies 16 KiB of the stack (see
    /// --stack-copy-kib) and probed unwinds it with each module's .eh_frame, by frame
    /// pointer where a module has none; `dwarf`: .eh_frame only; `fp`: the kernel's
    /// frame-pointer walk (no copy).
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "auto"
    )]
    pub stack: Option<crate::unwind::StackMode>,
    /// How much of the user stack BPF copies per hit for --stack=auto|dwarf, in KiB: 4, 8,
    /// 16, 32 or 64. A stack deeper than the copy ends with the stop reason
    /// `stack_copy_end`; a larger copy costs each hit more and gets a larger ring buffer
    /// (32 MiB up to 16 KiB, 64 MiB for 32, 128 MiB for 64).
    #[arg(long, value_name = "KIB", default_value = "16", value_parser = parse_copy_kib)]
    pub stack_copy_kib: usize,
    /// Write output to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Count hits per distinct user stack and print them as folded stacks
    /// (`outer;…;inner count`) at the end; implies --stack. Hits are then not printed one
    /// by one (see --print-hits).
    #[arg(long, value_enum, value_name = "KEY")]
    pub aggregate: Option<Aggregate>,
    /// Draw the hits' user stacks as a flame graph SVG into this file at the end; implies
    /// --stack.
    #[arg(long, value_name = "FILE.svg")]
    pub flamegraph: Option<PathBuf>,
    /// Pair each function's entry and return hits per thread and print a latency histogram
    /// (count, min, p50, p99, max) at the end. Hits are then not printed one by one (see
    /// --print-hits).
    #[arg(long)]
    pub latency: bool,
    /// Also print the aggregations (--aggregate, --latency) every SECS seconds.
    #[arg(long, value_name = "SECS", requires = "aggregating", value_parser = positive_secs)]
    pub interval: Option<f64>,
    /// Print every hit even with --aggregate or --latency.
    #[arg(long)]
    pub print_hits: bool,
    /// How address-space changes are learned: `lock` (mmap_lock tracepoints; leaves other
    /// processes' syscalls alone; Linux 6.14+), `syscalls` (syscall tracepoints; slows every
    /// syscall on the host), `auto` (`lock` where the kernel allows it, else `syscalls`).
    #[arg(long, value_enum, default_value = "auto", env = "PROBED_TRACKER")]
    pub tracker: crate::track::TrackerChoice,
    /// Count each probe's hits in BPF and write nothing per hit (bpftrace's `count()`): the
    /// summary's `counted_in_bpf` per probe, at the least cost per hit; no process is
    /// tracked for it.
    #[arg(
        long,
        conflicts_with_all = ["stack", "aggregate", "latency", "flamegraph", "print_hits", "record", "count", "interval"]
    )]
    pub count_in_bpf: bool,
    /// Consumer threads (1–64; default 1, or `PROBED_CONSUMERS` in runs without --count,
    /// --interval or --record). With more than one, the ring's items are dealt by process to
    /// N threads, each resolving, symbolizing and writing its processes' hits: a thread's
    /// hits stay in hit order, lines of different processes interleave, and the text header
    /// is written at the start. For hosts where one core cannot keep up.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u8).range(1..=64),
        conflicts_with_all = ["count", "interval", "record"]
    )]
    pub consumers: Option<u8>,
    /// Also record what the run consumed into FILE (the ring buffer's records, the /proc and
    /// sequence reads behind each answer), for `probed replay FILE` on this machine.
    #[arg(long, value_name = "FILE", conflicts_with = "container")]
    pub record: Option<PathBuf>,
}

/// `probed replay FILE [--format text|json] [--output FILE] [--aggregate stack]
/// [--latency] [--print-hits] [--summary-only] [--measure]`.
#[derive(Args, Clone, Debug)]
#[command(group(
    clap::ArgGroup::new("aggregating")
        .multiple(true)
        .args(["aggregate", "latency"])
))]
pub struct ReplayArgs {
    /// A recording written by `probed trace --record FILE` on this machine (the probed
    /// files are read again from their paths and must be the ones recorded).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Write output to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Count hits per distinct user stack (the recording must have stacks).
    #[arg(long, value_enum, value_name = "KEY")]
    pub aggregate: Option<Aggregate>,
    /// Pair entries and returns per thread into a latency histogram.
    #[arg(long)]
    pub latency: bool,
    /// Print every hit even with --aggregate or --latency.
    #[arg(long)]
    pub print_hits: bool,
    /// Print no hit, only the summary's counts.
    #[arg(long, conflicts_with_all = ["print_hits", "aggregating"])]
    pub summary_only: bool,
    /// Consumer threads (1–64), as `probed trace --consumers`.
    #[arg(
        long,
        value_name = "N",
        default_value = "1",
        value_parser = clap::value_parser!(u8).range(1..=64)
    )]
    pub consumers: u8,
    /// Print one JSON line on stderr at the end: events replayed, the CPU and wall seconds
    /// they took, events per CPU second, and how many seam reads diverged from the run's.
    #[arg(long)]
    pub measure: bool,
}

/// What `--aggregate` counts hits by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Aggregate {
    /// The user stack (folded stacks).
    Stack,
}

/// A stack copy's size in KiB: one of the sizes BPF has a path for.
pub fn parse_copy_kib(text: &str) -> Result<usize, String> {
    let kib = text.parse().map_err(|_| not_a_copy_size(text))?;
    copy_kib_pages(kib).map(|_| kib)
}

/// The pages of a stack copy of `kib` KiB, or why BPF has no path for that size (the one
/// check behind `--stack-copy-kib`, `ctl add --stack-copy-kib` and `stack_copy_kib`).
pub fn copy_kib_pages(kib: usize) -> Result<usize, String> {
    let page_kib = probed_common::STACK_PAGE / 1024;
    let pages = kib / page_kib;
    if kib.is_multiple_of(page_kib) && probed_common::STACK_COPY_PAGE_CHOICES.contains(&pages) {
        Ok(pages)
    } else {
        Err(not_a_copy_size(kib))
    }
}

fn not_a_copy_size(what: impl std::fmt::Display) -> String {
    let page_kib = probed_common::STACK_PAGE / 1024;
    let choices = probed_common::STACK_COPY_PAGE_CHOICES.map(|pages| pages * page_kib);
    format!("`{what}` is not a stack copy size in KiB (one of {choices:?})")
}

/// A number of seconds: finite and not negative.
fn parse_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "`{text}` is not a number of seconds (a finite number ≥ 0)"
        )),
    }
}

impl TraceArgs {
    /// How long a stop processes what is left in the ring buffer.
    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.drain_timeout)
    }

    /// Whether probes capture stacks: `--stack`, or an aggregation that needs them.
    pub fn captures_stacks(&self) -> bool {
        self.stack.is_some()
            || self.aggregate == Some(Aggregate::Stack)
            || self.flamegraph.is_some()
    }

    /// How stacks are walked (`--stack=MODE`; `auto` when an aggregation asks for stacks).
    pub fn stack_mode(&self) -> crate::unwind::StackMode {
        self.stack.unwrap_or_default()
    }

    /// The pages of each stack copy, 0 when the run copies no stacks.
    pub fn copy_pages(&self) -> usize {
        if self.captures_stacks() && self.stack_mode().copies_stack() {
            // Checked by the parser.
            copy_kib_pages(self.stack_copy_kib).unwrap_or(probed_common::STACK_COPY_DEFAULT_PAGES)
        } else {
            0
        }
    }

    /// The per-probe rate limit asked for (`--rate-limit`, `--burst`).
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rate_limit.map(|per_sec| RateLimit {
            per_sec,
            burst: self.burst.unwrap_or(per_sec),
        })
    }

    /// The consumer threads of the run: `--consumers`, else `PROBED_CONSUMERS` where the
    /// run allows several, else 1.
    pub fn consumers(&self) -> Result<usize, String> {
        if let Some(n) = self.consumers {
            return Ok(n.into());
        }
        if self.count.is_some() || self.interval.is_some() || self.record.is_some() {
            return Ok(1);
        }
        match std::env::var("PROBED_CONSUMERS") {
            Err(_) => Ok(1),
            Ok(text) => match text.parse::<usize>() {
                Ok(n @ 1..=64) => Ok(n),
                _ => Err(format!(
                    "PROBED_CONSUMERS={text}: not a number of consumer threads (1–64)"
                )),
            },
        }
    }

    /// Whether every hit is printed: unless aggregations take the output (--aggregate,
    /// --latency; a flame graph goes to its own file), and then only with --print-hits.
    pub fn prints_hits(&self) -> bool {
        self.print_hits || (self.aggregate.is_none() && !self.latency)
    }
}

/// A strictly positive, finite number of seconds.
fn positive_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(secs),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

/// An error and its causes on one line: `outer: cause: root cause`.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        // Wrappers often repeat their source's text; say each thing once.
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: TraceArgs,
    }

    /// Copy sizes: the five BPF has paths for, in pages; anything else refused by one check.
    #[test]
    fn copy_sizes() {
        let pages: Vec<_> = [4, 8, 16, 32, 64].map(copy_kib_pages).into_iter().collect();
        assert_eq!(pages, [Ok(1), Ok(2), Ok(4), Ok(8), Ok(16)]);
        for bad in [0, 2, 6, 12, 128] {
            assert!(copy_kib_pages(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_copy_kib("32"), Ok(32));
        assert_eq!(
            parse_copy_kib("x"),
            Err("`x` is not a stack copy size in KiB (one of [4, 8, 16, 32, 64])".to_owned())
        );
        assert_eq!(parse_copy_kib("12"), Err(copy_kib_pages(12).unwrap_err()));
    }

    fn parse(args: &[&str]) -> Result<TraceArgs, clap::Error> {
        Cmd::try_parse_from(["trace", "u:/bin/x:f"].iter().chain(args)).map(|c| c.args)
    }

    /// Stack aggregations imply stack capture; aggregations that take the output silence
    /// per-hit lines unless --print-hits; a flame graph alone does not.
    #[test]
    fn aggregation_flags() {
        let a = parse(&["--aggregate", "stack"]).unwrap();
        assert!(a.captures_stacks() && !a.prints_hits());
        let a = parse(&["--flamegraph", "/tmp/x.svg"]).unwrap();
        assert!(a.captures_stacks() && a.prints_hits());
        let a = parse(&["--latency"]).unwrap();
        assert!(!a.captures_stacks() && !a.prints_hits());
        let a = parse(&["--latency", "--print-hits", "--interval", "0.5"]).unwrap();
        assert!(a.prints_hits());
        assert_eq!(a.interval, Some(0.5));
        assert!(!parse(&[]).unwrap().captures_stacks());
    }

    /// --interval needs an aggregation to print and a positive number of seconds.
    #[test]
    fn interval_checks() {
        assert!(parse(&["--interval", "1"]).is_err());
        assert!(parse(&["--flamegraph", "x.svg", "--interval", "1"]).is_err());
        assert!(parse(&["--latency", "--interval", "0"]).is_err());
        assert!(parse(&["--latency", "--interval", "-1"]).is_err());
        assert!(parse(&["--aggregate", "stack", "--interval", "2"]).is_ok());
    }

    /// --burst needs --rate-limit and defaults to the rate; both must be at least 1.
    #[test]
    fn rate_limit_flags() {
        assert_eq!(parse(&[]).unwrap().rate_limit(), None);
        let a = parse(&["--rate-limit", "100"]).unwrap();
        assert_eq!(
            a.rate_limit(),
            Some(RateLimit {
                per_sec: 100,
                burst: 100
            })
        );
        let a = parse(&["--rate-limit", "100", "--burst", "7"]).unwrap();
        assert_eq!(a.rate_limit().map(|l| l.burst), Some(7));
        assert!(parse(&["--burst", "7"]).is_err());
        assert!(parse(&["--rate-limit", "0"]).is_err());
        assert!(parse(&["--rate-limit", "10", "--burst", "0"]).is_err());
        assert!(parse(&["--container", "0"]).is_err());
        assert_eq!(
            parse(&["--container", "42"])
                .unwrap()
                .container
                .map(|p| p.get()),
            Some(42)
        );
    }

    /// Causes are joined on one line, and a cause already contained in its wrapper is not
    /// repeated.
    #[test]
    fn one_line_chain() {
        let err = anyhow::anyhow!("root\ncause")
            .context("middle")
            .context("outer");
        assert_eq!(one_line(&err), "outer: middle: root cause");
        let dup = anyhow::anyhow!("same").context("same");
        assert_eq!(one_line(&dup), "same");
    }
}
