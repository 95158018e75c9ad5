//! The daemon's named outputs and the pipeline's writers behind them.
//!
//! `stdout` always exists (sink 0). A reload opens new and changed outputs *before* anything
//! else changes (a file that cannot be opened rejects the reload), keeps unchanged ones open
//! (a file is not reopened, rotation state is kept), and closes an output only when no probe
//! writes to it any more.

use std::collections::BTreeMap;

use crate::{
    config::{Config, OutputConfig, OutputKind, STDOUT_OUTPUT},
    output::{
        Format, Writer,
        sink::{RotatingFile, Sink},
    },
};

/// One named output.
#[derive(Debug)]
struct Named {
    /// Its definition (`None`: the built-in stdout).
    def: Option<OutputConfig>,
    /// The pipeline's writer index.
    sink: usize,
}

/// Outputs opened for a new config, not yet installed.
pub struct Opened {
    /// Name → (definition, writer), for new or changed outputs only.
    writers: Vec<(String, OutputConfig, Writer<Sink>)>,
    /// Names the new config defines.
    names: Vec<String>,
}

/// Why an output cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("output `{name}`: cannot open {}", path.display())]
pub struct OutputError {
    /// The output.
    pub name: String,
    /// Its file.
    pub path: std::path::PathBuf,
    /// What the system said.
    #[source]
    pub source: std::io::Error,
}

/// The named outputs.
#[derive(Debug)]
pub struct Outputs {
    named: BTreeMap<String, Named>,
    /// Writer indexes of closed outputs, for reuse.
    free: Vec<usize>,
    next: usize,
}

impl Default for Outputs {
    fn default() -> Self {
        Self::new()
    }
}

impl Outputs {
    /// Just the built-in stdout, at sink 0.
    pub fn new() -> Self {
        let mut named = BTreeMap::new();
        named.insert(STDOUT_OUTPUT.to_owned(), Named { def: None, sink: 0 });
        Self {
            named,
            free: Vec::new(),
            next: 1,
        }
    }

    /// The writer of the built-in stdout.
    pub fn stdout_writer() -> Writer<Sink> {
        Writer::new(Sink::stdout(), Format::Json)
    }

    /// Opens the outputs of `config` that are new or changed; nothing is installed yet.
    pub fn open(&self, config: &Config) -> Result<Opened, OutputError> {
        let mut writers = Vec::new();
        for (name, def) in &config.outputs {
            if name == STDOUT_OUTPUT {
                continue;
            }
            if self
                .named
                .get(name)
                .is_some_and(|n| n.def.as_ref() == Some(def))
            {
                continue;
            }
            writers.push((name.clone(), def.clone(), open_output(name, def)?));
        }
        Ok(Opened {
            writers,
            names: config.outputs.keys().cloned().collect(),
        })
    }

    /// Installs what [`Outputs::open`] opened: `set_writer(sink, writer)` puts a writer in
    /// the pipeline. Outputs the config no longer names stay until [`Outputs::close_unused`].
    pub fn install(
        &mut self,
        opened: Opened,
        mut set_writer: impl FnMut(usize, Option<Writer<Sink>>),
    ) {
        for (name, def, writer) in opened.writers {
            let sink = match self.named.get_mut(&name) {
                // Changed: same name, same sink, new writer (the old one is flushed as it
                // drops).
                Some(named) => {
                    named.def = Some(def);
                    named.sink
                }
                None => {
                    let sink = self.free.pop().unwrap_or_else(|| {
                        self.next += 1;
                        self.next - 1
                    });
                    self.named.insert(
                        name,
                        Named {
                            def: Some(def),
                            sink,
                        },
                    );
                    sink
                }
            };
            set_writer(sink, Some(writer));
        }
    }

