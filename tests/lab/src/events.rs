//! Structured results a scenario prints on the serial console.
//!
//! Inside dom0 the scenario library (`tests/lab/dom0/lib.sh`) prints one line
//! per event: `@@circ-lab {json}`. The serial console also carries Xen's and
//! the kernel's messages, so the marker may appear anywhere in a line and
//! anything that does not parse is ignored.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The marker that starts an event on a console line.
pub const MARKER: &str = "@@circ-lab ";

/// One thing a scenario reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// dom0's lab init is running; Xen and dom0 have booted.
    Boot { uptime_ms: u64 },
    /// An assertion and its outcome.
    Check {
        name: String,
        ok: bool,
        #[serde(default)]
        detail: String,
    },
    /// A measured duration.
    Timing { name: String, ms: u64 },
    /// A measured value worth reporting (JSON of any shape).
    Info {
        name: String,
        value: serde_json::Value,
    },
    /// The scenario finished with this exit status.
    End { status: i32 },
    /// Something broke before the scenario could run.
    Fatal { reason: String },
}

impl Event {
    /// Extracts an event from a console line, if it carries one.
    pub fn parse_line(line: &str) -> Option<Event> {
        let (_, json) = line.split_once(MARKER)?;
        serde_json::from_str(json.trim()).ok()
    }
}

/// What a run observed, with the host time (seconds since QEMU started) each event arrived.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub xen: String,
    pub events: Vec<(f64, Event)>,
}

impl Report {
    /// Why the run failed, or `None` if it passed: it must have ended with
    /// status 0, made at least one check, and every check must have held.
    pub fn failure(&self) -> Option<String> {
        let mut checks = 0;
        let mut failed = Vec::new();
        let mut end = None;
        for (_, event) in &self.events {
            match event {
                Event::Check { name, ok, .. } => {
                    checks += 1;
                    if !ok {
                        failed.push(name.as_str());
                    }
                }
                Event::End { status } => end = Some(*status),
                Event::Fatal { reason } => return Some(format!("fatal: {reason}")),
                _ => {}
            }
        }
        if !failed.is_empty() {
            return Some(format!("failed checks: {}", failed.join(", ")));
        }
        match end {
            None => Some("the scenario never reported its end".into()),
            Some(0) if checks == 0 => Some("the scenario made no checks".into()),
            Some(0) => None,
            Some(status) => Some(format!("the scenario exited with status {status}")),
        }
    }

    /// The time the first `boot` event arrived: QEMU start to dom0 userspace.
    pub fn boot_secs(&self) -> Option<f64> {
        self.events
            .iter()
            .find_map(|(at, e)| matches!(e, Event::Boot { .. }).then_some(*at))
    }

    /// A human-readable summary: checks, timings and values.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "scenario {} on {} Xen", self.scenario, self.xen);
        if let Some(secs) = self.boot_secs() {
            let _ = writeln!(
                out,
                "  timing  xen+dom0 boot (QEMU start to dom0 init)  {secs:.1} s"
            );
        }
        for (_, event) in &self.events {
            let _ = match event {
                Event::Check { name, ok, detail } => {
                    let verdict = if *ok { "ok  " } else { "FAIL" };
                    // The first line says enough; checks.log in the run has the rest.
                    match detail.lines().next() {
                        Some(first) if !first.is_empty() => {
                            writeln!(out, "  {verdict}    {name}: {first}")
                        }
                        _ => writeln!(out, "  {verdict}    {name}"),
                    }
                }
                Event::Timing { name, ms } => {
                    writeln!(out, "  timing  {name}  {:.1} s", *ms as f64 / 1000.0)
                }
                Event::Info { name, value } => writeln!(out, "  info    {name}: {value}"),
                Event::Fatal { reason } => writeln!(out, "  FATAL   {reason}"),
                Event::Boot { .. } | Event::End { .. } => Ok(()),
            };
        }
        let _ = match self.failure() {
            None => writeln!(out, "PASS"),
            Some(why) => writeln!(out, "FAIL: {why}"),
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(events: Vec<Event>) -> Report {
        Report {
            scenario: "t".into(),
            xen: "stock".into(),
            events: events.into_iter().map(|e| (0.0, e)).collect(),
        }
    }

    fn check(name: &str, ok: bool) -> Event {
        Event::Check {
            name: name.into(),
            ok,
            detail: String::new(),
        }
    }

    #[test]
    fn parses_markers_anywhere_in_a_line() {
        let line = r#"(XEN) noise @@circ-lab {"event":"timing","name":"pv_create","ms":11000}"#;
        assert_eq!(
            Event::parse_line(line),
            Some(Event::Timing {
                name: "pv_create".into(),
                ms: 11000
            })
        );
        assert_eq!(Event::parse_line("[    1.0] random kernel line"), None);
        assert_eq!(Event::parse_line("@@circ-lab {not json"), None);
        assert_eq!(Event::parse_line(r#"@@circ-lab {"event":"bogus"}"#), None);
    }

    #[test]
    fn passes_only_with_checks_all_ok_and_a_clean_end() {
        assert_eq!(
            report(vec![check("a", true), Event::End { status: 0 }]).failure(),
            None
        );
        assert!(report(vec![check("a", false), Event::End { status: 0 }])
            .failure()
            .unwrap()
            .contains("a"));
        assert!(report(vec![Event::End { status: 0 }])
            .failure()
            .unwrap()
            .contains("no checks"));
        assert!(report(vec![check("a", true)])
            .failure()
            .unwrap()
            .contains("never reported"));
        assert!(report(vec![check("a", true), Event::End { status: 1 }])
            .failure()
            .unwrap()
            .contains("status 1"));
        assert!(report(vec![Event::Fatal {
            reason: "no disk".into()
        }])
        .failure()
        .unwrap()
        .contains("no disk"));
    }

    #[test]
    fn summary_lists_failures() {
        let text = report(vec![check("dom0 listed", false), Event::End { status: 0 }]).summary();
        assert!(text.contains("FAIL    dom0 listed"), "{text}");
        assert!(
            text.ends_with("FAIL: failed checks: dom0 listed\n"),
            "{text}"
        );
    }
}
