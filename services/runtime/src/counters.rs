//! Counters defined once: name, help text and the values of their one
//! label, so that each is described and every series exported at zero from
//! the start (a series that appears with its first increment has no
//! earlier sample for a rate to compare with).

use metrics::Label;

/// A counter and the values of its one label besides the fixed ones (such
/// as `stage`), if it has one.
#[derive(Debug)]
pub struct Counter {
    pub name: &'static str,
    pub help: &'static str,
    pub label: Option<(&'static str, &'static [&'static str])>,
}

fn labels(
    fixed: &[(&'static str, &'static str)],
    more: Option<(&'static str, &'static str)>,
) -> Vec<Label> {
    fixed
        .iter()
        .copied()
        .chain(more)
        .map(|(k, v)| Label::from_static_parts(k, v))
        .collect()
}

impl Counter {
    /// Describes it and exports each of its series at zero, with the
    /// `fixed` labels.
    pub fn describe(&self, fixed: &[(&'static str, &'static str)]) {
        metrics::describe_counter!(self.name, self.help);
        match self.label {
            Some((key, values)) => {
                for value in values {
                    metrics::counter!(self.name, labels(fixed, Some((key, *value)))).absolute(0);
                }
            }
            None => metrics::counter!(self.name, labels(fixed, None)).absolute(0),
        }
    }

    /// Adds `n` to the series of `value` (one of its label's values), with
    /// the `fixed` labels.
    pub fn add(&self, fixed: &[(&'static str, &'static str)], value: Option<&'static str>, n: u64) {
        let more = match (self.label, value) {
            (Some((key, values)), Some(v)) => {
                debug_assert!(values.contains(&v), "{} has no {key}={v}", self.name);
                Some((key, v))
            }
            _ => None,
        };
        metrics::counter!(self.name, labels(fixed, more)).increment(n);
    }

    /// Panics unless each counter is named once, ends in `_total` and has
    /// help text: for the unit tests of a set of definitions.
    pub fn check_all(counters: &[&Counter]) {
        let mut names: Vec<&str> = counters.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), counters.len(), "a counter is defined twice");
        for c in counters {
            assert!(c.name.ends_with("_total"), "{}", c.name);
            assert!(!c.help.is_empty(), "{} has no help", c.name);
        }
    }
}
