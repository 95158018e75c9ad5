//! The deployment files in dist/, checked without a cluster or a registry:
//!
//! - `dist/kubernetes/probed-daemonset.yaml`: every document deserializes into the
//!   Kubernetes API's own types (k8s-openapi, the oldest API version it supports) and
//!   serializes back to exactly what the file says, so no field is unknown, misplaced or of
//!   the wrong type; the DaemonSet is privileged in the host's pid namespace with the mounts
//!   tracing needs; the ConfigMap's `probed.toml` passes probed's own config checks and agrees
//!   with the pod (socket directory, metrics port, config path).
//! - `dist/Containerfile`: the builder is the workspace's Rust version, and the image's
//!   entry point is the binary it copies, run the way the DaemonSet runs it.

use std::{collections::BTreeMap, path::PathBuf};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize as _, Serialize, de::DeserializeOwned};
use serde_json::Value;

fn dist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist")
}

fn read(relative: &str) -> String {
    let path = dist().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The manifest's documents, by kind.
fn documents() -> BTreeMap<String, Value> {
    let text = read("kubernetes/probed-daemonset.yaml");
    let mut docs = BTreeMap::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc).expect("the manifest is YAML");
        let kind = value["kind"].as_str().expect("every document has a kind");
        assert!(
            docs.insert(kind.to_owned(), value.clone()).is_none(),
            "one {kind} only"
        );
    }
    docs
}

/// `doc` as the API type `T`, which must serialize back to `doc` exactly: k8s-openapi skips
/// fields it does not know, so a typo or a field at the wrong level would vanish here.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{} is not a valid {}: {e}",
            doc["kind"],
            std::any::type_name::<T>()
        )
    });
    let back = serde_json::to_value(&object).expect("serialize");
    assert_eq!(
        &back, doc,
        "{} has fields the API does not know (or not there)",
        doc["kind"]
    );
    object
}

struct Manifest {
    namespace: Namespace,
    config_map: ConfigMap,
    daemon_set: DaemonSet,
}

fn manifest() -> Manifest {
    let docs = documents();
    assert_eq!(
        docs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ConfigMap", "DaemonSet", "Namespace"]
    );
    Manifest {
        namespace: typed(&docs["Namespace"]),
        config_map: typed(&docs["ConfigMap"]),
        daemon_set: typed(&docs["DaemonSet"]),
    }
}

fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template")
}

fn probed_container(ds: &DaemonSet) -> &Container {
    let containers = &pod(ds).containers;
    assert_eq!(containers.len(), 1, "one container");
    assert_eq!(containers[0].name, "probed");
    &containers[0]
}

/// Where the container mounts volume `name`.
fn mount_path<'a>(c: &'a Container, name: &str) -> &'a str {
    c.volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("volume {name} is mounted"))
        .mount_path
        .as_str()
}

#[test]
fn daemonset_is_valid_kubernetes() {
    let m = manifest();
    let ns = m.namespace.metadata.name.as_deref();
    assert_eq!(m.config_map.metadata.namespace.as_deref(), ns);
    assert_eq!(m.daemon_set.metadata.namespace.as_deref(), ns);
    let spec = m.daemon_set.spec.as_ref().expect("spec");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    for (k, v) in selector {
        assert_eq!(
            labels.and_then(|l| l.get(k)),
            Some(v),
            "the selector matches the pods"
        );
    }
}

#[test]
fn daemonset_traces_the_host() {
    let m = manifest();
    let pod = pod(&m.daemon_set);
    assert_eq!(pod.host_pid, Some(true), "host pid namespace");
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "tolerates every taint: runs on every node"
    );
    let c = probed_container(&m.daemon_set);
    assert_eq!(
        c.security_context.as_ref().and_then(|s| s.privileged),
        Some(true),
        "privileged"
    );
    let resources = c.resources.as_ref().expect("resources");
    for (what, set) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        let set = set.as_ref().unwrap_or_else(|| panic!("{what}"));
        assert!(
            set.contains_key("cpu") && set.contains_key("memory"),
            "{what}"
        );
    }
    // The kernel's interfaces come from the node, at their own paths.
    let volumes = pod.volumes.as_ref().expect("volumes");
    for (name, host_path, path) in [
        ("tracefs", "/sys/kernel/tracing", "/sys/kernel/tracing"),
        ("btf", "/sys/kernel/btf", "/sys/kernel/btf"),
        ("bpffs", "/sys/fs/bpf", "/sys/fs/bpf"),
        ("control", "/run/probed", "/run/probed"),
        ("host-root", "/", "/host"),
    ] {
        let volume = volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("volume {name}"));
        let host = volume.host_path.as_ref().expect("a hostPath volume");
        assert_eq!(host.path, host_path, "{name}");
        assert_eq!(mount_path(c, name), path, "{name}");
    }
}

