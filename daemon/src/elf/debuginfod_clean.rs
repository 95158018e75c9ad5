//! Cleaning the debuginfod cache, as elfutils' client does, so that it does not grow forever
//! and so that a cache shared with elfutils (`DEBUGINFOD_CACHE_PATH`) is cleaned by one rule:
//! at most once per `cache_clean_interval_s` (default a day), every cached file not used for
//! `max_unused_age_s` (default a week) is removed, with its directory once empty. Both
//! numbers are read from files of those names in the cache directory, as elfutils reads
//! them; the interval file's modification time is when the cache was last cleaned.
//!
//! "Used" is the later of a file's access and modification times: `cached()` reads the file
//! (its access time moves where the mount updates it: relatime does once a day, enough for
//! a week's granularity) and a fetch writes it.

use std::{
    fs, io,
    path::Path,
    time::{Duration, SystemTime},
};

/// Default time between cleanings (elfutils': a day).
pub const CLEAN_INTERVAL: Duration = Duration::from_secs(86_400);
/// Default age past which an unused file is removed (elfutils': a week).
pub const MAX_UNUSED_AGE: Duration = Duration::from_secs(604_800);
/// The file holding the interval in seconds; its mtime is the last cleaning.
const INTERVAL_FILE: &str = "cache_clean_interval_s";
/// The file holding the maximum unused age in seconds.
const AGE_FILE: &str = "max_unused_age_s";

/// What one cleaning removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Cleans `cache` if the last cleaning is at least the interval ago (or never happened);
/// `None` when it was not due.
pub fn clean_if_due(cache: &Path, now: SystemTime) -> io::Result<Option<Cleaned>> {
    let interval_file = cache.join(INTERVAL_FILE);
    let interval = seconds(&interval_file).unwrap_or(CLEAN_INTERVAL);
    let last = fs::metadata(&interval_file).and_then(|m| m.modified()).ok();
    if let Some(last) = last
        && now.duration_since(last).unwrap_or_default() < interval
    {
        return Ok(None);
    }
    // Marked first: two probed processes sharing the cache do not both walk it.
    fs::create_dir_all(cache)?;
    fs::write(&interval_file, format!("{}\n", interval.as_secs()))?;
    let max_age = seconds(&cache.join(AGE_FILE)).unwrap_or(MAX_UNUSED_AGE);
    let mut cleaned = Cleaned::default();
    for entry in fs::read_dir(cache)?.flatten() {
        let dir = entry.path();
        // Only `<build-id>/` directories hold cached files; the config files stay.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for file in fs::read_dir(&dir)?.flatten() {
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let used = [meta.accessed(), meta.modified()]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(now);
            if now.duration_since(used).unwrap_or_default() > max_age
                && fs::remove_file(file.path()).is_ok()
            {
                cleaned.files += 1;
                cleaned.bytes += meta.len();
            }
        }
        // Removed only if now empty (another process may have just written into it).
        let _ = fs::remove_dir(&dir);
    }
    Ok(Some(cleaned))
}

/// A whole number of seconds in `path`.
fn seconds(path: &Path) -> Option<Duration> {
    let text = fs::read_to_string(path).ok()?;
    text.trim().parse().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use std::fs::{File, FileTimes};

    use super::*;

    fn aged(path: &Path, age: Duration, now: SystemTime) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"0123456789").unwrap();
        let at = now - age;
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_times(FileTimes::new().set_accessed(at).set_modified(at))
            .unwrap();
    }

    /// Files unused for over a week go (and their emptied directories), recent ones stay,
    /// the config files stay; a second call within the interval does nothing; the numbers
    /// in the cache's own files win over the defaults.
    #[test]
    fn removes_what_went_unused_once_per_interval() {
        let cache = std::env::temp_dir().join(format!("probed-clean-{}", std::process::id()));
        let _ = fs::remove_dir_all(&cache);
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        aged(&cache.join("aa11/debuginfo"), 8 * day, now);
        aged(&cache.join("bb22/debuginfo"), day, now);
        aged(&cache.join("cc33/debuginfo.missing"), 30 * day, now);
        let cleaned = clean_if_due(&cache, now).unwrap();
        assert_eq!(
            cleaned,
            Some(Cleaned {
                files: 2,
                bytes: 20
            })
        );
        assert!(!cache.join("aa11").exists());
        assert!(!cache.join("cc33").exists());
        assert!(cache.join("bb22/debuginfo").exists());
        assert_eq!(
            fs::read_to_string(cache.join(INTERVAL_FILE)).unwrap(),
            "86400\n"
        );
        // Not due again within the day.
        aged(&cache.join("dd44/debuginfo"), 9 * day, now);
        assert_eq!(clean_if_due(&cache, now + day / 2).unwrap(), None);
        assert!(cache.join("dd44/debuginfo").exists());
        // The cache's own settings: clean every second, keep files two days.
        fs::write(cache.join(INTERVAL_FILE), "1\n").unwrap();
        fs::write(cache.join(AGE_FILE), "172800\n").unwrap();
        let later = now + Duration::from_secs(2);
        let cleaned = clean_if_due(&cache, later).unwrap();
        assert_eq!(
            cleaned,
            Some(Cleaned {
                files: 1,
                bytes: 10
            })
        );
        assert!(cache.join("bb22/debuginfo").exists());
        assert!(cache.join(AGE_FILE).exists());
        fs::remove_dir_all(&cache).unwrap();
    }
}
