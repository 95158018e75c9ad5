//! The resolver against real processes: a C target (tests/fixtures/resolver_target.c) dlopens
//! and dlcloses libraries, maps and unmaps an executable file mapping, ends its main thread,
//! and reports after each step where its functions are and which bytes they start with. The
//! resolver, reading the target's real /proc maps, must agree: same file (device, inode), and
//! the file holds those bytes at the file offset it computed. Needs no root.
//!
//! No BPF change tracker exists yet, so the test plays its part: every command that changes
//! the target's mappings is bracketed by a change of the target's sequence in a [`UserSeq`].

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    os::unix::{ffi::OsStrExt, fs::FileExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::Arc,
};

use probed::{
    file_id::FileId,
    fixtures,
    resolve::{Normalized, ProcKey, ProcMaps, Reader, Reason, Resolver, UserSeq, Via},
};

struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    proc: ProcKey,
    exe: PathBuf,
}

impl Target {
    fn spawn() -> Self {
        let exe = target_exe();
        let mut child = Command::new(&exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        let proc = ProcKey::of_pid(child.id()).unwrap();
        Self {
            child,
            stdin,
            stdout,
            proc,
            exe,
        }
    }

    /// Sends one command inside a change of the target's sequence; returns its report lines.
    fn step(&mut self, seq: &UserSeq, cmd: &str) -> Vec<String> {
        let _change = seq.change(self.proc).unwrap();
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(self.stdout.read_line(&mut line).unwrap() > 0, "target died");
            let line = line.trim_end().to_owned();
            assert!(!line.starts_with("error"), "{cmd}: {line}");
            if line == "done" {
                return lines;
            }
            lines.push(line);
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses "fn ADDR BYTES" / "gone ADDR" / "map ADDR DEV INO BYTES".
fn fields(line: &str, tag: &str) -> Vec<String> {
    let mut it = line.split(' ');
    assert_eq!(it.next(), Some(tag), "{line}");
    it.map(str::to_owned).collect()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The bytes the resolved file holds at the resolved offset (through map_files for a
/// deleted file, as the symbolizer would).
fn file_bytes(pid: u32, n: &Normalized, len: usize) -> Vec<u8> {
    let path = if n.deleted {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            n.vma_start, n.vma_end
        ))
    } else {
        n.path.to_path_buf()
    };
    let mut buf = vec![0; len];
    File::open(&path)
        .unwrap()
        .read_exact_at(&mut buf, n.file_offset)
        .unwrap();
    buf
}

/// Resolves a reported function and checks the resolver's file and offset against the
/// target's own view (the code bytes at that address); returns the answer.
fn check_fn(reader: &mut Reader<Arc<UserSeq>>, t: &Target, line: &str) -> Normalized {
    let f = fields(line, "fn");
    let (addr, want) = (hex(&f[0]), unhex(&f[1]));
    let r = reader.resolve(t.proc, addr, None);
    let n = r.outcome.unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(
        file_bytes(t.proc.pid, &n, want.len()),
        want,
        "{line}: {n:?}"
    );
    if !n.deleted {
        assert_eq!(FileId::of_path(&n.path).unwrap(), n.file, "{n:?}");
    }
    n
}

type Setup = (
    Arc<UserSeq>,
    Arc<Resolver<Arc<UserSeq>>>,
    Reader<Arc<UserSeq>>,
);

fn setup(t: &Target) -> Setup {
    let seq = Arc::new(UserSeq::with_capacity(16));
    seq.register(t.proc).unwrap();
    let resolver = Arc::new(Resolver::new(seq.clone(), ProcMaps::new()));
    resolver.track(t.proc).unwrap();
    let reader = Reader::new(&resolver);
    (seq, resolver, reader)
}

/// The two libraries and the target, built once per test process: two tests building the
/// same fixture at once would each rename their output into place, and the loser's already
/// mapped file would turn into a deleted one under its target.
fn libs() -> (PathBuf, PathBuf) {
    static BUILT: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let flags = ["-shared", "-fPIC", "-O1"];
            let a = fixtures::build("resolver_lib_a.c", "libresolver_a.so", &flags);
            let b = fixtures::build("resolver_lib_b.c", "libresolver_b.so", &flags);
            target_exe();
            (a.unwrap(), b.unwrap())
        })
        .clone()
}

fn target_exe() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            fixtures::build(
                "resolver_target.c",
                "resolver_target",
                &["-O1", "-ldl", "-pthread"],
            )
            .unwrap()
        })
        .clone()
}

