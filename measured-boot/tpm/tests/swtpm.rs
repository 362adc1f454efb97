//! The TPM side against a real swtpm, one private instance per test (so the
//! tests run in parallel). A test that cannot start swtpm fails.

use anyhow::Context as _;
use circ_measured_boot::akpub::AkPublic;
use circ_measured_boot::eventlog::{self, EventKind};
use circ_measured_boot::policy::{Policy, Refusal};
use circ_measured_boot::quote::QuoteFile;
use circ_measured_boot::replay::Replay;
use circ_measured_boot::verify::{self, Failure, Verdict};
use circ_measured_boot::{Digests, EventLog, HashAlg, Measurement, PcrIndex, PcrSet};
use circ_tpm::swtpm::Swtpm;
use circ_tpm::{attest, measure, AkBlob, EsapiTpm, Secret, Tpm, TpmError};

struct Fixture {
    _dir: tempfile::TempDir,
    _swtpm: Swtpm,
    tpm: EsapiTpm,
    log: EventLog,
}

fn fixture() -> anyhow::Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let swtpm = Swtpm::start(&dir.path().join("tpm")).context("starting swtpm")?;
    let tpm = EsapiTpm::open(&swtpm.tcti())?;
    let log = EventLog::open(&dir.path().join("measurements.log"))?;
    Ok(Fixture {
        _dir: dir,
        _swtpm: swtpm,
        tpm,
        log,
    })
}

fn kernel(domain: &str, path: &str, content: &[u8]) -> Measurement {
    Measurement {
        pcr: PcrIndex::new(15).unwrap(),
        kind: EventKind::DomainKernel,
        digests: Digests::of_bytes(content, false),
        domain: Some(domain.into()),
        path: Some(path.into()),
        description: None,
    }
}

/// Three measured events, an AK, and a quote over nonce `n1`.
fn measured_and_quoted(f: &mut Fixture) -> anyhow::Result<(AkBlob, AkPublic, QuoteFile)> {
    for (i, content) in [b"kernel-a", b"kernel-b", b"kernel-c"].iter().enumerate() {
        measure::record(
            &mut f.tpm,
            &mut f.log,
            kernel("web1", &format!("/k{i}"), *content),
        )?;
    }
    let ak = f.tpm.create_ak()?;
    let public = ak.public_key()?;
    let bytes = std::fs::read(f.log.path())?; // the fixture holds the log's lock
    let quote = attest::quote(&mut f.tpm, &ak, b"n1", &bytes, &PcrSet::new())?;
    Ok((ak, public, quote))
}

fn verify_json(
    q: &QuoteFile,
    ak: &AkPublic,
    nonce: &[u8],
    policy: Option<&Policy>,
) -> verify::Outcome {
    verify::verify(q.to_json().unwrap().as_bytes(), ak, nonce, policy)
}

#[test]
fn extend_then_replay_matches_the_tpm() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let pcr = PcrIndex::new(15).unwrap();
    for i in 0..3u8 {
        measure::record(&mut f.tpm, &mut f.log, kernel("d", "/k", &[i]))?;
    }
    let tpm_value = f.tpm.read_pcrs(&std::iter::once(pcr).collect())?;
    let replayed = Replay::of(f.log.events()).value(HashAlg::Sha256, pcr);
    assert_eq!(tpm_value.get(&pcr), replayed.as_ref());
    assert_ne!(replayed, Some(vec![0; 32]));
    assert_eq!(f.tpm.flush_transients()?, 0, "nothing left loaded");
    Ok(())
}

#[test]
fn a_stale_log_is_refused_before_measuring() -> anyhow::Result<()> {
    let mut f = fixture()?;
    // The log says something the TPM never saw (as after a reboot).
    f.log.append(kernel("d", "/k", b"old boot"))?;
    let err = measure::record(&mut f.tpm, &mut f.log, kernel("d", "/k", b"new")).unwrap_err();
    assert!(
        matches!(err, measure::MeasureError::OutOfStep { .. }),
        "{err}"
    );
    assert_eq!(f.log.events().len(), 1, "nothing appended");
    Ok(())
}