#[test]
fn configmap_is_probeds_config_and_agrees_with_the_pod() {
    let m = manifest();
    let c = probed_container(&m.daemon_set);
    // The daemon reads the file the ConfigMap mounts.
    let args = c.args.as_ref().expect("args");
    assert_eq!(args[..2], ["daemon", "--config"]);
    let config_path = PathBuf::from(&args[2]);
    let volume = pod(&m.daemon_set)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.config_map.is_some())
        .expect("a ConfigMap volume");
    assert_eq!(
        volume.config_map.as_ref().map(|c| c.name.as_str()),
        m.config_map.metadata.name.as_deref()
    );
    let key = config_path
        .strip_prefix(mount_path(c, &volume.name))
        .expect("--config is inside the ConfigMap's mount");
    let text = m
        .config_map
        .data
        .as_ref()
        .and_then(|d| d.get(key.to_str().expect("UTF-8")))
        .unwrap_or_else(|| panic!("the ConfigMap has {}", key.display()));

    let config = probed::config::Source {
        path: config_path,
        text: text.clone(),
    }
    .parse()
    .unwrap_or_else(|e| panic!("the ConfigMap's config: {e}"));
    assert!(!config.probes.is_empty(), "the example traces something");
    // Its files are the node's, through the read-only mount of the node's root.
    let host_root = mount_path(c, "host-root");
    for probe in &config.probes {
        let spec: probed::spec::ProbeSpec = probe
            .spec
            .get_ref()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", probe.spec.get_ref()));
        let probed::spec::FileRef::Path(path) = spec.file else {
            panic!(
                "{}: the DaemonSet's probes name node files by path",
                spec.text
            )
        };
        assert!(path.starts_with(host_root), "{}", path.display());
    }
    // `probed ctl` (the readiness probe) finds the socket in the directory shared with the node.
    assert_eq!(
        config.control_socket.parent(),
        Some(std::path::Path::new(mount_path(c, "control")))
    );
    let ready = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.as_ref())
        .expect("an exec readiness probe");
    assert_eq!(ready[1..], ["ctl", "list"]);
    assert_eq!(ready[0], containerfile_entrypoint());
    // The metrics port the liveness probe and the annotations name is the one probed serves.
    let listen = config.metrics.as_ref().expect("[metrics]").listen;
    assert!(
        listen.ip().is_unspecified(),
        "reachable on the pod's address"
    );
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a metrics port");
    assert_eq!(port.container_port, i32::from(listen.port()));
    let live = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("an HTTP liveness probe");
    assert_eq!(live.path.as_deref(), Some("/metrics"));
    assert_eq!(live.port, IntOrString::String("metrics".into()));
}

/// The `ENTRYPOINT` of dist/Containerfile, checked to be the binary the last stage copies.
fn containerfile_entrypoint() -> String {
    let text = read("Containerfile");
    let instr = |name: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(name).map(|rest| rest.trim().to_owned()))
            .collect()
    };
    let entry = instr("ENTRYPOINT ");
    assert_eq!(entry.len(), 1, "one ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(&entry[0]).expect("ENTRYPOINT in exec form");
    let copies = instr("COPY --from=build ");
    assert!(
        copies
            .iter()
            .any(|c| c.ends_with(&format!(" {}", entry[0]))),
        "the entry point {} is the binary the build stage made: {copies:?}",
        entry[0]
    );
    entry[0].clone()
}

#[test]
fn containerfile_builds_with_the_supported_rust_and_runs_the_daemon() {
    let text = read("Containerfile");
    let from: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(from.len(), 2, "a builder and the image");
    let workspace =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .expect("read Cargo.toml");
    let rust: toml::Value = toml::from_str(&workspace).expect("Cargo.toml");
    let version = rust["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    assert!(
        from[0].starts_with(&format!("docker.io/library/rust:{version}-bookworm ")),
        "the builder is Rust {version}: {}",
        from[0]
    );
    assert!(from[1].starts_with("docker.io/library/debian:bookworm"));
    assert!(
        text.contains("RUN cargo xtask build"),
        "builds the BPF object too"
    );
    let cmd: Vec<String> = serde_json::from_str(
        text.lines()
            .find_map(|l| l.strip_prefix("CMD "))
            .expect("a CMD"),
    )
    .expect("CMD in exec form");
    let m = manifest();
    assert_eq!(
        Some(&cmd),
        probed_container(&m.daemon_set).args.as_ref(),
        "the image's default command is the DaemonSet's"
    );
    containerfile_entrypoint();
}
