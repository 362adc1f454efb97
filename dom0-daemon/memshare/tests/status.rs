//! The daemon loop and the reports, over the fakes.

use circ_hv::fake::{FakeHypervisor, FakeXenStore};
use circ_hv::{DomId, DomainType, Gfn, Transaction, XenStore, PAGE_SIZE};
use circ_memshare::policy::enable;
use circ_memshare::{run, DaemonStatus, MemshareConfig, ShareStatus};

fn host() -> (FakeHypervisor, FakeXenStore) {
    let hv = FakeHypervisor::new();
    let xs = FakeXenStore::new();
    xs.write(Transaction::NONE, "/local/domain/0/name", b"Domain-0")
        .unwrap();
    for id in 1..=3u16 {
        let dom = DomId(id);
        hv.add_domain(dom, DomainType::Pvh, 1024);
        xs.write(
            Transaction::NONE,
            &format!("/local/domain/{id}/name"),
            format!("g{id}").as_bytes(),
        )
        .unwrap();
        for g in 0..16 {
            let fill = [g as u8 + 1; PAGE_SIZE];
            hv.set_page(dom, Gfn(g), &fill);
        }
    }
    enable(&hv, &xs, "g1").unwrap();
    enable(&hv, &xs, "g2").unwrap();
    (hv, xs)
}

/// Runs the daemon with `config`, plus JSON output, a status file and a
/// metrics file, and no rate limit; returns what it printed.
fn run_unthrottled(
    hv: &FakeHypervisor,
    xs: &FakeXenStore,
    config: MemshareConfig,
    status_file: &std::path::Path,
    prom: &std::path::Path,
) -> Vec<u8> {
    let config = MemshareConfig {
        json: true,
        status_file: status_file.to_owned(),
        prometheus: Some(prom.to_owned()),
        pages_per_sec: 0,
        cpu_budget: 1.0,
        ..config
    };
    let mut out = Vec::new();
    run(hv, &hv.foreign_memory(), xs, &config, &mut out).unwrap();
    out
}

#[test]
fn once_shares_writes_the_status_file_and_prometheus() {
    let (hv, xs) = host();
    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("run/memshare.json");
    let prom = dir.path().join("memshare.prom");
    let once = MemshareConfig {
        once: true,
        ..MemshareConfig::default()
    };
    let out = run_unthrottled(&hv, &xs, once, &status_file, &prom);

    let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(line["round"], 1);
    assert_eq!(
        line["pages_shared"], 16,
        "--once shares without a stable round"
    );

    let daemon = DaemonStatus::read(&status_file).unwrap();
    assert_eq!(daemon.rounds, 1);
    let g2 = daemon.domains.iter().find(|d| d.name == "g2").unwrap();
    assert_eq!((g2.pages_scanned, g2.pages_shared), (16, 16));

    let status = ShareStatus::collect(&hv, &xs, Some(daemon)).unwrap();
    let v = serde_json::to_value(&status).unwrap();
    assert_eq!(v["host"]["freed_pages"], 16);
    assert_eq!(v["host"]["sharing_supported"], true);
    let doms = v["domains"].as_array().unwrap();
    let by_name = |n: &str| doms.iter().find(|d| d["name"] == n).unwrap();
    assert_eq!(by_name("g1")["policy"], "eligible");
    assert_eq!(by_name("g3")["policy"], "not-opted-in");
    assert_eq!(by_name("g3")["shr_pages"], 0);
    assert_eq!(by_name("Domain-0")["policy"], "control-domain");
    assert_eq!(by_name("g2")["pages_shared"], 16);
    for key in [
        "domid",
        "name",
        "type",
        "state",
        "policy",
        "memory_kib",
        "shr_pages",
        "pages_scanned",
        "pages_shared",
        "zero_pages_shared",
        "unshared_since",
        "rejected_changed",
    ] {
        assert!(by_name("g1").get(key).is_some(), "missing {key}");
    }

    let text = status.to_text();
    assert!(text.contains("16 pages freed"), "{text}");
    assert!(text
        .lines()
        .any(|l| l.contains("g3") && l.contains("not-opted-in")));

    let prom = std::fs::read_to_string(&prom).unwrap();
    assert!(prom.contains("circ_memshare_freed_pages 16\n"), "{prom}");
    assert!(prom.contains("circ_memshare_domain_pages_shared{domid=\"2\",name=\"g2\"} 16\n"));
    assert!(
        !prom.contains("name=\"g3\""),
        "only eligible domains get series"
    );
}

#[test]
fn status_without_daemon_or_sharing_still_reports() {
    let (hv, xs) = host();
    hv.set_sharing_supported(false);
    let status = ShareStatus::collect(&hv, &xs, None).unwrap();
    assert!(!status.host.sharing_supported);
    assert!(status.daemon.is_none());
    assert_eq!(status.domains.len(), 4);
    assert!(status.to_text().contains("not supported"));
}