#[test]
fn quote_verifies_with_its_ak_and_nonce() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let (_ak, public, quote) = measured_and_quoted(&mut f)?;
    let outcome = verify_json(&quote, &public, b"n1", None);
    outcome.result?;
    assert_eq!(outcome.events.len(), 3);
    assert!(outcome.events.iter().all(|(_, v)| *v == Verdict::Measured));
    let info = outcome.quote.context("quote info")?;
    assert_eq!(info.extra_data, b"n1");

    // The AK survives as a file: a second quote with the reloaded blob verifies.
    let ak = AkBlob::from_json(_ak.to_json().as_bytes())?;
    let bytes = std::fs::read(f.log.path())?; // the fixture holds the log's lock
    let again = attest::quote(&mut f.tpm, &ak, b"n2", &bytes, &PcrSet::new())?;
    verify_json(&again, &public, b"n2", None).result?;
    assert_eq!(f.tpm.flush_transients()?, 0, "quote flushed its keys");
    Ok(())
}

#[test]
fn pem_export_round_trips() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let ak = f.tpm.create_ak()?;
    let pem = ak.public_key()?.to_pem()?;
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(AkPublic::from_pem(&pem)?, ak.public_key()?);
    Ok(())
}

#[test]
fn wrong_nonce_is_a_replay() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let (_, public, quote) = measured_and_quoted(&mut f)?;
    let outcome = verify_json(&quote, &public, b"fresh", None);
    assert!(
        matches!(outcome.result, Err(Failure::WrongNonce { ref found, .. }) if found == "6e31"),
        "{:?}",
        outcome.result
    );
    assert!(outcome.events.is_empty(), "no verdicts on a stale quote");
    Ok(())
}

#[test]
fn quote_signed_by_another_ak_is_refused() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let (_, _, quote) = measured_and_quoted(&mut f)?;
    let other = f.tpm.create_ak()?.public_key()?;
    let outcome = verify_json(&quote, &other, b"n1", None);
    let err = outcome.result.unwrap_err();
    assert!(matches!(err, Failure::Signature(_)), "{err}");
    assert!(format!("{:#}", anyhow::Error::from(err))
        .contains("does not verify with this attestation key"));
    Ok(())
}

#[test]
fn edited_log_is_named_or_fails_replay() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let (_, public, mut quote) = measured_and_quoted(&mut f)?;

    // A naive edit breaks the record's checksum: the record is named.
    let mut naive = quote.clone();
    naive.event_log = naive.event_log.replacen("path=/k1", "path=/k9", 1);
    let err = verify_json(&naive, &public, b"n1", None)
        .result
        .unwrap_err();
    assert!(
        matches!(
            err,
            Failure::Log(eventlog::LogError::Corrupt { record: 1, .. })
        ),
        "{err}"
    );

    // A careful forger re-encodes the record: only the TPM can tell.
    let events = eventlog::parse(&std::fs::read(f.log.path())?)?;
    let mut lines: Vec<String> = quote.event_log.lines().map(str::to_owned).collect();
    lines[2] = eventlog::encode_record(1, &kernel("web1", "/k1", b"evil"))?;
    quote.event_log = lines.join("\n") + "\n";
    let err = verify_json(&quote, &public, b"n1", None)
        .result
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Failure::DoesNotReplay(_)), "{msg}");
    assert!(
        msg.contains("PCR 15 matches no prefix of the log's 3 events"),
        "{msg}"
    );
    assert_eq!(events.len(), 3);
    Ok(())
}

#[test]
fn truncated_log_is_refused() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let (_, public, quote) = measured_and_quoted(&mut f)?;

    // Last record removed whole.
    let mut short = quote.clone();
    let keep: Vec<&str> = quote.event_log.lines().take(3).collect();
    short.event_log = keep.join("\n") + "\n";
    let err = verify_json(&short, &public, b"n1", None)
        .result
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("matches no prefix of the log's 2 events"),
        "{err}"
    );

    // Cut in the middle of the last record.
    let mut torn = quote.clone();
    torn.event_log.truncate(quote.event_log.len() - 10);
    let err = verify_json(&torn, &public, b"n1", None).result.unwrap_err();
    assert!(
        matches!(
            err,
            Failure::Log(eventlog::LogError::TornTail { record: 2, .. })
        ),
        "{err}"
    );
    Ok(())
}

