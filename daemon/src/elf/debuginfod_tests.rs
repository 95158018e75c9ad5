//! Tests of the debuginfod client: `DEBUGINFOD_URLS` parsing, cache directories, and fetches
//! from a local test server (one download per build-id, build-ids checked, misses
//! remembered, server errors and empty files).

use std::sync::Arc;

use super::*;
use crate::elf::test_support::{Fixture, scratch_dir};

/// A fake server: URL → answer, counting requests.
#[derive(Default)]
struct Fake {
    files: HashMap<String, Result<Vec<u8>, u16>>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Transport for Fake {
    fn get(&self, url: &str, out: &mut File) -> Result<Got, TransportError> {
        self.asked.lock().unwrap().push(url.to_owned());
        match self.files.get(url) {
            Some(Ok(bytes)) => {
                out.write_all(bytes).map_err(TransportError::Write)?;
                Ok(Got::Body)
            }
            Some(Err(status)) => Err(TransportError::Status(*status)),
            None => Ok(Got::NotFound),
        }
    }
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let vars: HashMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect();
    move |name| vars.get(name).cloned()
}

fn fixture_id() -> (BuildId, Vec<u8>) {
    let bytes = fs::read(Fixture::Pie.path()).unwrap();
    let id = build_id::of_file(&File::open(Fixture::Pie.path()).unwrap())
        .expect("fixtures are linked with a build-id");
    (id, bytes)
}

/// URLs as elfutils reads them: spaces (any run of them) separate, trailing slashes go,
/// schemes other than http(s) are skipped.
#[test]
fn parses_urls() {
    assert_eq!(
        parse_urls("  https://debuginfod.debian.net/ http://127.0.0.1:8002\tfile:///x ftp://y"),
        ["https://debuginfod.debian.net", "http://127.0.0.1:8002"]
    );
    assert!(parse_urls("").is_empty());
    assert!(
        Client::from_env(
            env(&[("DEBUGINFOD_URLS", " ")]),
            true,
            Box::new(Fake::default())
        )
        .is_none()
    );
    assert!(Client::from_env(env(&[]), true, Box::new(Fake::default())).is_none());
}

/// The cache: DEBUGINFOD_CACHE_PATH first, root's fixed directory, then the user's.
#[test]
fn cache_directories() {
    let root = |vars: &[(&str, &str)], is_root| cache_root(env(vars), is_root);
    assert_eq!(
        root(&[("DEBUGINFOD_CACHE_PATH", "/c"), ("HOME", "/h")], false),
        Some("/c".into())
    );
    assert_eq!(root(&[("HOME", "/h")], true), Some(ROOT_CACHE.into()));
    assert_eq!(
        root(&[("HOME", "/h")], false),
        Some("/h/.cache/probed/debuginfod".into())
    );
    assert_eq!(
        root(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")], false),
        Some("/x/probed/debuginfod".into())
    );
    assert_eq!(root(&[("DEBUGINFOD_CACHE_PATH", "")], false), None);
    let client = Client::new(vec![], "/c".into(), Box::new(Fake::default()));
    assert_eq!(
        client.cache_path(&BuildId::new(&[0xab, 0x01])),
        Path::new("/c/ab01/debuginfo")
    );
}

/// A file is fetched from the first server that has it, lands at its cache path (no
/// temporary left), and is then served from the cache without a request.
#[test]
fn fetches_into_the_cache_once() {
    let dir = scratch_dir("debuginfod-fetch");
    let (id, bytes) = fixture_id();
    let mut fake = Fake::default();
    fake.files.insert(
        format!("http://b/buildid/{id}/debuginfo"),
        Ok(bytes.clone()),
    );
    let asked = fake.asked.clone();
    let client = Client::new(
        vec!["http://a".into(), "http://b".into()],
        dir.clone(),
        Box::new(fake),
    );
    assert_eq!(client.cached(&id), None);
    let path = client.fetch(&id).unwrap();
    assert_eq!(path, dir.join(id.to_string()).join("debuginfo"));
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(client.fetch(&id).unwrap(), path);
    assert_eq!(asked.lock().unwrap().len(), 2, "a then b, then the cache");
    assert_eq!(client.counts(), (1, 0));
    let names: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["debuginfo"]);
    fs::remove_dir_all(dir).ok();
}

/// A file of another build-id (or not ELF) is refused and not cached; a missing one is
/// not asked again while its negative entry lasts, in this client or a new one (disk).
#[test]
fn checks_build_ids_and_caches_misses() {
    let dir = scratch_dir("debuginfod-check");
    let (id, bytes) = fixture_id();
    let other = BuildId::new(&[1, 2, 3, 4]);
    let mut fake = Fake::default();
    fake.files
        .insert(format!("http://a/buildid/{other}/debuginfo"), Ok(bytes));
    let asked = fake.asked.clone();
    let client = Client::new(vec!["http://a".into()], dir.clone(), Box::new(fake));
    let err = client.fetch(&other).unwrap_err();
    assert!(
        matches!(err, DebuginfodError::WrongBuildId { .. }),
        "{err:?}"
    );
    assert_eq!(client.cached(&other), None);
    let err = client.fetch(&id).unwrap_err();
    assert!(matches!(err, DebuginfodError::NotFound { .. }), "{err:?}");
    for _ in 0..3 {
        assert!(matches!(
            client.fetch(&id),
            Err(DebuginfodError::RecentlyMissing { .. })
        ));
    }
    assert_eq!(asked.lock().unwrap().len(), 2);
    assert_eq!(client.counts(), (0, 2));
    // A new client (the next run) reads the marker.
    let fresh = Client::new(
        vec!["http://a".into()],
        dir.clone(),
        Box::new(Fake::default()),
    );
    assert!(matches!(
        fresh.fetch(&id),
        Err(DebuginfodError::RecentlyMissing { .. })
    ));
    fs::remove_dir_all(dir).ok();
}

/// A server error is a request error naming the URL; an empty cached file (elfutils'
/// negative marker) is not a cached debug file.
#[test]
fn server_errors_and_empty_files() {
    let dir = scratch_dir("debuginfod-errors");
    let (id, _) = fixture_id();
    let mut fake = Fake::default();
    fake.files
        .insert(format!("http://a/buildid/{id}/debuginfo"), Err(503));
    let client = Client::new(vec!["http://a".into()], dir.clone(), Box::new(fake));
    let err = client.fetch(&id).unwrap_err();
    assert!(
        matches!(&err, DebuginfodError::Request { url, source: TransportError::Status(503) } if url.starts_with("http://a/buildid/")),
        "{err:?}"
    );
    let path = client.cache_path(&id);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, b"").unwrap();
    assert_eq!(client.cached(&id), None);
    fs::remove_dir_all(dir).ok();
}
