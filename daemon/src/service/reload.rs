//! What a reload changes: the config's probes that are no longer wanted are detached, the new
//! ones attached, and every probe whose definition is unchanged is left alone (attached,
//! counting, with its id) — as are probes added with `probed ctl`.

use std::collections::BTreeMap;

use crate::{
    config::{self, Config, ProbeDef, Source},
    service::{
        daemon::Daemon,
        kernel::Kernel,
        op_error::ApplyError,
        prepare::{self, Done, Outcome},
        probe_set::{Origin, ProbeSet},
    },
};

/// Whether a reload is under way (its new probes being prepared off the loop), and whether
/// another SIGHUP came meanwhile.
#[derive(Debug, Default)]
pub struct ReloadState {
    in_flight: bool,
    again: bool,
}

impl<K: Kernel> Daemon<K> {
    /// Whether a reload's probes are being prepared.
    pub fn reload_in_flight(&self) -> bool {
        self.reload.in_flight
    }

    /// A SIGHUP while a reload is prepared: reread the file once that one is applied (once,
    /// however many came: the file is read then).
    pub fn queue_reload(&mut self) {
        self.reload.again = true;
    }

    /// Rereads the config file (SIGHUP) and prepares the probes it adds off the loop
    /// (prepare.rs): [`Daemon::finish_reload`] applies them when [`Done::Reload`] arrives. A
    /// config that does not load is rejected at once and changes nothing.
    pub fn start_reload(&mut self) -> Result<(), ApplyError> {
        let (source, config) = config::load(&self.config_path).map_err(ApplyError::Config)?;
        let adds = self.config_adds(&config);
        prepare::off_loop(&self.prepared_tx, move || Done::Reload {
            prepared: prepare::prepare_all(adds),
            source,
            config: Box::new(config),
        })
        .map_err(ApplyError::Unplaced)?;
        self.reload.in_flight = true;
        Ok(())
    }

    /// Applies a prepared reload (nothing changes unless all of it checks out). Returns the
    /// outcome, and whether a SIGHUP came meanwhile (the caller starts that reload).
    pub fn finish_reload(
        &mut self,
        source: &Source,
        config: &Config,
        prepared: Vec<(ProbeDef, Outcome)>,
    ) -> (Result<String, ApplyError>, bool) {
        self.reload.in_flight = false;
        let result = self.apply_prepared(source, config, prepared);
        if result.is_ok() {
            self.drain_timeout = config.drain_timeout();
            crate::logging::apply_config_level(
                config.log_level.as_ref().map(|l| l.get_ref().as_str()),
            );
        }
        (result, std::mem::take(&mut self.reload.again))
    }
}

/// The plan of a reload.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Probes to detach (config probes not in the new config).
    pub remove: Vec<u32>,
    /// Probes to attach, in config order.
    pub add: Vec<ProbeDef>,
    /// Probes left as they are.
    pub unchanged: usize,
}

/// Compares the running config probes with the new config's.
pub fn diff(running: &ProbeSet, wanted: &[ProbeDef]) -> Diff {
    // A definition may appear once per config (checked at load), so a map by definition is
    // exact.
    let mut current: BTreeMap<&ProbeDef, u32> = running
        .iter()
        .filter(|(_, e)| e.origin == Origin::Config)
        .map(|(id, e)| (&e.def, id))
        .collect();
    let mut out = Diff::default();
    for def in wanted {
        if current.remove(def).is_some() {
            out.unchanged += 1;
        } else {
            out.add.push(def.clone());
        }
    }
    out.remove = current.into_values().collect();
    out.remove.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::probe_set::Entry;

    fn def(spec: &str, rate: Option<u64>) -> ProbeDef {
        ProbeDef {
            spec: spec.into(),
            output: "stdout".into(),
            pid: None,
            container: None,
            rate_limit: rate.and_then(std::num::NonZeroU64::new),
            burst: None,
            disable_above: None,
            stack: None,
            stack_copy_kib: None,
        }
    }

    /// Unchanged probes stay, changed ones are replaced (a changed setting is a different
    /// probe), removed ones go, ctl probes are never touched.
    #[test]
    fn reload_diff() {
        let mut set = ProbeSet::new(16);
        let mut put = |d: ProbeDef, origin| {
            let (id, _) = set.reserve().unwrap();
            set.insert(
                id,
                Entry {
                    def: d,
                    origin,
                    disabled: None,
                    removing: false,
                },
            );
            id
        };
        let a = put(def("uprobe:/bin/a:f", None), Origin::Config);
        let b = put(def("uprobe:/bin/b:f", None), Origin::Config);
        let c = put(def("uprobe:/bin/c:f", Some(5)), Origin::Config);
        let _ctl = put(def("uprobe:/bin/d:f", None), Origin::Ctl);
        let wanted = vec![
            def("uprobe:/bin/a:f", None),
            def("uprobe:/bin/c:f", Some(6)),
            def("uprobe:/bin/e:f", None),
            // The same as a ctl probe: a config probe of its own.
            def("uprobe:/bin/d:f", None),
        ];
        let d = diff(&set, &wanted);
        assert_eq!(d.unchanged, 1);
        assert_eq!(d.remove, vec![b, c]);
        assert_eq!(
            d.add,
            vec![
                def("uprobe:/bin/c:f", Some(6)),
                def("uprobe:/bin/e:f", None),
                def("uprobe:/bin/d:f", None)
            ]
        );
        let _ = a;
        // The same config again changes nothing.
        let same: Vec<ProbeDef> = set
            .iter()
            .filter(|(_, e)| e.origin == Origin::Config)
            .map(|(_, e)| e.def.clone())
            .collect();
        let d = diff(&set, &same);
        assert_eq!((d.unchanged, d.remove.len(), d.add.len()), (3, 0, 0));
    }
}