#[test]
fn logged_but_not_extended_is_explained() -> anyhow::Result<()> {
    let mut f = fixture()?;
    measure::record(&mut f.tpm, &mut f.log, kernel("d", "/k", b"1"))?;
    // What a crash between the log's fsync and PCR_Extend leaves behind.
    f.log.append(kernel("d", "/k", b"2"))?;
    let ak = f.tpm.create_ak()?;
    let bytes = std::fs::read(f.log.path())?; // the fixture holds the log's lock
    let q = attest::quote(&mut f.tpm, &ak, b"n", &bytes, &PcrSet::new())?;
    let err = verify_json(&q, &ak.public_key()?, b"n", None)
        .result
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("PCR 15 matches only the first 1 of the log's 2 events"),
        "{err}"
    );
    Ok(())
}

#[test]
fn policy_mismatch_names_the_file() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let (_, public, quote) = measured_and_quoted(&mut f)?;
    let mut policy = Policy::new();
    policy.allow_file("/k0", Digests::of_bytes(b"kernel-a", false).sha256);
    policy.allow_file("/k1", Digests::of_bytes(b"kernel-b", false).sha256);
    policy.allow_file("/k2", Digests::of_bytes(b"kernel-c", false).sha256);
    let ok = verify_json(&quote, &public, b"n1", Some(&policy));
    ok.result?;
    assert!(ok.events.iter().all(|(_, v)| *v == Verdict::Allowed));

    let mut policy = Policy::new();
    policy.allow_file("/k0", Digests::of_bytes(b"kernel-a", false).sha256);
    policy.allow_file("/k1", Digests::of_bytes(b"an older kernel", false).sha256);
    policy.allow_file("/k2", Digests::of_bytes(b"kernel-c", false).sha256);
    let outcome = verify_json(&quote, &public, b"n1", Some(&policy));
    let verdicts: Vec<&Verdict> = outcome.events.iter().map(|(_, v)| v).collect();
    assert_eq!(verdicts[0], &Verdict::Allowed);
    assert!(
        matches!(verdicts[1], Verdict::Refused(Refusal::FileDigest { path, .. }) if path == "/k1")
    );
    let err = outcome.result.unwrap_err();
    assert!(err.to_string().contains("not allowed for /k1"), "{err}");
    Ok(())
}

#[test]
fn unseal_refuses_after_a_pcr_changes() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let pcrs: PcrSet = "16,23".parse().map_err(anyhow::Error::msg)?;
    let secret = Secret::new(b"disk key".to_vec());
    let blob = f.tpm.seal(&secret, &pcrs)?;
    let blob = circ_tpm::SealedBlob::from_json(blob.to_json().as_bytes())?;
    assert_eq!(f.tpm.unseal(&blob)?, secret);

    f.tpm.extend(
        PcrIndex::new(23).unwrap(),
        &Digests::of_bytes(b"changed", false),
    )?;
    let err = f.tpm.unseal(&blob).unwrap_err();
    assert!(matches!(err, TpmError::PcrPolicy), "{err}");
    assert_eq!(
        f.tpm.flush_transients()?,
        0,
        "sessions and objects flushed on failure too"
    );
    Ok(())
}

