//! Files holding TPM objects outside the TPM. Both are JSON with hex fields;
//! the private parts are wrapped by the TPM (encrypted under a primary key that
//! never leaves it), so the files are useless on another TPM.
//!
//! AK (`circ-ak/1`): `{"format", "public": TPMT_PUBLIC, "private": TPM2B_PRIVATE buffer}`.
//! Sealed secret (`circ-sealed/1`): the same plus `"pcrs": [16, 23]` (SHA-256 bank).

use serde::{Deserialize, Serialize};

use circ_measured_boot::akpub::AkPublic;
use circ_measured_boot::{PcrIndex, PcrSet};

pub const AK_FORMAT: &str = "circ-ak/1";
pub const SEALED_FORMAT: &str = "circ-sealed/1";
pub const BIND_KEY_FORMAT: &str = "circ-bindkey/1";

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("not a {expected} file")]
    Json {
        expected: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported format `{found}` (expected {expected})")]
    Format {
        expected: &'static str,
        found: String,
    },
    #[error("field `{0}` is not valid hex")]
    Hex(&'static str),
    #[error("the key's public area is not a P-256 ECC key: {0}")]
    NotEcc(String),
    #[error("PCR list in the sealed blob is invalid")]
    Pcrs,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AkFile {
    format: String,
    public: String,
    private: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedFile {
    format: String,
    pcrs: Vec<u8>,
    public: String,
    private: String,
}

/// An attestation key: a restricted ECDSA P-256 signing key, child of a
/// primary key the TPM re-derives on demand from its endorsement seed.
#[derive(Clone, PartialEq, Eq)]
pub struct AkBlob {
    /// Marshalled `TPMT_PUBLIC`.
    pub public: Vec<u8>,
    /// `TPM2B_PRIVATE` contents (wrapped by the parent).
    pub private: Vec<u8>,
}

impl std::fmt::Debug for AkBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AkBlob")
            .field("public_len", &self.public.len())
            .field("private", &"[wrapped]")
            .finish()
    }
}

fn unhex(field: &'static str, s: &str) -> Result<Vec<u8>, BlobError> {
    hex::decode(s).map_err(|_| BlobError::Hex(field))
}

fn check_format(expected: &'static str, found: &str) -> Result<(), BlobError> {
    if found == expected {
        Ok(())
    } else {
        Err(BlobError::Format {
            expected,
            found: found.chars().take(40).collect(),
        })
    }
}

/// A key file of `format`: public area and wrapped private part.
fn key_to_json(format: &str, public: &[u8], private: &[u8]) -> String {
    let file = AkFile {
        format: format.into(),
        public: hex::encode(public),
        private: hex::encode(private),
    };
    // A struct of strings always serializes.
    serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
}

/// Parses [`key_to_json`]'s form: (public, private).
fn key_from_json(format: &'static str, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), BlobError> {
    let f: AkFile = serde_json::from_slice(bytes).map_err(|source| BlobError::Json {
        expected: format,
        source,
    })?;
    check_format(format, &f.format)?;
    Ok((unhex("public", &f.public)?, unhex("private", &f.private)?))
}

impl AkBlob {
    pub fn to_json(&self) -> String {
        key_to_json(AK_FORMAT, &self.public, &self.private)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, BlobError> {
        let (public, private) = key_from_json(AK_FORMAT, bytes)?;
        Ok(Self { public, private })
    }

    /// The key a verifier checks quotes with.
    pub fn public_key(&self) -> Result<AkPublic, BlobError> {
        AkPublic::from_public_area(&self.public).map_err(|e| BlobError::NotEcc(e.to_string()))
    }
}

/// A host's bind key (`circ-bindkey/1`): an ECC P-256 decryption key for
/// ECDH (TPM2_ECDH_ZGen), child of the owner hierarchy's primary, fixed to
/// this TPM. Senders bind secrets to its public point; only this TPM can
/// derive the shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BindKeyBlob {
    /// Marshalled `TPMT_PUBLIC`.
    pub public: Vec<u8>,
    /// `TPM2B_PRIVATE` contents (wrapped by the parent).
    pub private: Vec<u8>,
}

impl std::fmt::Debug for BindKeyBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindKeyBlob")
            .field("public_len", &self.public.len())
            .field("private", &"[wrapped]")
            .finish()
    }
}

