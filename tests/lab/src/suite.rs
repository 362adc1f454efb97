//! Suites: named lists of scenarios, each with the hypervisors it must pass
//! on, read from `lab.toml` (`[suites]`). CI and the demo are suites.

use std::fmt;
use std::str::FromStr;

use crate::{LabConfig, LabError, Result, XenFlavor};

/// Which hypervisors a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XenChoice {
    Stock,
    Patched,
    Both,
}

impl XenChoice {
    /// The hypervisors, in the order they run.
    pub fn flavors(self) -> &'static [XenFlavor] {
        match self {
            XenChoice::Stock => &[XenFlavor::Stock],
            XenChoice::Patched => &[XenFlavor::Patched],
            XenChoice::Both => &[XenFlavor::Stock, XenFlavor::Patched],
        }
    }
}

impl FromStr for XenChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "stock" => Ok(XenChoice::Stock),
            "patched" => Ok(XenChoice::Patched),
            "both" => Ok(XenChoice::Both),
            other => Err(format!(
                "unknown hypervisor choice `{other}` (stock, patched or both)"
            )),
        }
    }
}

impl fmt::Display for XenChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XenChoice::Stock => "stock",
            XenChoice::Patched => "patched",
            XenChoice::Both => "both",
        })
    }
}

/// One scenario of a suite and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteEntry {
    pub scenario: String,
    pub xen: XenChoice,
}

/// A suite, in running order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suite {
    pub name: String,
    pub entries: Vec<SuiteEntry>,
}

impl Suite {
    /// Suite `name` of the lab config, each scenario checked to exist.
    pub fn load(config: &LabConfig, name: &str) -> Result<Self> {
        let list = config
            .suites
            .get(name)
            .ok_or_else(|| LabError::UnknownSuite {
                name: name.to_owned(),
                known: config.suites.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
        let mut entries = Vec::with_capacity(list.len());
        for item in list {
            let bad = |why: String| LabError::BadSuite {
                suite: name.to_owned(),
                why,
            };
            let (scenario, xen) = item
                .split_once(':')
                .ok_or_else(|| bad(format!("`{item}` is not SCENARIO:HYPERVISORS")))?;
            let xen = xen.parse().map_err(bad)?;
            crate::scenario_script(config, scenario)?;
            entries.push(SuiteEntry {
                scenario: scenario.to_owned(),
                xen,
            });
        }
        Ok(Self {
            name: name.to_owned(),
            entries,
        })
    }

    /// Narrows the suite to `names` (kept in the suite's order). A name the
    /// suite does not hold is an error: a typo must not run nothing and pass.
    pub fn only(mut self, names: &[String]) -> Result<Self> {
        if names.is_empty() {
            return Ok(self);
        }
        let unknown: Vec<&str> = names
            .iter()
            .filter(|n| !self.entries.iter().any(|e| &e.scenario == *n))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(LabError::NotInSuite {
                suite: self.name.clone(),
                names: unknown.join(", "),
                known: self.scenario_names().join(", "),
            });
        }
        self.entries.retain(|e| names.contains(&e.scenario));
        Ok(self)
    }

    pub fn scenario_names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.scenario.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> LabConfig {
        let root = LabConfig::find_root(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        LabConfig::load(&root, "/nonexistent".into()).unwrap()
    }

    #[test]
    fn shipped_suites_load_and_name_real_scenarios() {
        let config = config();
        for name in ["ci", "demo"] {
            let suite = Suite::load(&config, name).unwrap();
            assert!(!suite.entries.is_empty(), "{name}");
        }
        let ci = Suite::load(&config, "ci").unwrap();
        assert_eq!(ci.entries[0].scenario, "smoke");
        assert_eq!(ci.entries[0].xen, XenChoice::Both);
    }

    #[test]
    fn an_unknown_scenario_name_is_an_error_not_an_empty_run() {
        let ci = Suite::load(&config(), "ci").unwrap();
        let err = ci.clone().only(&["cas".into(), "csa".into()]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("csa") && text.contains("smoke"), "{text}");
        let narrowed = ci.only(&["cas".into()]).unwrap();
        assert_eq!(narrowed.scenario_names(), ["cas"]);
    }

    #[test]
    fn an_unknown_suite_or_bad_entry_is_an_error() {
        let mut config = config();
        assert!(Suite::load(&config, "nightly")
            .unwrap_err()
            .to_string()
            .contains("ci"));
        config
            .suites
            .insert("bad".into(), vec!["smoke:sometimes".into()]);
        assert!(Suite::load(&config, "bad")
            .unwrap_err()
            .to_string()
            .contains("sometimes"));
        config
            .suites
            .insert("bad".into(), vec!["nope:stock".into()]);
        assert!(Suite::load(&config, "bad")
            .unwrap_err()
            .to_string()
            .contains("unknown scenario `nope`"));
    }
}
