//! SEAL(k1 || PCRs): k1 as a TPM sealed object under PolicyPCR, with the
//! PCR values of the moment recorded beside it. The record is not what
//! protects k1 (the TPM's policy is); it lets a refusal name the PCR that
//! changed.

use std::collections::BTreeMap;

use circ_measured_boot::{PcrIndex, PcrSet};
use circ_tpm::{SealedBlob, Secret, Tpm, TpmError};
use serde::{Deserialize, Serialize};

use crate::{bind::key_from, KeydError, PcrChange, TsysKey};

/// The PCRs k1 is sealed to by default: 14, where dom0 measures the host's
/// files at boot (`circ measure file`: xen.gz with the tsys patches, dom0's
/// kernel and initramfs; docs/measured-boot.md), and 15, where
/// `circ measure domain` measures every domain before `xl create`.
pub const DEFAULT_PCRS: [u8; 2] = [14, 15];

/// The `[sealed]` table of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedKey {
    pub pcrs: Vec<u8>,
    /// `TPMT_PUBLIC` of the sealed object, hex.
    pub public: String,
    /// Its `TPM2B_PRIVATE`, wrapped by the TPM, hex.
    pub private: String,
    /// SHA-256 PCR values when sealed, hex, by PCR number.
    pub values: BTreeMap<String, String>,
}

fn bad(what: &str) -> KeydError {
    KeydError::Package(format!("[sealed] `{what}` is invalid"))
}

impl SealedKey {
    fn pcr_set(&self) -> Result<PcrSet, KeydError> {
        self.pcrs
            .iter()
            .map(|&p| PcrIndex::new(p).ok_or_else(|| bad("pcrs")))
            .collect()
    }

    fn blob(&self) -> Result<SealedBlob, KeydError> {
        Ok(SealedBlob {
            pcrs: self.pcr_set()?,
            public: hex::decode(&self.public).map_err(|_| bad("public"))?,
            private: hex::decode(&self.private).map_err(|_| bad("private"))?,
        })
    }
}

/// Parses a PCR list like `14,15`.
pub fn parse_pcrs(text: &str) -> Result<PcrSet, KeydError> {
    text.split(',')
        .map(|p| {
            p.trim()
                .parse::<u8>()
                .ok()
                .and_then(PcrIndex::new)
                .ok_or_else(|| KeydError::Package(format!("`{p}` is not a PCR number")))
        })
        .collect()
}

/// Seals `key` to the current values of `pcrs`.
pub fn seal_key(tpm: &mut impl Tpm, key: &TsysKey, pcrs: &PcrSet) -> Result<SealedKey, KeydError> {
    let values = tpm.read_pcrs(pcrs)?;
    let blob = tpm.seal(&Secret::new(key.as_bytes().to_vec()), pcrs)?;
    Ok(SealedKey {
        pcrs: pcrs.iter().map(PcrIndex::get).collect(),
        public: hex::encode(&blob.public),
        private: hex::encode(&blob.private),
        values: values
            .into_iter()
            .map(|(p, v)| (p.get().to_string(), hex::encode(v)))
            .collect(),
    })
}

/// Unseals k1; on a PCR policy failure, names each PCR whose value differs
/// from the recorded one.
pub fn unseal_key(tpm: &mut impl Tpm, sealed: &SealedKey) -> Result<TsysKey, KeydError> {
    let blob = sealed.blob()?;
    match tpm.unseal(&blob) {
        Ok(secret) => key_from(secret.expose()),
        Err(TpmError::PcrPolicy) => {
            let now = tpm.read_pcrs(&blob.pcrs)?;
            let changes: Vec<PcrChange> = now
                .into_iter()
                .filter_map(|(pcr, now)| {
                    let recorded = sealed
                        .values
                        .get(&pcr.get().to_string())
                        .and_then(|v| hex::decode(v).ok())
                        .unwrap_or_default();
                    (recorded != now).then_some(PcrChange {
                        pcr,
                        sealed: recorded,
                        now,
                    })
                })
                .collect();
            if changes.is_empty() {
                Err(KeydError::PolicyWithoutChange(blob.pcrs.to_string()))
            } else {
                Err(KeydError::PcrChanged(changes))
            }
        }
        Err(e) => Err(e.into()),
    }
}
