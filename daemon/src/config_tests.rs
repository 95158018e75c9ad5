//! Tests of the daemon config: a full file with its defaults, errors at their line and
//! column, log filters, and byte offsets to line:column.

use super::{
    source::{is_log_filter, line_column},
    *,
};

fn parse(text: &str) -> Result<Config, String> {
    Source {
        path: "/etc/probed/probed.toml".into(),
        text: text.to_owned(),
    }
    .parse()
    .map_err(|e| e.to_string())
}

const GOOD: &str = r#"
log_level = "debug"
control_socket = "/tmp/probed.sock"

[metrics]

[outputs.hits]
kind = "file"
path = "/var/log/probed/hits.jsonl"
rotate_bytes = 1000000
rotate_keep = 3

[[probes]]
spec = "uprobe:/usr/bin/bash:readline"
output = "hits"
rate_limit = 100
burst = 10

[[probes]]
spec = "uretprobe:/usr/bin/bash:readline"
pid = 42
stack = true
"#;

/// A full config parses, with defaults filled in.
#[test]
fn good_config() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.control_socket, PathBuf::from("/tmp/probed.sock"));
    assert_eq!(
        c.metrics.unwrap().listen,
        DEFAULT_METRICS_LISTEN.parse().unwrap()
    );
    let hits = &c.outputs["hits"];
    assert_eq!(hits.format, OutputFormat::Json);
    assert_eq!(hits.rotate_keep.get(), 3);
    assert_eq!(c.probes.len(), 2);
    let a = c.probes[0].def();
    assert_eq!(a.output, "hits");
    assert_eq!(a.rate_limit.map(NonZeroU64::get), Some(100));
    assert_eq!(a.burst.map(NonZeroU64::get), Some(10));
    let b = c.probes[1].def();
    assert_eq!(b.output, STDOUT_OUTPUT);
    assert_eq!(b.pid.map(NonZeroU32::get), Some(42));
    assert_eq!(b.stack, Some(StackMode::Fp));
    let c = parse("[[probes]]\nspec = \"uprobe:/bin/sh:main\"\nstack = \"dwarf\"\n").unwrap();
    assert_eq!(c.probes[0].def().stack, Some(StackMode::Dwarf));
    let err = parse("[[probes]]\nspec = \"uprobe:/bin/sh:main\"\nstack = \"cfi\"\n").unwrap_err();
    assert!(err.contains("\"auto\" or \"dwarf\""), "{err}");
    // An empty file is a valid config with no probes (the daemon waits for `ctl add`).
    let empty = parse("").unwrap();
    assert!(empty.probes.is_empty());
    assert_eq!(empty.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
    assert!(empty.metrics.is_none());
}

/// Each kind of mistake is reported at its line and column, saying what was expected.
#[test]
fn errors_have_positions() {
    let cases: &[(&str, &str)] = &[
        (
            "[[probes]]\nspec = \"uprobe:/bin/x:f\"\nrate = 5\n",
            "/etc/probed/probed.toml:3:1: unknown field `rate`, expected one of",
        ),
        (
            "[[probes]]\nspec = \"uprobe:/bin/x:f\"\npid = \"self\"\n",
            "/etc/probed/probed.toml:3:7: invalid type: string \"self\", expected a nonzero u32",
        ),
        (
            "[[probes]]\nspec = \"uprobe:/bin/x:f\"\npid = 0\n",
            "/etc/probed/probed.toml:3:7: ",
        ),
        (
            "[[probes]]\nspec = \"uprobe:/bin/x:f\"\noutput = \"nowhere\"\n",
            "/etc/probed/probed.toml:3:10: no output named `nowhere` (expected one of: stdout)",
        ),
        (
            "[[probes]]\nspec = \"uprobe:/bin/x:f\"\nburst = 3\n",
            "/etc/probed/probed.toml:3:9: `burst` needs a `rate_limit`",
        ),
        (
            "[outputs.f]\nkind = \"file\"\n",
            "/etc/probed/probed.toml:2:8: output `f` is a file but has no `path`",
        ),
        (
            "[outputs.f]\nkind = \"pipe\"\n",
            "/etc/probed/probed.toml:2:8: unknown variant `pipe`, expected `file` or `stdout`",
        ),
        (
            "[metrics]\nlisten = \"localhost\"\n",
            "/etc/probed/probed.toml:2:10: invalid socket address syntax",
        ),
        (
            "log_level = \"loud!!\"\n",
            "/etc/probed/probed.toml:1:13: log_level `loud!!` is not a level",
        ),
        (
            "drain_timeout = -1.0\n",
            "/etc/probed/probed.toml:1:17: drain_timeout `-1` is not a number of seconds",
        ),
        (
            "drain_timeout = \"soon\"\n",
            "/etc/probed/probed.toml:1:17: invalid type: string \"soon\", expected f64",
        ),
        (
            "[[probes]]\nspec = \"uprobe:/bin/x:f\"\n[[probes]]\nspec = \"uprobe:/bin/x:f\"\n",
            "/etc/probed/probed.toml:4:8: the same probe is already defined at line 2",
        ),
        ("[[probes]\nspec = 1\n", "/etc/probed/probed.toml:1:"),
        (
            "[outputs.a]\nkind = \"file\"\npath = \"/x\"\n[outputs.b]\nkind = \"file\"\npath = \"/x\"\n",
            "write to the same file /x",
        ),
    ];
    for (text, want) in cases {
        let err = parse(text).expect_err(text);
        assert!(
            err.contains(want),
            "config {text:?}\n got: {err}\nwant: {want}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

/// Levels and `target=level` directives are log filters; other words are not.
#[test]
fn log_filters() {
    for good in [
        "info",
        "DEBUG",
        "probed=debug,info",
        "warn,probed::service=trace",
    ] {
        assert!(is_log_filter(good), "{good}");
    }
    for bad in ["", "loud", "probed=loud", "=info", "info,,"] {
        assert!(!is_log_filter(bad), "{bad}");
    }
}

/// Line and column count characters, from 1.
#[test]
fn positions() {
    assert_eq!(line_column("abc", 0), (1, 1));
    assert_eq!(line_column("abc\ndef", 5), (2, 2));
    assert_eq!(line_column("é\nx", 3), (2, 1));
    assert_eq!(line_column("éa", 2), (1, 2));
    assert_eq!(line_column("x", 99), (1, 2));
}
