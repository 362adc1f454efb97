//! The key protocols against real swtpm instances (one private instance per
//! host, two where a second host is needed) and the fake hypervisor. A test
//! that cannot start swtpm fails.

use anyhow::Context as _;
use circ_hv::fake::{FakeHypervisor, FakeXenStore};
use circ_hv::{DomId, DomainType, Hypervisor as _, Mfn};
use circ_keyd::bind::HostKey;
use circ_keyd::migrate;
use circ_keyd::package::{self, Manifest, Package};
use circ_keyd::sealed::parse_pcrs;
use circ_keyd::KeydError;
use circ_measured_boot::{Digests, EventKind, EventLog, Measurement, PcrIndex, PcrSet};
use circ_tpm::swtpm::Swtpm;
use circ_tpm::{measure, AkBlob, BindKeyBlob, EsapiTpm, Tpm as _};

/// One host: a private swtpm, its bind key, an event log.
struct Host {
    dir: tempfile::TempDir,
    _swtpm: Swtpm,
    tpm: EsapiTpm,
    bind: BindKeyBlob,
    log: EventLog,
}

impl Host {
    fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let swtpm = Swtpm::start(&dir.path().join("tpm")).context("starting swtpm")?;
        let mut tpm = EsapiTpm::open(&swtpm.tcti())?;
        let bind = tpm.create_bind_key()?;
        let log = EventLog::open(&dir.path().join("measurements.log"))?;
        Ok(Self {
            dir,
            _swtpm: swtpm,
            tpm,
            bind,
            log,
        })
    }

    fn host_key(&self) -> HostKey {
        HostKey::of_blob(&self.bind).unwrap()
    }

    /// What `circ measure file` does at boot: a host file into `pcr`.
    fn measure(&mut self, pcr: u8, path: &str, content: &[u8]) -> anyhow::Result<()> {
        measure::record(
            &mut self.tpm,
            &mut self.log,
            Measurement {
                pcr: PcrIndex::new(pcr).unwrap(),
                kind: EventKind::File,
                digests: Digests::of_bytes(content, false),
                domain: None,
                path: Some(path.into()),
                description: None,
            },
        )?;
        Ok(())
    }

    fn boot(&mut self) -> anyhow::Result<()> {
        self.measure(14, "/boot/xen.gz", b"xen 4.17 + tsys patches")?;
        self.measure(14, "/boot/vmlinuz", b"dom0 kernel")?;
        self.measure(15, "/etc/xen/web1.cfg", b"name = \"web1\"")?;
        Ok(())
    }

    fn log_bytes(&self) -> Vec<u8> {
        std::fs::read(self.log.path()).unwrap()
    }
}

const PROGRAM: &[u8] = b"\x7fELF a static program, long enough to span blocks";

fn program() -> Vec<u8> {
    PROGRAM.repeat(300)
}

fn deploy_to(host: &Host) -> (Manifest, Vec<u8>) {
    package::deploy("hello", &program(), &host.host_key()).unwrap()
}

/// The key really is the program's: it opens the sealed code (what Xen's
/// sealed reads will do with it).
fn assert_opens(key: &circ_keyd::TsysKey, m: &Manifest, code: &[u8]) {
    let plain =
        circ_tsys_seal::open_file_exact(key.as_bytes(), m.file_id().unwrap(), code, m.plain_len)
            .unwrap();
    assert_eq!(*plain, program());
}

#[test]
fn tpm_ecdh_unbinds_what_software_bound() -> anyhow::Result<()> {
    let mut host = Host::start()?;
    let (m, code) = deploy_to(&host);
    assert!(!code.windows(PROGRAM.len()).any(|w| w == PROGRAM));
    let key = m.key(&mut host.tpm, Some(&host.bind))?;
    assert_opens(&key, &m, &code);
    // The manifest holds no k1 in the clear.
    assert!(!m.to_toml().contains(&hex::encode(key.as_bytes())));
    // Nothing left loaded in the TPM.
    assert_eq!(host.tpm.flush_transients()?, 0);
    Ok(())
}

