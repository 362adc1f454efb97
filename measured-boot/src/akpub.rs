//! The attestation key's public half, exchanged as a PEM `PUBLIC KEY`
//! (SubjectPublicKeyInfo, NIST P-256): what `openssl`, `tpm2_checkquote -u`
//! and Keylime-style verifiers all read.

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _, LineEnding};
use p256::{EncodedPoint, FieldBytes};

use crate::digest::HashAlg;
use crate::wire::EcdsaSignature;

#[derive(Debug, thiserror::Error)]
pub enum AkError {
    #[error("the attestation key is not a P-256 public key in PEM: {0}")]
    BadPem(String),
    #[error("the TPM's key is not a valid P-256 point")]
    BadPoint,
    #[error("the signature uses {0}; Circular's AKs sign SHA-256")]
    WrongHash(HashAlg),
    #[error("the signature is malformed (r or s longer than 32 bytes, or zero)")]
    MalformedSignature,
    #[error(
        "the signature does not verify with this attestation key (another key, or altered data)"
    )]
    BadSignature,
}

/// A P-256 attestation public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkPublic(VerifyingKey);

impl AkPublic {
    /// From the TPM's `TPMS_ECC_POINT` (big-endian x and y).
    pub fn from_tpm_point(x: &[u8], y: &[u8]) -> Result<Self, AkError> {
        let x = pad32(x).ok_or(AkError::BadPoint)?;
        let y = pad32(y).ok_or(AkError::BadPoint)?;
        let point = EncodedPoint::from_affine_coordinates(&x, &y, false);
        VerifyingKey::from_encoded_point(&point)
            .map(Self)
            .map_err(|_| AkError::BadPoint)
    }

    pub fn from_pem(pem: &str) -> Result<Self, AkError> {
        VerifyingKey::from_public_key_pem(pem)
            .map(Self)
            .map_err(|e| AkError::BadPem(e.to_string()))
    }

    pub fn to_pem(&self) -> Result<String, AkError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| AkError::BadPem(e.to_string()))
    }

    /// Checks a TPM ECDSA signature over `message` (the marshalled `TPMS_ATTEST`).
    pub fn verify(&self, message: &[u8], sig: &EcdsaSignature) -> Result<(), AkError> {
        if sig.hash != HashAlg::Sha256 {
            return Err(AkError::WrongHash(sig.hash));
        }
        let r = pad32(&sig.r).ok_or(AkError::MalformedSignature)?;
        let s = pad32(&sig.s).ok_or(AkError::MalformedSignature)?;
        let sig = Signature::from_scalars(r, s).map_err(|_| AkError::MalformedSignature)?;
        // P-256's verifier hashes the message with SHA-256, as the TPM did.
        self.0
            .verify(message, &sig)
            .map_err(|_| AkError::BadSignature)
    }
}

/// TPMs may drop leading zero bytes of a coordinate or scalar; put them back.
fn pad32(v: &[u8]) -> Option<FieldBytes> {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    let v = v.get(start..)?;
    if v.len() > 32 {
        return None;
    }
    let mut out = FieldBytes::default();
    out.get_mut(32 - v.len()..)?.copy_from_slice(v);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_pem_is_an_error_not_a_panic() {
        assert!(matches!(
            AkPublic::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            Err(AkError::BadPem(_))
        ));
        assert!(matches!(
            AkPublic::from_tpm_point(&[1; 32], &[2; 32]),
            Err(AkError::BadPoint)
        ));
    }

    #[test]
    fn pad_restores_leading_zeros() {
        let p = pad32(&[1, 2]).unwrap();
        assert_eq!(p[30..], [1, 2]);
        assert_eq!(p[..30], [0; 30]);
        assert!(pad32(&[1; 33]).is_none());
        assert_eq!(pad32(&[0; 40]).unwrap(), FieldBytes::default());
    }
}