#[test]
fn domain_filter_and_pruning_of_keys_of_gone_domains() {
    let (hv, xs) = host();
    enable(&hv, &xs, "g3").unwrap();
    hv.remove_domain(DomId(3));
    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("s.json");
    let config = MemshareConfig {
        once: true,
        domains: ["g1", "g2", "no-such-guest"].map(String::from).to_vec(),
        status_file,
        ..MemshareConfig::default()
    };
    let mut out = Vec::new();
    run(&hv, &hv.foreign_memory(), &xs, &config, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("round 1: 2 domain(s)"), "{text}");
    assert!(
        xs.read(Transaction::NONE, "/local/domain/0/circular/memshare/3")
            .is_err(),
        "the key of the destroyed domain is gone"
    );
    assert!(xs
        .read(Transaction::NONE, "/local/domain/0/circular/memshare/1")
        .is_ok());
}

#[test]
fn status_counts_pages_scanned_over_rounds_and_the_daemons_cpu_time() {
    let (hv, xs) = host();
    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("s.json");
    let prom = dir.path().join("m.prom");
    run_unthrottled(
        &hv,
        &xs,
        MemshareConfig {
            rounds: Some(3),
            interval: 0.0,
            ..MemshareConfig::default()
        },
        &status_file,
        &prom,
    );

    // g1 and g2, 16 pages each, three rounds.
    let daemon = DaemonStatus::read(&status_file).unwrap();
    assert_eq!(daemon.rounds, 3);
    assert_eq!(daemon.pages_scanned_total, 3 * 32);
    let last = daemon.last_round.clone().unwrap();
    assert_eq!(last.pages_scanned, 32);
    // Page g of every guest is filled with g + 1: 16 distinct contents.
    assert_eq!((last.duplicate_pages, last.zero_pages), (16, 0));

    let status = ShareStatus::collect(&hv, &xs, Some(daemon.clone())).unwrap();
    let v = serde_json::to_value(&status).unwrap();
    let d = &v["daemon"];
    assert_eq!(d["pages_scanned_total"], 96);
    assert_eq!(d["last_round"]["duplicate_pages"], 16);
    for key in [
        "cpu_user_ms",
        "cpu_system_ms",
        "cpu_seconds",
        "started_unix_ms",
    ] {
        assert!(d.get(key).is_some_and(|x| x.is_number()), "missing {key}");
    }
    let cpu_ms = daemon.cpu_user_ms + daemon.cpu_system_ms;
    assert_eq!(d["cpu_seconds"].as_f64().unwrap(), cpu_ms as f64 / 1000.0);
    // 96 pages are 96/262144 GiB.
    let per_gib = d["cpu_seconds_per_gib_scanned"].as_f64().unwrap();
    assert!((per_gib - cpu_ms as f64 / 1000.0 * 262_144.0 / 96.0).abs() < 1e-6);
    assert!(
        status.to_text().contains("3 rounds, 96 pages scanned"),
        "{}",
        status.to_text()
    );

    let prom = std::fs::read_to_string(&prom).unwrap();
    assert!(prom.contains("# TYPE circ_memshare_pages_scanned_total counter\n"));
    assert!(
        prom.contains("circ_memshare_pages_scanned_total 96\n"),
        "{prom}"
    );
    assert!(
        prom.contains("\ncirc_memshare_cpu_seconds_total "),
        "{prom}"
    );
}

#[test]
fn a_status_file_of_an_older_daemon_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.json");
    std::fs::write(
        &path,
        br#"{"pid": 7, "started_unix_ms": 1, "updated_unix_ms": 2, "rounds": 4,
            "last_round": null, "domains": []}"#,
    )
    .unwrap();
    let old = DaemonStatus::read(&path).unwrap();
    assert_eq!(
        (old.rounds, old.pages_scanned_total, old.cpu_user_ms),
        (4, 0, 0)
    );
    let (hv, xs) = host();
    let status = ShareStatus::collect(&hv, &xs, Some(old)).unwrap();
    let d = status.daemon.unwrap();
    assert_eq!(
        d.cpu_seconds_per_gib_scanned, None,
        "nothing scanned: no ratio"
    );
}

#[test]
fn an_invalid_config_is_refused_before_the_first_round() {
    let (hv, xs) = host();
    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("s.json");
    let config = MemshareConfig {
        once: true,
        cpu_budget: 0.0,
        status_file: status_file.clone(),
        ..MemshareConfig::default()
    };
    let mut out = Vec::new();
    let err = run(&hv, &hv.foreign_memory(), &xs, &config, &mut out).unwrap_err();
    assert!(
        matches!(&err, circ_memshare::MemshareError::Config(e) if e.field == "cpu_budget"),
        "{err}"
    );
    assert!(out.is_empty() && !status_file.exists());
}