#[test]
fn unbinding_refuses_another_host_and_altered_keys() -> anyhow::Result<()> {
    let mut a = Host::start()?;
    let mut b = Host::start()?;
    let (m, _) = deploy_to(&a);
    let err = m.key(&mut b.tpm, Some(&b.bind)).unwrap_err();
    assert!(matches!(err, KeydError::OtherHost { .. }), "{err}");
    assert!(err.to_string().contains("not this host's"), "{err}");

    // Claiming b's fingerprint does not help: b's TPM derives another secret.
    let mut claimed = m.clone();
    claimed.bound.as_mut().unwrap().host_key = b.host_key().fingerprint();
    let err = claimed.key(&mut b.tpm, Some(&b.bind)).unwrap_err();
    assert!(matches!(err, KeydError::Unbind), "{err}");

    // A flipped bit of the wrapped key, or the key moved to another package.
    let mut flipped = m.clone();
    let w = &mut flipped.bound.as_mut().unwrap().wrapped;
    let last = if w.ends_with('0') { '1' } else { '0' };
    w.pop();
    w.push(last);
    assert!(matches!(
        flipped.key(&mut a.tpm, Some(&a.bind)).unwrap_err(),
        KeydError::Unbind
    ));
    let mut moved = m.clone();
    moved.name = "other".into();
    assert!(matches!(
        moved.key(&mut a.tpm, Some(&a.bind)).unwrap_err(),
        KeydError::Unbind
    ));
    Ok(())
}

#[test]
fn rollout_then_rollin_on_the_same_pcrs() -> anyhow::Result<()> {
    let mut host = Host::start()?;
    // Written and read back as a package: the program is checked too.
    let (pkg, bound, _) = rolled_out(&mut host)?;
    let rolled = &pkg.manifest;
    assert!(rolled.bound.is_none());
    let sealed = rolled.sealed.as_ref().unwrap();
    assert_eq!(sealed.pcrs, vec![14, 15]);
    assert_eq!(sealed.values.len(), 2);
    let key = bound.key(&mut host.tpm, Some(&host.bind))?;
    assert!(!rolled.to_toml().contains(&hex::encode(key.as_bytes())));
    let again = rolled.key(&mut host.tpm, None)?;
    assert_opens(&again, rolled, &pkg.code()?);
    Ok(())
}

#[test]
fn rollin_after_a_measured_file_changed_names_the_pcr() -> anyhow::Result<()> {
    let mut host = Host::start()?;
    let (pkg, _, _) = rolled_out(&mut host)?;
    let rolled = pkg.manifest;
    // The patched Xen replaced by another build: PCR 14 moves, 15 does not.
    host.measure(14, "/boot/xen.gz", b"another xen")?;
    let err = rolled.key(&mut host.tpm, None).unwrap_err();
    let KeydError::PcrChanged(changes) = &err else {
        panic!("{err}");
    };
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].pcr.get(), 14);
    let msg = err.to_string();
    assert!(
        msg.starts_with("refused: the host's measurements changed"),
        "{msg}"
    );
    assert!(msg.contains("PCR 14 (sealed to "), "{msg}");
    assert!(!msg.contains("PCR 15"), "{msg}");

    // A domain measured since: PCR 15 named as well.
    host.measure(15, "/etc/xen/web2.cfg", b"name = \"web2\"")?;
    let msg = rolled.key(&mut host.tpm, None).unwrap_err().to_string();
    assert!(msg.contains("PCR 14") && msg.contains("PCR 15"), "{msg}");

    // The record edited to today's values: still refused (the TPM's policy
    // is what protects k1), and said so.
    let mut edited = rolled.clone();
    let now = host.tpm.read_pcrs(&parse_pcrs("14,15")?)?;
    edited.sealed.as_mut().unwrap().values = now
        .into_iter()
        .map(|(p, v)| (p.get().to_string(), hex::encode(v)))
        .collect();
    let err = edited.key(&mut host.tpm, None).unwrap_err();
    assert!(matches!(err, KeydError::PolicyWithoutChange(_)), "{err}");
    assert!(err
        .to_string()
        .contains("record beside the blob was edited"));
    assert_eq!(host.tpm.flush_transients()?, 0);
    Ok(())
}

