//! BIND: k1 wrapped to a host's TPM bind key (`circ-bind/1`), ECIES-style.
//! The sender draws an ephemeral P-256 key e, computes Z = x(e * H) with the
//! host's public point H, and seals k1 with ChaCha20-Poly1305 under
//! K = SHA-256("circ-bind/1" || Z || E || H) (E = e's point), AAD = the same
//! label, E, H and the package context. The host recomputes Z inside its TPM
//! (TPM2_ECDH_ZGen with the bind key, which never leaves it), so only that
//! TPM unbinds. Anyone can bind (no TPM needed); a fresh e per binding
//! means K is used once, so a fixed nonce would do; a random one is drawn
//! anyway and stored.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use circ_tpm::{BindKeyBlob, Tpm};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::{KeydError, TsysKey};

const LABEL: &[u8] = b"circ-bind/1";

/// A host's public bind key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey(p256::PublicKey);

impl HostKey {
    /// From SEC1 bytes (`04 || x || y`).
    pub fn from_sec1(point: &[u8]) -> Result<Self, KeydError> {
        p256::PublicKey::from_sec1_bytes(point)
            .map(Self)
            .map_err(|_| KeydError::HostKey("not a point on P-256".into()))
    }

    /// The public half of a TPM bind key.
    pub fn of_blob(blob: &BindKeyBlob) -> Result<Self, KeydError> {
        Self::from_sec1(&blob.point().map_err(circ_tpm::TpmError::from)?)
    }

    pub fn from_pem(pem: &str) -> Result<Self, KeydError> {
        p256::PublicKey::from_public_key_pem(pem)
            .map(Self)
            .map_err(|e| KeydError::HostKey(e.to_string()))
    }

    /// SubjectPublicKeyInfo PEM (`PUBLIC KEY`), as openssl writes it.
    pub fn to_pem(&self) -> Result<String, KeydError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeydError::HostKey(e.to_string()))
    }

    pub fn sec1(&self) -> Vec<u8> {
        self.0.to_encoded_point(false).as_bytes().to_vec()
    }

    /// SHA-256 of the SEC1 point, hex: how packages name the host.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.sec1()))
    }
}

/// k1 bound to one host's TPM (the `[bound]` table of a package).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    /// [`HostKey::fingerprint`] of the host it is bound to.
    pub host_key: String,
    /// E, SEC1 hex.
    pub ephemeral: String,
    pub nonce: String,
    /// ChaCha20-Poly1305 of k1 and its tag, hex (48 bytes).
    pub wrapped: String,
}

fn wrap_key(z: &[u8], eph: &[u8], host: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update(z);
    h.update(eph);
    h.update(host);
    Zeroizing::new(h.finalize().into())
}

fn aad(eph: &[u8], host: &[u8], context: &[u8]) -> Vec<u8> {
    [LABEL, eph, host, context].concat()
}

fn random<const N: usize>() -> Result<[u8; N], KeydError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(KeydError::Random)?;
    Ok(out)
}

/// Binds `key` to `host`; `context` (the package's identity) is
/// authenticated with it, so a bound key cannot be moved to another package.
pub fn bind(host: &HostKey, key: &TsysKey, context: &[u8]) -> Result<Bound, KeydError> {
    let eph = loop {
        let bytes = Zeroizing::new(random::<32>()?);
        // Out of range with probability ~2^-32: draw again.
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes[..]) {
            break secret;
        }
    };
    let eph_point = eph.public_key().to_encoded_point(false).as_bytes().to_vec();
    let z = p256::ecdh::diffie_hellman(eph.to_nonzero_scalar(), host.0.as_affine());
    let host_point = host.sec1();
    let k = wrap_key(z.raw_secret_bytes(), &eph_point, &host_point);
    let nonce = random::<12>()?;
    let mut buf = Zeroizing::new(key.as_bytes().to_vec());
    let tag = ChaCha20Poly1305::new(Key::from_slice(&k[..]))
        .encrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &aad(&eph_point, &host_point, context),
            &mut buf,
        )
        .map_err(|_| KeydError::Unbind)?;
    buf.extend_from_slice(&tag);
    Ok(Bound {
        host_key: host.fingerprint(),
        ephemeral: hex::encode(eph_point),
        nonce: hex::encode(nonce),
        wrapped: hex::encode(&buf[..]),
    })
}

fn unhex(what: &str, s: &str) -> Result<Vec<u8>, KeydError> {
    hex::decode(s).map_err(|_| KeydError::Package(format!("`{what}` is not hex")))
}

/// Recovers k1 with this host's TPM bind key.
pub fn unbind(
    tpm: &mut impl Tpm,
    bind_key: &BindKeyBlob,
    bound: &Bound,
    context: &[u8],
) -> Result<TsysKey, KeydError> {
    let host = HostKey::of_blob(bind_key)?;
    if bound.host_key != host.fingerprint() {
        return Err(KeydError::OtherHost {
            bound: bound.host_key.clone(),
            ours: host.fingerprint(),
        });
    }
    let eph = unhex("ephemeral", &bound.ephemeral)?;
    // Refuse junk before the TPM sees it.
    HostKey::from_sec1(&eph)?;
    let nonce = unhex("nonce", &bound.nonce)?;
    let mut wrapped = Zeroizing::new(unhex("wrapped", &bound.wrapped)?);
    if nonce.len() != 12 || wrapped.len() != 48 {
        return Err(KeydError::Package("bound key of the wrong size".into()));
    }
    let z = tpm.ecdh_zgen(bind_key, &eph)?;
    let host_point = host.sec1();
    let k = wrap_key(z.expose(), &eph, &host_point);
    let tag = Tag::clone_from_slice(&wrapped[32..]);
    wrapped.truncate(32);
    ChaCha20Poly1305::new(Key::from_slice(&k[..]))
        .decrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &aad(&eph, &host_point, context),
            &mut wrapped,
            &tag,
        )
        .map_err(|_| KeydError::Unbind)?;
    key_from(&wrapped)
}

/// A [`TsysKey`] from 32 bytes, leaving no plain copy behind.
pub(crate) fn key_from(bytes: &[u8]) -> Result<TsysKey, KeydError> {
    let mut array = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(KeydError::KeyLen(bytes.len()));
    }
    array.copy_from_slice(bytes);
    Ok(TsysKey::from_bytes(*array))
}
