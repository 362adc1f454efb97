//! A behavioural fake of [`Tpm`] (feature `fake`), for tests of code built on
//! the trait: PCRs extend with the real hash semantics (SHA-256 and SHA-1
//! banks, 17-22 start at all ones), quotes are real `TPMS_ATTEST` structures
//! signed with a software P-256 key that the verifier accepts, and sealed
//! secrets unseal only while their PCRs hold the sealed values.
//!
//! Blobs are "wrapped" for one fake: another fake cannot load them, as
//! another TPM could not. The acceptance of the real thing stays swtpm
//! (`tests/swtpm.rs`).

use std::collections::BTreeMap;
use std::fmt;

use circ_measured_boot::akpub::AK_TEMPLATE;
use circ_measured_boot::quote::pcr_digest;
use circ_measured_boot::wire::{self, EccPublicArea, EcdsaSignature, QuoteInfo};
use circ_measured_boot::{Digests, HashAlg, PcrIndex, PcrSet, Sha256Digest};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};

use crate::blob::{AkBlob, SealedBlob};
use crate::{RawQuote, Secret, Tpm, TpmError};

/// Largest `extraData` a quote takes, as on a real TPM.
const MAX_NONCE: usize = 64;
const PCRS: usize = 24;

/// An in-memory TPM.
pub struct FakeTpm {
    /// Tags this fake's blobs (the "wrapping").
    id: [u8; 8],
    sha256: [[u8; 32]; PCRS],
    sha1: [[u8; 20]; PCRS],
    keys: Vec<SigningKey>,
    sealed: Vec<(Sha256Digest, Secret)>,
    reset_count: u32,
    clock: u64,
}

impl fmt::Debug for FakeTpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeTpm")
            .field("id", &hex::encode(self.id))
            .field("keys", &self.keys.len())
            .field("sealed", &self.sealed.len())
            .field("reset_count", &self.reset_count)
            .finish()
    }
}

impl Default for FakeTpm {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeTpm {
    /// A fake freshly reset, distinct from every other one in this process.
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut tpm = Self {
            id: n.to_be_bytes(),
            sha256: [[0; 32]; PCRS],
            sha1: [[0; 20]; PCRS],
            keys: Vec::new(),
            sealed: Vec::new(),
            reset_count: 0,
            clock: 0,
        };
        tpm.reset();
        tpm
    }

    /// What a reboot does: PCRs back to their reset values (17-22 all ones,
    /// the others zero). Keys and sealed blobs stay usable.
    pub fn reset(&mut self) {
        for pcr in 0..PCRS {
            let fill = if (17..=22).contains(&pcr) { 0xff } else { 0 };
            self.sha256[pcr] = [fill; 32];
            self.sha1[pcr] = [fill; 20];
        }
        self.reset_count += 1;
    }

    /// The object a blob's private part names, if this fake made it.
    fn unwrap_handle(&self, private: &[u8]) -> Result<usize, TpmError> {
        let foreign = || TpmError::Unexpected("the blob was not made by this TPM".into());
        let (id, index) = private.split_at_checked(8).ok_or_else(foreign)?;
        if id != self.id {
            return Err(foreign());
        }
        let index: [u8; 4] = index.try_into().map_err(|_| foreign())?;
        Ok(u32::from_be_bytes(index) as usize)
    }

    fn wrap_handle(&self, index: usize) -> Vec<u8> {
        let mut v = self.id.to_vec();
        v.extend_from_slice(&(index as u32).to_be_bytes());
        v
    }

    /// What PolicyPCR binds: the selection and the values.
    fn policy_digest(&self, pcrs: &PcrSet) -> Sha256Digest {
        let values = pcrs.iter().map(|p| &self.sha256[usize::from(p.get())][..]);
        Sha256Digest::of(&[&pcrs.to_select_bitmap()[..], &pcr_digest(values)].concat())
    }
}

/// An AK's public area, as the AK template gives it.
fn ak_public_area(key: &SigningKey) -> EccPublicArea {
    let point = key.verifying_key().to_encoded_point(false);
    let coordinate = |c: Option<&p256::FieldBytes>| c.map(|c| c.to_vec()).unwrap_or_default();
    EccPublicArea {
        name_alg: HashAlg::Sha256.tpm_alg_id(),
        attributes: AK_TEMPLATE,
        auth_policy: Vec::new(),
        symmetric: (wire::ALG_NULL, None),
        scheme: Some((wire::ALG_ECDSA, HashAlg::Sha256.tpm_alg_id())),
        curve: wire::ECC_NIST_P256,
        kdf: None,
        x: coordinate(point.x()),
        y: coordinate(point.y()),
    }
}