#[test]
fn rollin_on_another_host_is_refused() -> anyhow::Result<()> {
    let mut a = Host::start()?;
    let mut b = Host::start()?;
    let (m, _) = deploy_to(&a);
    let key = m.key(&mut a.tpm, Some(&a.bind))?;
    let rolled = m.sealed_to(&mut a.tpm, &key, &parse_pcrs("16")?)?;
    // Same (reset) PCR values on b, but b's TPM cannot load a's object.
    let err = rolled.key(&mut b.tpm, None).unwrap_err();
    assert!(matches!(err, KeydError::Tpm(_)), "{err}");
    Ok(())
}

/// A booted host with `hello` deployed to it and rolled out to PCRs 14,15,
/// written to disk and read back; also the bound manifest.
fn rolled_out(host: &mut Host) -> anyhow::Result<(Package, Manifest, Vec<u8>)> {
    host.boot()?;
    let (m, code) = deploy_to(host);
    let key = m.key(&mut host.tpm, Some(&host.bind))?;
    let rolled = m.sealed_to(&mut host.tpm, &key, &parse_pcrs("14,15")?)?;
    let path = Package::write(&host.dir.path().join("app"), &rolled, &code)?;
    Ok((Package::read(&path)?, m, code))
}

fn pv_guest() -> (FakeHypervisor, FakeXenStore, DomId) {
    let hv = FakeHypervisor::new();
    let xs = FakeXenStore::new();
    hv.add_domain(DomId(5), DomainType::Pv, 1024);
    (hv, xs, DomId(5))
}

#[test]
fn load_hands_k1_to_xen_for_one_registration() -> anyhow::Result<()> {
    let mut host = Host::start()?;
    let (pkg, m, code) = rolled_out(&mut host)?;
    let (hv, xs, dom) = pv_guest();
    let token = circ_keyd::load::load(&mut host.tpm, &hv, &xs, &pkg, dom, true)?;
    assert!(hv.tsys_status(dom)?.token_armed);
    assert!(hv.tsys_register(dom, &token, Mfn(0x42)));
    let in_xen = hv
        .tsys_process_key(dom, Mfn(0x42))
        .expect("a keyed process");
    assert_opens(&in_xen, &pkg.manifest, &code);
    assert!(
        !hv.tsys_register(dom, &token, Mfn(0x43)),
        "one registration"
    );

    // A bound (not rolled-out) package is not loaded.
    let bound = Package {
        manifest: m.clone(),
        dir: pkg.dir.clone(),
    };
    let err = circ_keyd::load::load(&mut host.tpm, &hv, &xs, &bound, dom, true).unwrap_err();
    assert!(err.to_string().contains("roll it out first"), "{err}");
    Ok(())
}

#[test]
fn load_after_a_pcr_changed_arms_nothing() -> anyhow::Result<()> {
    let mut host = Host::start()?;
    let (pkg, _, _) = rolled_out(&mut host)?;
    host.measure(15, "/etc/xen/evil.cfg", b"name = \"evil\"")?;
    let (hv, xs, dom) = pv_guest();
    let err = circ_keyd::load::load(&mut host.tpm, &hv, &xs, &pkg, dom, true).unwrap_err();
    assert!(err.to_string().contains("PCR 15 (sealed to"), "{err}");
    let status = hv.tsys_status(dom)?;
    assert!(!status.authorised && !status.token_armed);
    Ok(())
}

/// Source `a` migrates to destination `b`: `b` answers a's challenge with
/// a quote bound to its bind key.
struct Migration {
    a: Host,
    b: Host,
    ak: AkBlob,
    manifest: Manifest,
    code: Vec<u8>,
}

