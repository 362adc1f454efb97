//! The measure -> quote -> verify flow over the in-memory FakeTpm: what code
//! built on the `Tpm` trait can test without swtpm. `swtpm.rs` holds the same
//! flows against a real TPM, and checks that the fake agrees with it.

use circ_measured_boot::akpub::AkError;
use circ_measured_boot::eventlog::EventKind;
use circ_measured_boot::policy::{Policy, Refusal};
use circ_measured_boot::verify::{self, Failure, Verdict};
use circ_measured_boot::wire::{self, attr};
use circ_measured_boot::{Digests, EventLog, Measurement, PcrIndex, PcrSet};
use circ_tpm::{attest, measure, FakeTpm, Secret, Tpm, TpmError};

fn kernel(path: &str, content: &[u8]) -> Measurement {
    Measurement {
        pcr: PcrIndex::new(15).unwrap(),
        kind: EventKind::DomainKernel,
        digests: Digests::of_bytes(content, false),
        domain: Some("web1".into()),
        path: Some(path.into()),
        description: None,
    }
}

struct Measured {
    _dir: tempfile::TempDir,
    tpm: FakeTpm,
    log: EventLog,
}

fn measured() -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let mut tpm = FakeTpm::new();
    let mut log = EventLog::open(&dir.path().join("measurements.log"))?;
    for (path, content) in [("/k0", b"kernel-a"), ("/k1", b"kernel-b")] {
        measure::record(&mut tpm, &mut log, kernel(path, content))?;
    }
    Ok(Measured {
        _dir: dir,
        tpm,
        log,
    })
}

fn policy(k1: &[u8]) -> Policy {
    let mut p = Policy::new();
    p.allow_file("/k0", Digests::of_bytes(b"kernel-a", false).sha256);
    p.allow_file("/k1", Digests::of_bytes(k1, false).sha256);
    p
}

#[test]
fn measure_quote_verify() -> anyhow::Result<()> {
    let mut m = measured()?;
    let ak = m.tpm.create_ak()?;
    let log = std::fs::read(m.log.path())?;
    let quote = attest::quote(&mut m.tpm, &ak, b"fresh", &log, &PcrSet::new())?;
    let outcome = verify::verify(
        quote.to_json()?.as_bytes(),
        &ak.public_key()?,
        b"fresh",
        Some(&policy(b"kernel-b")),
    );
    outcome.result?;
    assert_eq!(outcome.events.len(), 2);
    assert!(outcome.events.iter().all(|(_, v)| *v == Verdict::Allowed));
    Ok(())
}

#[test]
fn a_policy_refusal_names_the_file() -> anyhow::Result<()> {
    let mut m = measured()?;
    let ak = m.tpm.create_ak()?;
    let log = std::fs::read(m.log.path())?;
    let quote = attest::quote(&mut m.tpm, &ak, b"n", &log, &PcrSet::new())?;
    let outcome = verify::verify(
        quote.to_json()?.as_bytes(),
        &ak.public_key()?,
        b"n",
        Some(&policy(b"an older kernel")),
    );
    assert!(matches!(
        &outcome.events[1].1,
        Verdict::Refused(Refusal::FileDigest { path, .. }) if path == "/k1"
    ));
    let err = outcome.result.unwrap_err();
    assert!(matches!(err, Failure::Policy { count: 1, .. }), "{err}");
    Ok(())
}

#[test]
fn the_quote_answers_only_its_nonce_and_its_key() -> anyhow::Result<()> {
    let mut m = measured()?;
    let ak = m.tpm.create_ak()?;
    let log = std::fs::read(m.log.path())?;
    let quote = attest::quote(&mut m.tpm, &ak, b"n1", &log, &PcrSet::new())?;
    let json = quote.to_json()?;
    let err = verify::verify(json.as_bytes(), &ak.public_key()?, b"n2", None)
        .result
        .unwrap_err();
    assert!(matches!(err, Failure::WrongNonce { .. }), "{err}");

    // Another AK given to the verifier: the signature says no.
    let other = m.tpm.create_ak()?;
    let err = verify::verify(json.as_bytes(), &other.public_key()?, b"n1", None)
        .result
        .unwrap_err();
    assert!(matches!(err, Failure::Signature(_)), "{err}");
    // The quote's public area is not the key that signed it.
    let mut swapped = quote.clone();
    swapped.ak_public = other.public.clone();
    let err = verify::verify(
        swapped.to_json()?.as_bytes(),
        &ak.public_key()?,
        b"n1",
        None,
    )
    .result
    .unwrap_err();
    assert!(
        matches!(err, Failure::AkPublicArea(AkError::KeyMismatch)),
        "{err}"
    );
    Ok(())
}

