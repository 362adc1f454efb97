//! Migration: the destination proves its measurements with a quote, and
//! the quote vouches for its bind key: the quote's nonce is
//! SHA-256("circ-migrate/1" || N || H), N the source's fresh nonce and H the
//! destination's bind key (SEC1). The source verifies it with the existing
//! verifier (AK, nonce, policy) before it rebinds k1 to H, so a quote
//! replayed from an earlier challenge, one for another bind key, or one by
//! another AK refuses the migration. Like the AK itself, the bind key is
//! dom0's word (no TPM2_Certify yet): a verifier trusts the destination's
//! dom0 exactly as far as it trusts its quote.

use circ_measured_boot::akpub::AkPublic;
use circ_measured_boot::policy::Policy;
use circ_measured_boot::quote::QuoteFile;
use circ_measured_boot::verify;
use circ_measured_boot::PcrSet;
use circ_tpm::{attest, AkBlob, Tpm};
use sha2::{Digest as _, Sha256};

use crate::bind::HostKey;
use crate::KeydError;

const LABEL: &[u8] = b"circ-migrate/1";

/// The nonce the destination quotes: ties the source's `nonce` to `dest`.
pub fn quote_nonce(nonce: &[u8], dest: &HostKey) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update((nonce.len() as u64).to_le_bytes());
    h.update(nonce);
    h.update(dest.sec1());
    h.finalize().to_vec()
}

/// On the destination: quotes its event log's PCRs (and `extra`) over the
/// source's `nonce`, bound to its bind key `host`.
pub fn destination_quote(
    tpm: &mut impl Tpm,
    ak: &AkBlob,
    host: &HostKey,
    nonce: &[u8],
    log: &[u8],
    extra: &PcrSet,
) -> Result<QuoteFile, KeydError> {
    attest::quote(tpm, ak, &quote_nonce(nonce, host), log, extra).map_err(|e| match e {
        attest::QuoteError::Tpm(e) => KeydError::Tpm(e),
        e => KeydError::DestinationQuote(e.to_string()),
    })
}

/// On the source: the destination's quote must verify with its AK, answer
/// `nonce` for `dest`'s bind key, and pass `policy`.
pub fn verify_destination(
    quote: &[u8],
    ak: &AkPublic,
    nonce: &[u8],
    policy: Option<&Policy>,
    dest: &HostKey,
) -> Result<(), KeydError> {
    let outcome = verify::verify(quote, ak, &quote_nonce(nonce, dest), policy);
    outcome.result.map_err(|failure| {
        let mut text = failure.to_string();
        let mut source = std::error::Error::source(&failure);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        KeydError::DestinationQuote(text)
    })
}