fn migration() -> anyhow::Result<Migration> {
    let mut a = Host::start()?;
    let mut b = Host::start()?;
    a.boot()?;
    b.boot()?;
    let ak = b.tpm.create_ak()?;
    let (manifest, code) = deploy_to(&a);
    Ok(Migration {
        a,
        b,
        ak,
        manifest,
        code,
    })
}

impl Migration {
    fn quote(&mut self, nonce: &[u8], claimed: &HostKey) -> Vec<u8> {
        let log = self.b.log_bytes();
        migrate::destination_quote(
            &mut self.b.tpm,
            &self.ak,
            claimed,
            nonce,
            &log,
            &PcrSet::new(),
        )
        .unwrap()
        .to_json()
        .unwrap()
        .into_bytes()
    }
}

#[test]
fn migration_rebinds_k1_after_the_destination_quote_verifies() -> anyhow::Result<()> {
    let mut mg = migration()?;
    let dest = mg.b.host_key();
    let nonce = b"fresh challenge 1";
    let quote = mg.quote(nonce, &dest);
    let ak = mg.ak.public_key()?;
    migrate::verify_destination(&quote, &ak, nonce, None, &dest)?;
    let key = mg.manifest.key(&mut mg.a.tpm, Some(&mg.a.bind))?;
    let moved = mg.manifest.bound_to(&key, &dest)?;
    drop(key);
    // Only the destination's TPM can use it now.
    assert!(moved.key(&mut mg.a.tpm, Some(&mg.a.bind)).is_err());
    let on_b = moved.key(&mut mg.b.tpm, Some(&mg.b.bind))?;
    assert_opens(&on_b, &moved, &mg.code);
    Ok(())
}

#[test]
fn migration_refuses_replayed_forged_and_refused_quotes() -> anyhow::Result<()> {
    let mut mg = migration()?;
    let dest = mg.b.host_key();
    let ak = mg.ak.public_key()?;
    let old = mg.quote(b"challenge 1", &dest);

    // Replayed: an earlier answer to another challenge.
    let err = migrate::verify_destination(&old, &ak, b"challenge 2", None, &dest).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("refused: the destination's quote does not verify: wrong nonce"),
        "{msg}"
    );

    // Forged: the genuine quote offered for an attacker's bind key.
    let attacker = Host::start()?.host_key();
    let err = migrate::verify_destination(&old, &ak, b"challenge 1", None, &attacker).unwrap_err();
    assert!(err.to_string().contains("wrong nonce"), "{err}");

    // Forged: a quote signed by another TPM's AK.
    let other_ak = mg.a.tpm.create_ak()?;
    let log = mg.a.log_bytes();
    let forged = migrate::destination_quote(
        &mut mg.a.tpm,
        &other_ak,
        &dest,
        b"challenge 3",
        &log,
        &PcrSet::new(),
    )?
    .to_json()?;
    let err = migrate::verify_destination(forged.as_bytes(), &ak, b"challenge 3", None, &dest)
        .unwrap_err();
    assert!(err.to_string().contains("bad signature"), "{err}");

    // Forged: a byte of the signed quote altered.
    let mut file = circ_measured_boot::quote::QuoteFile::from_json(&old)?;
    let last = file.attest.len() - 1;
    file.attest[last] ^= 1;
    let altered = file.to_json()?;
    let err = migrate::verify_destination(altered.as_bytes(), &ak, b"challenge 1", None, &dest)
        .unwrap_err();
    assert!(err.to_string().contains("bad signature"), "{err}");

    // Genuine and fresh, but the destination's Xen is not in the policy.
    let fresh = mg.quote(b"challenge 4", &dest);
    let mut policy = circ_measured_boot::policy::Policy::new();
    let digest = circ_measured_boot::Sha256Digest::of(b"dom0 kernel");
    policy.allow_file("/boot/vmlinuz", digest);
    let err =
        migrate::verify_destination(&fresh, &ak, b"challenge 4", Some(&policy), &dest).unwrap_err();
    assert!(err.to_string().contains("refused by the policy"), "{err}");
    Ok(())
}