#[test]
fn an_ak_that_is_not_restricted_or_can_decrypt_is_refused() -> anyhow::Result<()> {
    let mut m = measured()?;
    let ak = m.tpm.create_ak()?;
    let log = std::fs::read(m.log.path())?;
    let quote = attest::quote(&mut m.tpm, &ak, b"n", &log, &PcrSet::new())?;
    for (clear, set, named) in [
        (attr::RESTRICTED, 0, "lacks restricted"),
        (attr::FIXED_TPM, 0, "lacks fixedTPM"),
        (0, attr::DECRYPT, "has decrypt"),
    ] {
        let mut area = wire::parse_ecc_public(&quote.ak_public)?;
        area.attributes = (area.attributes & !clear) | set;
        let mut q = quote.clone();
        q.ak_public = area.marshal();
        let err = verify::verify(q.to_json()?.as_bytes(), &ak.public_key()?, b"n", None)
            .result
            .unwrap_err();
        assert!(matches!(err, Failure::AkPublicArea(_)), "{err}");
        let msg = format!("{:#}", anyhow::Error::from(err));
        assert!(msg.contains(named), "{msg}");
    }
    Ok(())
}

#[test]
fn unseal_is_refused_after_an_extend() -> anyhow::Result<()> {
    let mut tpm = FakeTpm::new();
    let pcrs: PcrSet = "16,23".parse().map_err(anyhow::Error::msg)?;
    let secret = Secret::new(b"disk key".to_vec());
    let blob = tpm.seal(&secret, &pcrs)?;
    assert_eq!(tpm.unseal(&blob)?, secret);
    tpm.extend(
        PcrIndex::new(23).unwrap(),
        &Digests::of_bytes(b"changed", false),
    )?;
    assert!(matches!(tpm.unseal(&blob), Err(TpmError::PcrPolicy)));
    // Another TPM cannot load the blob at all.
    assert!(matches!(
        FakeTpm::new().unseal(&blob),
        Err(TpmError::Unexpected(_))
    ));
    assert!(matches!(
        tpm.seal(&Secret::new(vec![0; 129]), &pcrs),
        Err(TpmError::TooLong { .. })
    ));
    Ok(())
}

#[test]
fn a_log_from_before_a_reset_is_refused() -> anyhow::Result<()> {
    let mut m = measured()?;
    m.tpm.reset();
    let err = measure::record(&mut m.tpm, &mut m.log, kernel("/k2", b"x")).unwrap_err();
    assert!(
        matches!(err, measure::MeasureError::OutOfStep { .. }),
        "{err}"
    );
    assert_eq!(m.log.events().len(), 2, "nothing appended");
    Ok(())
}

#[test]
fn pcrs_start_as_on_a_real_tpm_and_extend_every_bank_given() -> anyhow::Result<()> {
    let mut tpm = FakeTpm::new();
    let all: PcrSet = (0..=23).filter_map(PcrIndex::new).collect();
    let values = tpm.read_pcrs(&all)?;
    for (pcr, value) in &values {
        let fill = if (17..=22).contains(&pcr.get()) {
            0xff
        } else {
            0
        };
        assert_eq!(value, &vec![fill; 32], "PCR {pcr}");
    }
    let pcr = PcrIndex::new(16).unwrap();
    let d = Digests::of_bytes(b"m", true);
    tpm.extend(pcr, &d)?;
    let expect = circ_measured_boot::HashAlg::Sha256.extend(&[0; 32], &d.sha256.0);
    assert_eq!(
        tpm.read_pcrs(&std::iter::once(pcr).collect())?[&pcr],
        expect
    );
    Ok(())
}
