//! The attestation key's public half, exchanged as a PEM `PUBLIC KEY`
//! (SubjectPublicKeyInfo, NIST P-256): what `openssl`, `tpm2_checkquote -u`
//! and Keylime-style verifiers all read; and the checks of its TPM public
//! area (`TPMT_PUBLIC`), which says what kind of key the TPM holds.
//!
//! The public area comes from the same dom0 as the key and nothing certifies
//! it (no EK certificate, no credential activation): checking it catches a
//! misconfigured key, not a lying host.

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _, LineEnding};
use p256::{EncodedPoint, FieldBytes};

use crate::digest::HashAlg;
use crate::wire::{self, attr, EcdsaSignature, WireError};

/// What an attestation key's public area must say: a TPM-resident
/// (fixedTPM, fixedParent) restricted signing key, which signs only what the
/// TPM itself generated, and cannot decrypt.
pub const AK_REQUIRED: u32 = attr::FIXED_TPM | attr::FIXED_PARENT | attr::RESTRICTED | attr::SIGN;
pub const AK_FORBIDDEN: u32 = attr::DECRYPT;
/// The attributes of the AK template `circ-tpm` creates (and its fake gives).
pub const AK_TEMPLATE: u32 =
    AK_REQUIRED | attr::SENSITIVE_DATA_ORIGIN | attr::USER_WITH_AUTH | attr::NO_DA;

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
    #[error("the attestation key's public area is malformed")]
    PublicArea(#[source] WireError),
    #[error("the attestation key's public area {problem} (attributes: {attributes})")]
    Attributes { problem: String, attributes: String },
    #[error("the attestation key's public area is not an ECDSA-SHA256 key on P-256 (curve {curve:#06x}, scheme {scheme:?})")]
    Parameters {
        curve: u16,
        scheme: Option<(u16, u16)>,
    },
    #[error("the key in the public area is not the attestation key given")]
    KeyMismatch,
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

    /// The key in a marshalled ECC `TPMT_PUBLIC` (its attributes unchecked:
    /// see [`AkPublic::check_public_area`]).
    pub fn from_public_area(area: &[u8]) -> Result<Self, AkError> {
        let area = wire::parse_ecc_public(area).map_err(AkError::PublicArea)?;
        Self::from_tpm_point(&area.x, &area.y)
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

    /// Checks that `area` (a marshalled `TPMT_PUBLIC`) describes this key as
    /// an attestation key: see [`AK_REQUIRED`] and [`AK_FORBIDDEN`]. Returns
    /// the parsed area.
    pub fn check_public_area(&self, area: &[u8]) -> Result<wire::EccPublicArea, AkError> {
        let area = wire::parse_ecc_public(area).map_err(AkError::PublicArea)?;
        let attributes = || attr::names(area.attributes).join("|");
        let missing = AK_REQUIRED & !area.attributes;
        if missing != 0 {
            return Err(AkError::Attributes {
                problem: format!("lacks {}", attr::names(missing).join(", ")),
                attributes: attributes(),
            });
        }
        let forbidden = AK_FORBIDDEN & area.attributes;
        if forbidden != 0 {
            return Err(AkError::Attributes {
                problem: format!("has {}", attr::names(forbidden).join(", ")),
                attributes: attributes(),
            });
        }
        let ecdsa_sha256 = Some((wire::ALG_ECDSA, HashAlg::Sha256.tpm_alg_id()));
        if area.curve != wire::ECC_NIST_P256 || area.scheme != ecdsa_sha256 {
            return Err(AkError::Parameters {
                curve: area.curve,
                scheme: area.scheme,
            });
        }
        match AkPublic::from_tpm_point(&area.x, &area.y) {
            Ok(key) if key == *self => Ok(area),
            _ => Err(AkError::KeyMismatch),
        }
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
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;

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

    fn test_key() -> (AkPublic, Vec<u8>, Vec<u8>) {
        let secret = p256::SecretKey::from_slice(&[7; 32]).unwrap();
        let point = secret.public_key().to_encoded_point(false);
        let (x, y) = (point.x().unwrap().to_vec(), point.y().unwrap().to_vec());
        (AkPublic::from_tpm_point(&x, &y).unwrap(), x, y)
    }

    #[test]
    fn an_ak_public_area_is_accepted() {
        let (key, x, y) = test_key();
        let area = wire::tests::ak_area(&x, &y);
        key.check_public_area(&area.marshal()).unwrap();
    }

    #[test]
    fn each_missing_or_forbidden_attribute_is_named() {
        let (key, x, y) = test_key();
        for (bit, name) in [
            (attr::FIXED_TPM, "fixedTPM"),
            (attr::FIXED_PARENT, "fixedParent"),
            (attr::RESTRICTED, "restricted"),
            (attr::SIGN, "sign"),
        ] {
            let mut area = wire::tests::ak_area(&x, &y);
            area.attributes &= !bit;
            let err = key.check_public_area(&area.marshal()).unwrap_err();
            assert!(
                err.to_string().contains(&format!("lacks {name}")),
                "{name}: {err}"
            );
        }
        let mut area = wire::tests::ak_area(&x, &y);
        area.attributes |= attr::DECRYPT;
        let err = key.check_public_area(&area.marshal()).unwrap_err();
        assert!(err.to_string().contains("has decrypt"), "{err}");
    }

    #[test]
    fn another_key_curve_or_scheme_is_refused() {
        let (key, x, y) = test_key();
        let (_, other_x, other_y) = {
            let secret = p256::SecretKey::from_slice(&[9; 32]).unwrap();
            let p = secret.public_key().to_encoded_point(false);
            (0, p.x().unwrap().to_vec(), p.y().unwrap().to_vec())
        };
        let other = wire::tests::ak_area(&other_x, &other_y);
        assert!(matches!(
            key.check_public_area(&other.marshal()),
            Err(AkError::KeyMismatch)
        ));
        let mut bad = wire::tests::ak_area(&x, &[0; 32]);
        assert!(matches!(
            key.check_public_area(&bad.marshal()),
            Err(AkError::KeyMismatch)
        ));
        bad = wire::tests::ak_area(&x, &y);
        bad.scheme = Some((wire::ALG_ECDSA, HashAlg::Sha1.tpm_alg_id()));
        assert!(matches!(
            key.check_public_area(&bad.marshal()),
            Err(AkError::Parameters { .. })
        ));
        bad.scheme = None;
        assert!(matches!(
            key.check_public_area(&bad.marshal()),
            Err(AkError::Parameters { .. })
        ));
        assert!(matches!(
            key.check_public_area(b"garbage"),
            Err(AkError::PublicArea(_))
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