/// dlopen, dlclose, mmap and munmap: every reported address resolves to the right file and
/// offset after each change, unchanged addresses keep taking the fast path, and addresses of
/// closed libraries and unmapped files resolve to nothing.
#[test]
fn follows_dlopen_dlclose_mmap_munmap() {
    let (lib_a, lib_b) = libs();
    let mut t = Target::spawn();
    let (seq, resolver, mut reader) = setup(&t);

    let own = t.step(&seq, "self");
    let n = check_fn(&mut reader, &t, &own[0]);
    assert_eq!(
        std::fs::canonicalize(&n.path).unwrap(),
        std::fs::canonicalize(&t.exe).unwrap()
    );

    let a = t.step(&seq, &format!("open 0 {}", lib_a.display()));
    let na = check_fn(&mut reader, &t, &a[0]);
    assert_eq!(na.file, FileId::of_path(&lib_a).unwrap());
    let b = t.step(&seq, &format!("open 1 {}", lib_b.display()));
    let nb = check_fn(&mut reader, &t, &b[0]);
    assert_eq!(nb.file, FileId::of_path(&lib_b).unwrap());

    // No change since: the same addresses resolve on the fast path, to the same answers.
    let again = reader.resolve(t.proc, hex(&fields(&a[0], "fn")[0]), None);
    assert_eq!(again.via, Via::Fast);
    assert_eq!(again.outcome.unwrap(), na);

    let gone = t.step(&seq, "close 0");
    let addr = hex(&fields(&gone[0], "gone")[0]);
    assert_eq!(
        reader.resolve(t.proc, addr, None).outcome,
        Err(Reason::Unmapped)
    );
    check_fn(&mut reader, &t, &b[0]);

    let m = t.step(&seq, &format!("map 1000 {}", lib_b.display()));
    let f = fields(&m[0], "map");
    let (addr, dev, ino, want) = (hex(&f[0]), hex(&f[1]), f[2].parse().unwrap(), unhex(&f[3]));
    let n = reader.resolve(t.proc, addr + 0x10, None).outcome.unwrap();
    assert_eq!(n.file, FileId { dev, ino });
    assert_eq!(n.file_offset, 0x1010);
    assert_eq!(n.vma_start, addr);
    assert_eq!(file_bytes(t.proc.pid, &n, 16), want);

    let gone = t.step(&seq, "unmap");
    let addr = hex(&fields(&gone[0], "gone")[0]);
    assert_eq!(
        reader.resolve(t.proc, addr + 0x10, None).outcome,
        Err(Reason::Unmapped)
    );

    let c = resolver.counters();
    assert!(c.fast >= 1 && c.rescans >= 6, "{c:?}");
    assert_eq!(c.rescan_failures, 0);
}

/// A mapped file whose name contains a newline and which is then unlinked resolves to its
/// real name (unescaped) with the deleted flag, and to the identity the target saw.
#[test]
fn deleted_file_with_newline_in_name() {
    let (lib_a, _) = libs();
    let dir = std::env::temp_dir().join(format!("probed-resolver-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let odd = dir.join("lib a\nnew.so");
    std::fs::copy(&lib_a, &odd).unwrap();
    let mut t = Target::spawn();
    let (seq, _resolver, mut reader) = setup(&t);
    let sent = odd.to_str().unwrap().replace('\n', "\\n");
    let m = t.step(&seq, &format!("map 0 {sent}"));
    let f = fields(&m[0], "map");
    let (addr, dev, ino) = (hex(&f[0]), hex(&f[1]), f[2].parse().unwrap());
    {
        // Unlinking changes what maps prints (" (deleted)"), not the mappings; the test still
        // brackets it so the resolver rereads the maps.
        let _change = seq.change(t.proc).unwrap();
        std::fs::remove_file(&odd).unwrap();
    }
    let n = reader.resolve(t.proc, addr + 0x10, None).outcome.unwrap();
    assert!(n.deleted);
    assert_eq!(n.path.as_os_str().as_bytes(), odd.as_os_str().as_bytes());
    assert_eq!(n.file, FileId { dev, ino });
    assert_eq!(file_bytes(t.proc.pid, &n, 16), unhex(&f[3]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// After the main thread exits, /proc/PID/maps is empty; the resolver reads a live thread's
/// maps instead and keeps resolving; once the process exits it reports it gone.
#[test]
fn main_thread_exited_then_process_gone() {
    let (lib_a, _) = libs();
    let mut t = Target::spawn();
    let (seq, resolver, mut reader) = setup(&t);
    let a = t.step(&seq, &format!("open 0 {}", lib_a.display()));
    t.step(&seq, "leader_exit");
    // Wait until the leader is really gone (its maps read empty).
    let maps = Path::new("/proc").join(t.proc.pid.to_string()).join("maps");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !std::fs::read(&maps).unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "leader did not exit");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    {
        let _change = seq.change(t.proc).unwrap();
    }
    let n = check_fn(&mut reader, &t, &a[0]);
    assert_eq!(n.file, FileId::of_path(&lib_a).unwrap());
    let own = t.step(&seq, "self");
    check_fn(&mut reader, &t, &own[0]);

    {
        let _change = seq.change(t.proc).unwrap();
        writeln!(t.stdin, "quit").unwrap();
        t.stdin.flush().unwrap();
        t.child.wait().unwrap();
    }
    let addr = hex(&fields(&a[0], "fn")[0]);
    assert_eq!(
        reader.resolve(t.proc, addr, None).outcome,
        Err(Reason::ProcessGone)
    );
    // Kept as an exited process (bounded), for hits still queued; never rescanned again.
    assert!(resolver.is_tracked(t.proc));
    assert_eq!(
        reader.resolve(t.proc, addr, None).outcome,
        Err(Reason::ProcessGone)
    );
}
