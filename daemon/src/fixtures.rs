//! Test fixtures: C programs and libraries compiled at test time from the committed sources
//! in `daemon/tests/fixtures/`, never committed as binaries.
//!
//! Used by unit tests, integration tests and benches; not part of probed's behaviour.
//! Outputs are cached under the system temp dir, keyed by a hash of the source text and the
//! compiler flags, so repeated runs do not recompile and concurrent tests do not collide.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::Command,
};

/// Why a fixture could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The committed source could not be read.
    #[error("cannot read fixture source {path}")]
    Source {
        /// The source file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The compiler could not be started (is gcc installed?).
    #[error("cannot run `{compiler}` (install gcc)")]
    Spawn {
        /// The compiler command.
        compiler: String,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// The compiler failed.
    #[error("compiling {source_path} failed:\n{stderr}")]
    Compile {
        /// The source file.
        source_path: PathBuf,
        /// What the compiler printed.
        stderr: String,
    },
    /// The output could not be put in place.
    #[error("cannot write fixture output {path}")]
    Output {
        /// The output path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The directory holding the committed fixture sources.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Compiles `tests/fixtures/<source>` with `cc` and `flags` into a cached output named after
/// `name`, and returns the output's path. `flags` decide the kind of output (`-shared -fPIC`,
/// `-no-pie`, `-s`, …) and extra inputs (other sources or `-l` libraries) may be passed in
/// them too; any file named in `flags` that exists under the fixtures dir is hashed as well.
pub fn build(source: &str, name: &str, flags: &[&str]) -> Result<PathBuf, FixtureError> {
    let src = source_dir().join(source);
    let text = std::fs::read(&src).map_err(|e| FixtureError::Source {
        path: src.clone(),
        source: e,
    })?;
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    flags.hash(&mut hasher);
    for flag in flags {
        if let Ok(extra) = std::fs::read(source_dir().join(flag)) {
            extra.hash(&mut hasher);
        }
    }
    let dir = std::env::temp_dir().join("probed-fixtures");
    std::fs::create_dir_all(&dir).map_err(|e| FixtureError::Output {
        path: dir.clone(),
        source: e,
    })?;
    let out = dir.join(format!("{name}-{:016x}", hasher.finish()));
    if out.exists() {
        return Ok(out);
    }
    // Compile to a private name, then link it into place: a concurrent test sees no file or
    // the whole file, never a half-written one.
    let tmp = dir.join(format!(
        ".{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let output = Command::new("cc")
        .current_dir(source_dir())
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .args(flags)
        .output()
        .map_err(|e| FixtureError::Spawn {
            compiler: "cc".into(),
            source: e,
        })?;
    if !output.status.success() {
        return Err(FixtureError::Compile {
            source_path: src,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    // hard_link fails if another test got there first; its file is then kept, never replaced
    // (replacing a file a running test target maps would make that mapping "(deleted)").
    let linked = std::fs::hard_link(&tmp, &out);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(out),
        Err(e) => Err(FixtureError::Output {
            path: out.clone(),
            source: e,
        }),
    }
}