impl Tpm for FakeTpm {
    fn extend(&mut self, pcr: PcrIndex, digests: &Digests) -> Result<(), TpmError> {
        let i = usize::from(pcr.get());
        let new = HashAlg::Sha256.extend(&self.sha256[i], &digests.sha256.0);
        self.sha256[i].copy_from_slice(&new);
        if let Some(d) = &digests.sha1 {
            let new = HashAlg::Sha1.extend(&self.sha1[i], d);
            self.sha1[i].copy_from_slice(&new);
        }
        Ok(())
    }

    fn read_pcrs(&mut self, pcrs: &PcrSet) -> Result<BTreeMap<PcrIndex, Vec<u8>>, TpmError> {
        Ok(pcrs
            .iter()
            .map(|p| (p, self.sha256[usize::from(p.get())].to_vec()))
            .collect())
    }

    fn create_ak(&mut self) -> Result<AkBlob, TpmError> {
        // Deterministic per fake and key: tests are reproducible.
        let mut counter = 0u32;
        let key = loop {
            let seed = Sha256Digest::of(
                &[
                    &self.id[..],
                    &self.keys.len().to_be_bytes(),
                    &counter.to_be_bytes(),
                ]
                .concat(),
            );
            if let Ok(key) = SigningKey::from_bytes(&seed.0.into()) {
                break key;
            }
            counter += 1;
        };
        let public = ak_public_area(&key).marshal();
        self.keys.push(key);
        Ok(AkBlob {
            public,
            private: self.wrap_handle(self.keys.len() - 1),
        })
    }

    fn quote(&mut self, ak: &AkBlob, nonce: &[u8], pcrs: &PcrSet) -> Result<RawQuote, TpmError> {
        crate::check_len("nonce", nonce.len(), MAX_NONCE)?;
        let key = self
            .keys
            .get(self.unwrap_handle(&ak.private)?)
            .ok_or_else(|| TpmError::Unexpected("no such key".into()))?;
        // A TPM refuses to load a public part that is not its private's.
        if ak_public_area(key).marshal() != ak.public {
            return Err(TpmError::Unexpected(
                "the key's public and private parts do not match".into(),
            ));
        }
        self.clock += 1;
        let values = pcrs.iter().map(|p| &self.sha256[usize::from(p.get())][..]);
        let info = QuoteInfo {
            extra_data: nonce.to_vec(),
            clock: self.clock,
            reset_count: self.reset_count,
            restart_count: 0,
            firmware_version: 0,
            selection: vec![(HashAlg::Sha256, pcrs.clone())],
            pcr_digest: pcr_digest(values),
        };
        // The signer's name: nameAlg, then the hash of its public area.
        let name = [
            &HashAlg::Sha256.tpm_alg_id().to_be_bytes()[..],
            &Sha256Digest::of(&ak.public).0,
        ]
        .concat();
        let attest = wire::marshal_quote_attest(&info, &name);
        let sig: Signature = key.sign(&attest);
        let (r, s) = sig.split_bytes();
        let signature = EcdsaSignature {
            hash: HashAlg::Sha256,
            r: r.to_vec(),
            s: s.to_vec(),
        };
        Ok(RawQuote {
            attest,
            signature: signature.marshal(),
        })
    }

    fn seal(&mut self, secret: &Secret, pcrs: &PcrSet) -> Result<SealedBlob, TpmError> {
        crate::check_len("secret", secret.expose().len(), Secret::MAX_LEN)?;
        let policy = self.policy_digest(pcrs);
        self.sealed.push((policy, secret.clone()));
        Ok(SealedBlob {
            pcrs: pcrs.clone(),
            public: policy.0.to_vec(),
            private: self.wrap_handle(self.sealed.len() - 1),
        })
    }

    fn unseal(&mut self, blob: &SealedBlob) -> Result<Secret, TpmError> {
        let (policy, secret) = self
            .sealed
            .get(self.unwrap_handle(&blob.private)?)
            .ok_or_else(|| TpmError::Unexpected("no such sealed object".into()))?;
        if blob.public != policy.0 {
            return Err(TpmError::Unexpected(
                "the blob's public and private parts do not match".into(),
            ));
        }
        if self.policy_digest(&blob.pcrs) != *policy {
            return Err(TpmError::PcrPolicy);
        }
        Ok(secret.clone())
    }

    fn flush_transients(&mut self) -> Result<usize, TpmError> {
        // Nothing is ever left loaded.
        Ok(0)
    }
}