impl BindKeyBlob {
    pub fn to_json(&self) -> String {
        key_to_json(BIND_KEY_FORMAT, &self.public, &self.private)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, BlobError> {
        let (public, private) = key_from_json(BIND_KEY_FORMAT, bytes)?;
        Ok(Self { public, private })
    }

    /// The public point, SEC1 uncompressed (`04 || x || y`, 65 bytes).
    pub fn point(&self) -> Result<Vec<u8>, BlobError> {
        let area = circ_measured_boot::wire::parse_ecc_public(&self.public)
            .map_err(|e| BlobError::NotEcc(e.to_string()))?;
        if area.x.len() > 32 || area.y.len() > 32 {
            return Err(BlobError::NotEcc("coordinate longer than 32 bytes".into()));
        }
        let mut point = vec![0u8; 65];
        point[0] = 4;
        point[33 - area.x.len()..33].copy_from_slice(&area.x);
        point[65 - area.y.len()..].copy_from_slice(&area.y);
        Ok(point)
    }
}

/// A secret sealed to PCR values (a TPM keyed-hash object whose only
/// authorization is a PolicyPCR digest).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBlob {
    pub pcrs: PcrSet,
    pub public: Vec<u8>,
    pub private: Vec<u8>,
}

impl std::fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBlob")
            .field("pcrs", &self.pcrs.to_string())
            .field("private", &"[wrapped]")
            .finish()
    }
}

impl SealedBlob {
    pub fn to_json(&self) -> String {
        let file = SealedFile {
            format: SEALED_FORMAT.into(),
            pcrs: self.pcrs.iter().map(PcrIndex::get).collect(),
            public: hex::encode(&self.public),
            private: hex::encode(&self.private),
        };
        serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, BlobError> {
        let f: SealedFile = serde_json::from_slice(bytes).map_err(|source| BlobError::Json {
            expected: SEALED_FORMAT,
            source,
        })?;
        check_format(SEALED_FORMAT, &f.format)?;
        let pcrs: PcrSet = f
            .pcrs
            .iter()
            .map(|&p| PcrIndex::new(p).ok_or(BlobError::Pcrs))
            .collect::<Result<_, _>>()?;
        if pcrs.is_empty() {
            return Err(BlobError::Pcrs);
        }
        Ok(Self {
            pcrs,
            public: unhex("public", &f.public)?,
            private: unhex("private", &f.private)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_refuse_each_other() {
        let ak = AkBlob {
            public: vec![1, 2],
            private: vec![3],
        };
        assert_eq!(AkBlob::from_json(ak.to_json().as_bytes()).unwrap(), ak);
        let sealed = SealedBlob {
            pcrs: "16,23".parse().unwrap(),
            public: vec![4],
            private: vec![5],
        };
        assert_eq!(
            SealedBlob::from_json(sealed.to_json().as_bytes()).unwrap(),
            sealed
        );
        assert!(matches!(
            AkBlob::from_json(sealed.to_json().as_bytes()),
            Err(BlobError::Json { .. })
        ));
        assert!(!format!("{ak:?}").contains('3'));
        let bind = BindKeyBlob {
            public: vec![6],
            private: vec![7],
        };
        assert_eq!(
            BindKeyBlob::from_json(bind.to_json().as_bytes()).unwrap(),
            bind
        );
        assert!(matches!(
            BindKeyBlob::from_json(ak.to_json().as_bytes()),
            Err(BlobError::Format { .. })
        ));
        assert!(matches!(bind.point(), Err(BlobError::NotEcc(_))));
    }
}