#[test]
fn the_ak_public_area_says_what_the_verifier_checks() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let (ak, public, quote) = measured_and_quoted(&mut f)?;
    public.check_public_area(&ak.public)?;
    assert_eq!(
        quote.ak_public, ak.public,
        "the quote carries the AK's area"
    );
    let area = circ_measured_boot::wire::parse_ecc_public(&ak.public)?;
    assert_eq!(
        circ_measured_boot::wire::attr::names(area.attributes),
        [
            "fixedTPM",
            "fixedParent",
            "sensitiveDataOrigin",
            "userWithAuth",
            "noDA",
            "restricted",
            "sign"
        ],
        "the AK template's attributes"
    );
    assert_eq!(area.attributes, circ_measured_boot::akpub::AK_TEMPLATE);
    // What our parser reads is what the TSS marshalled.
    assert_eq!(area.marshal(), ak.public);

    // Another object's public area (a sealed secret's, from the same TPM)
    // in place of the AK's: refused after the signature checked.
    let sealed = f.tpm.seal(
        &Secret::new(b"s".to_vec()),
        &"16".parse().map_err(anyhow::Error::msg)?,
    )?;
    let mut other = quote.clone();
    other.ak_public = sealed.public;
    let err = verify_json(&other, &public, b"n1", None)
        .result
        .unwrap_err();
    let msg = format!("{:#}", anyhow::Error::from(err));
    assert!(msg.contains("not an ECC public area (type 0x0008"), "{msg}");
    Ok(())
}

#[test]
fn the_bind_key_is_an_ecdh_key_fixed_to_this_tpm() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let bind = f.tpm.create_bind_key()?;
    let area = circ_measured_boot::wire::parse_ecc_public(&bind.public)?;
    assert_eq!(
        circ_measured_boot::wire::attr::names(area.attributes),
        [
            "fixedTPM",
            "fixedParent",
            "sensitiveDataOrigin",
            "userWithAuth",
            "noDA",
            "decrypt"
        ],
        "unrestricted, decrypt only: no signing, no duplication"
    );
    // TPM_ALG_ECDH (0x0019) with SHA-256 (0x000b), P-256 (0x0003).
    assert_eq!(area.scheme, Some((0x0019, 0x000b)));
    assert_eq!(area.curve, 0x0003);
    let point = bind.point()?;
    assert_eq!((point.len(), point[0]), (65, 4));
    // ZGen on our own point: deterministic, 32 bytes, nothing left loaded.
    let z1 = f.tpm.ecdh_zgen(&bind, &point)?;
    let z2 = f.tpm.ecdh_zgen(&bind, &point)?;
    assert_eq!(z1.expose().len(), 32);
    assert_eq!(z1, z2);
    // Not a point: refused before the TPM sees it, or by the TPM.
    assert!(matches!(
        f.tpm.ecdh_zgen(&bind, &point[..64]),
        Err(TpmError::BadPoint)
    ));
    let mut off_curve = point.clone();
    off_curve[64] ^= 1;
    assert!(f.tpm.ecdh_zgen(&bind, &off_curve).is_err());
    assert_eq!(f.tpm.flush_transients()?, 0);
    Ok(())
}

#[test]
fn the_fake_tpm_agrees_with_swtpm() -> anyhow::Result<()> {
    let mut f = fixture()?;
    let mut fake = circ_tpm::FakeTpm::new();
    let pcrs: PcrSet = "14,15,16,17,23".parse().map_err(anyhow::Error::msg)?;
    assert_eq!(
        fake.read_pcrs(&pcrs)?,
        f.tpm.read_pcrs(&pcrs)?,
        "reset values"
    );
    for (pcr, data) in [(15, &b"a"[..]), (15, b"b"), (16, b"c"), (23, b"d")] {
        let pcr = PcrIndex::new(pcr).unwrap();
        let d = Digests::of_bytes(data, true);
        fake.extend(pcr, &d)?;
        f.tpm.extend(pcr, &d)?;
    }
    assert_eq!(
        fake.read_pcrs(&pcrs)?,
        f.tpm.read_pcrs(&pcrs)?,
        "after extends"
    );

    // Both quote the same PCR digest, and both quotes verify.
    let mut digests = Vec::new();
    for tpm in [&mut f.tpm as &mut dyn Tpm, &mut fake] {
        let ak = tpm.create_ak()?;
        let raw = tpm.quote(&ak, b"n", &pcrs)?;
        let info = circ_measured_boot::wire::parse_quote_attest(&raw.attest)?;
        let sig = circ_measured_boot::wire::parse_signature(&raw.signature)?;
        ak.public_key()?.verify(&raw.attest, &sig)?;
        ak.public_key()?.check_public_area(&ak.public)?;
        digests.push(info.pcr_digest);
    }
    assert_eq!(digests[0], digests[1]);
    Ok(())
}