    /// Closes the outputs that are neither in `config_names` nor written by a probe.
    pub fn close_unused<'a>(
        &mut self,
        config_names: &[String],
        in_use: impl IntoIterator<Item = &'a str>,
        mut set_writer: impl FnMut(usize, Option<Writer<Sink>>),
    ) {
        let used: std::collections::BTreeSet<&str> = in_use.into_iter().collect();
        let gone: Vec<String> = self
            .named
            .keys()
            .filter(|name| {
                name.as_str() != STDOUT_OUTPUT
                    && !config_names.contains(name)
                    && !used.contains(name.as_str())
            })
            .cloned()
            .collect();
        for name in gone {
            if let Some(named) = self.named.remove(&name) {
                set_writer(named.sink, None);
                self.free.push(named.sink);
            }
        }
    }

    /// The writer index of output `name`.
    pub fn sink(&self, name: &str) -> Option<usize> {
        self.named.get(name).map(|n| n.sink)
    }

    /// The output names, for messages.
    pub fn names(&self) -> Vec<&str> {
        self.named.keys().map(String::as_str).collect()
    }
}

impl Opened {
    /// The names the new config defines.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Opens one output.
fn open_output(name: &str, def: &OutputConfig) -> Result<Writer<Sink>, OutputError> {
    let sink = match (def.kind.get_ref(), &def.path) {
        (OutputKind::File, Some(path)) => Sink::File(
            RotatingFile::open(path, def.rotate_bytes, def.rotate_keep).map_err(|source| {
                OutputError {
                    name: name.to_owned(),
                    path: path.clone(),
                    source,
                }
            })?,
        ),
        // Checked at load: a file output has a path, stdout has none.
        _ => Sink::stdout(),
    };
    Ok(Writer::new(sink, def.format.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    fn config(text: &str) -> Config {
        Source {
            path: "t.toml".into(),
            text: text.into(),
        }
        .parse()
        .unwrap()
    }

    /// New outputs get sinks, unchanged ones are not reopened, changed ones keep their sink
    /// with a new writer, and unused ones close (their sink reused later).
    #[test]
    fn reload_outputs() {
        let dir = std::env::temp_dir().join(format!("probed-outputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = dir.join("a.jsonl");
        let b = dir.join("b.jsonl");
        let text = |pa: &std::path::Path, with_b: bool| {
            let mut t = format!(
                "[outputs.a]\nkind = \"file\"\npath = \"{}\"\n",
                pa.display()
            );
            if with_b {
                t += &format!("[outputs.b]\nkind = \"file\"\npath = \"{}\"\n", b.display());
            }
            t
        };
        let mut outputs = Outputs::new();
        let mut installed: Vec<(usize, bool)> = Vec::new();
        let c1 = config(&text(&a, true));
        let opened = outputs.open(&c1).unwrap();
        outputs.install(opened, |s, w| installed.push((s, w.is_some())));
        assert_eq!(installed, vec![(1, true), (2, true)]);
        assert!(a.exists() && b.exists());
        let (sa, sb) = (outputs.sink("a").unwrap(), outputs.sink("b").unwrap());

        // Same config: nothing reopened.
        installed.clear();
        let opened = outputs.open(&c1).unwrap();
        outputs.install(opened, |s, w| installed.push((s, w.is_some())));
        assert!(installed.is_empty());

        // a moves to a new file (same sink, new writer); b is dropped from the config but a
        // probe still writes to it, so it stays until unused.
        let a2 = dir.join("a2.jsonl");
        let c2 = config(&text(&a2, false));
        let opened = outputs.open(&c2).unwrap();
        let names = opened.names().to_vec();
        outputs.install(opened, |s, w| installed.push((s, w.is_some())));
        assert_eq!(installed, vec![(sa, true)]);
        assert!(a2.exists());
        installed.clear();
        outputs.close_unused(&names, ["b"], |s, w| installed.push((s, w.is_some())));
        assert!(installed.is_empty());
        outputs.close_unused(&names, [], |s, w| installed.push((s, w.is_some())));
        assert_eq!(installed, vec![(sb, false)]);
        assert_eq!(outputs.sink("b"), None);
        assert_eq!(outputs.names(), vec!["a", "stdout"]);

        // An output that cannot be opened is an error naming it and its path.
        let bad = config("[outputs.x]\nkind = \"file\"\npath = \"/proc/version/x\"\n");
        let err = outputs.open(&bad).err().unwrap();
        assert!(
            err.to_string()
                .contains("output `x`: cannot open /proc/version/x")
        );
    }
}
