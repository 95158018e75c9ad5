//! What a reload changes: the config's probes that are no longer wanted are detached, the new
//! ones attached, and every probe whose definition is unchanged is left alone (attached,
//! counting, with its id) — as are probes added with `probed ctl`.

use std::collections::BTreeMap;

use crate::{
    config::ProbeDef,
    service::probe_set::{Origin, ProbeSet},
};

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
