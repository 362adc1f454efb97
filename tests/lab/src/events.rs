//! Structured results a scenario reports.
//!
//! Inside dom0 the scenario library (`tests/lab/dom0/lib.sh`) writes one line
//! per event, `@@circ-lab {json}`, to two places: the lab's event channel (a
//! virtio-serial port that only dom0 writes), which the verdict is read
//! from, and the serial console, for people. The console also carries Xen's
//! and the kernel's messages, which can cut into a line there, so on the
//! console the marker may appear anywhere in a line and a line that does not
//! parse is only counted. [`reconcile`] then holds the two against each
//! other: a run whose console showed an event the channel did not carry, or
//! whose channel carried a line that is not an event, fails.

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

/// Holds what the event channel carried against what the console showed.
///
/// Every event the console showed whole must be one the channel carried (as
/// many times; the order may differ, since concurrent writers reach the two
/// in different orders), and every line of the channel must be an event. The
/// channel may hold more than the console: lines Xen's output cut there.
pub fn reconcile(
    channel: &[Event],
    console: &[Event],
    bad_channel_lines: &[String],
) -> Result<(), String> {
    if let Some(line) = bad_channel_lines.first() {
        return Err(format!(
            "the event channel carried {} line(s) that are not events, first: {:?}",
            bad_channel_lines.len(),
            line.chars().take(200).collect::<String>()
        ));
    }
    if channel.is_empty() && !console.is_empty() {
        return Err(format!(
            "the event channel carried nothing while the console showed {} event(s) \
             (did dom0 find the virtio port? see dom0-dmesg.log)",
            console.len()
        ));
    }
    let mut unmatched: Vec<&Event> = channel.iter().collect();
    for shown in console {
        match unmatched.iter().position(|carried| *carried == shown) {
            Some(i) => {
                unmatched.swap_remove(i);
            }
            None => {
                return Err(format!(
                    "the console showed an event the event channel did not carry: {}",
                    serde_json::to_string(shown).unwrap_or_default()
                ))
            }
        }
    }
    Ok(())
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
    fn reconcile_accepts_a_console_that_lost_lines_in_any_order() {
        let channel = [
            check("a", true),
            check("b", false),
            Event::End { status: 0 },
        ];
        let console = [check("b", false), check("a", true)];
        assert_eq!(reconcile(&channel, &console, &[]), Ok(()));
        assert_eq!(reconcile(&channel, &[], &[]), Ok(()));
    }

    #[test]
    fn reconcile_refuses_what_only_the_console_showed() {
        // A FAIL the channel lost (or a passing check the console invented)
        // must never go unnoticed.
        let channel = [check("a", true), Event::End { status: 0 }];
        let err = reconcile(&channel, &[check("a", false)], &[]).unwrap_err();
        assert!(err.contains(r#""ok":false"#), "{err}");
        // Twice on the console, once on the channel.
        let twice = [check("a", true), check("a", true)];
        assert!(reconcile(&channel, &twice, &[]).is_err());
    }

    #[test]
    fn reconcile_refuses_a_broken_or_silent_channel() {
        let err = reconcile(&[], &[check("a", true)], &[]).unwrap_err();
        assert!(err.contains("carried nothing"), "{err}");
        let err = reconcile(
            &[check("a", true)],
            &[],
            &["@@circ-lab {\"event\":\"check\",\"na".into()],
        )
        .unwrap_err();
        assert!(err.contains("not events"), "{err}");
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
