//! `cargo xtask bench resolver`: runs the resolver benchmarks (daemon/benches/resolver.rs)
//! and writes target/probed-bench/resolver.json.
//!
//! Single-thread figures come from criterion's estimates; 2-thread throughput and fallback
//! rates come from the bench's own side-by-side timing loop (it writes them to the file named
//! by `PROBED_BENCH_REPORT`). Every figure is from the same run, so ratios compare candidates
//! measured under the same noise.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

/// Criterion functions read into `<name>_ns` keys, per address space.
const CRITERION: [&str; 7] = [
    "unsync",
    "speculative",
    "rwlock_1t",
    "bare_seqlock",
    "blazesym_cached",
    "blazesym_default",
    "procfs_per_lookup",
];

/// Runs the benchmarks, writes the JSON report and prints a table.
pub fn run() -> Result<()> {
    let workspace = crate::paths::root();
    // Cargo builds where CARGO_TARGET_DIR says (criterion writes its estimates there); the
    // report always goes to the workspace's target/probed-bench.
    let target_dir = crate::paths::target_dir();
    let target_dir = if target_dir.is_relative() {
        workspace.join(target_dir)
    } else {
        target_dir
    };
    let out_dir = crate::paths::bench_dir();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let custom_path = out_dir.join("resolver-threads.json");
    let _ = std::fs::remove_file(&custom_path);

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args(["bench", "-p", "probed", "--bench", "resolver"])
        .env("PROBED_BENCH_REPORT", &custom_path)
        .status()
        .context("run `cargo bench -p probed --bench resolver`")?;
    if !status.success() {
        bail!("`cargo bench -p probed --bench resolver` failed ({status})");
    }
    let custom: Value = read_json(&custom_path)?;

    let mut report = Map::new();
    let mut sizes = Map::new();
    for size in ["650", "7000"] {
        let mut s = Map::new();
        for name in CRITERION {
            let ns = criterion_ns(&target_dir, &format!("resolver_{size}"), name)?;
            s.insert(format!("{name}_ns"), json!(ns));
        }
        let threads = &custom[format!("threads_{size}")];
        for key in ["rwlock_2t_ns", "speculative_2t_ns", "unsync_2t_ns", "vmas"] {
            s.insert(key.into(), threads[key].clone());
        }
        let scaling = num(threads, "speculative_2t_per_s")? / num(threads, "speculative_1t_per_s")?;
        s.insert("scaling_2t".into(), json!(scaling));
        s.insert("timing_loop".into(), threads.clone());
        sizes.insert(size.into(), Value::Object(s));
    }
    // The top-level keys are the ~650-VMA space: the smaller search makes the fixed
    // synchronization overhead weigh most there, so it is the stricter test of the ratios.
    if let Some(Value::Object(small)) = sizes.get("650") {
        for (k, v) in small {
            if k != "timing_loop" {
                report.insert(k.clone(), v.clone());
            }
        }
    }
    let mut fallback = Map::new();
    for entry in custom["fallback"].as_array().context("fallback array")? {
        let rate = entry["target_changes_per_s"].to_string();
        fallback.insert(rate, entry["fallback_rate"].clone());
    }
    report.insert("fallback_rate".into(), Value::Object(fallback));
    report.insert("fallback_detail".into(), custom["fallback"].clone());
    report.insert("by_vmas".into(), Value::Object(sizes));
    report.insert("goals".into(), goals(&report)?);

    let out = out_dir.join("resolver.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", out.display()))?;
    print_table(&report)?;
    println!("\nwrote {}", out.display());
    Ok(())
}

/// The goals as measured ratios, each with whether it was met.
fn goals(r: &Map<String, Value>) -> Result<Value> {
    let get = |k: &str| {
        r.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("no {k}"))
    };
    let spec_over_unsync = get("speculative_ns")? / get("unsync_ns")?;
    let rw_over_spec_2t = get("rwlock_2t_ns")? / get("speculative_2t_ns")?;
    let scaling = get("scaling_2t")?;
    let blaze_over_spec = get("blazesym_cached_ns")? / get("speculative_ns")?;
    let procfs_over_spec = get("procfs_per_lookup_ns")? / get("speculative_ns")?;
    let no_churn = r["fallback_rate"]["0"].as_f64().context("fallback at 0")?;
    Ok(json!({
        "speculative_over_unsync": {"value": spec_over_unsync, "goal": "<= 1.15", "met": spec_over_unsync <= 1.15},
        "rwlock_2t_over_speculative_2t": {"value": rw_over_spec_2t, "goal": ">= 3", "met": rw_over_spec_2t >= 3.0},
        "scaling_2t": {"value": scaling, "goal": ">= 1.9", "met": scaling >= 1.9},
        "blazesym_cached_over_speculative": {"value": blaze_over_spec, "goal": ">= 5", "met": blaze_over_spec >= 5.0},
        "procfs_over_speculative": {"value": procfs_over_spec, "goal": ">= 1000", "met": procfs_over_spec >= 1000.0},
        "fallback_rate_no_churn": {"value": no_churn, "goal": "== 0", "met": no_churn == 0.0},
    }))
}

fn print_table(r: &Map<String, Value>) -> Result<()> {
    let sizes = r["by_vmas"].as_object().context("by_vmas")?;
    println!("\nresolver, ns per address (criterion; 2t from the timing loop, per thread)");
    println!("{:<22}{:>14}{:>14}", "candidate", "~650 VMAs", "~7000 VMAs");
    let keys = CRITERION.iter().map(|k| format!("{k}_ns")).chain([
        "rwlock_2t_ns".into(),
        "speculative_2t_ns".into(),
        "scaling_2t".into(),
    ]);
    for key in keys {
        let cell = |size: &str| sizes[size][&key].as_f64().map_or("-".into(), fmt);
        println!("{:<22}{:>14}{:>14}", key, cell("650"), cell("7000"));
    }
    println!("\nfallback rate at 0 / 1k / 10k changes/s:");
    for e in r["fallback_detail"].as_array().context("fallback")? {
        println!(
            "  target {:>6}/s  achieved {:>8.0}/s  fallbacks {:>6} of {:>10}  rate {:.2e}",
            e["target_changes_per_s"],
            e["changes_per_s"].as_f64().unwrap_or(0.0),
            e["fallbacks"],
            e["resolutions"],
            e["fallback_rate"].as_f64().unwrap_or(0.0)
        );
    }
    println!("\ngoals (~650 VMAs):");
    for (name, g) in r["goals"].as_object().context("goals")? {
        println!(
            "  {:<34}{:>12} {:<8}{}",
            name,
            g["value"].as_f64().map_or("-".into(), fmt),
            g["goal"].as_str().unwrap_or(""),
            if g["met"].as_bool() == Some(true) {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    Ok(())
}

fn fmt(v: f64) -> String {
    if v >= 1e4 {
        format!("{v:.3e}")
    } else {
        format!("{v:.2}")
    }
}

/// Criterion's mean time per iteration divided by the elements per iteration.
fn criterion_ns(target: &Path, group: &str, function: &str) -> Result<f64> {
    let dir = target
        .join("criterion")
        .join(group)
        .join(function)
        .join("new");
    let estimates = read_json(&dir.join("estimates.json"))?;
    let bench = read_json(&dir.join("benchmark.json"))?;
    let mean = estimates["mean"]["point_estimate"]
        .as_f64()
        .context("mean estimate")?;
    let elements = bench["throughput"]["Elements"]
        .as_f64()
        .context("throughput elements")?;
    Ok(mean / elements)
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("no {key} in the bench report"))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
}
