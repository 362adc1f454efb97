//! Trusted system calls (`int $0x81`, xen-patches/0002): what dom0 hands a
//! guest ([`TsysToken`]) and what Xen reports back ([`TsysStatus`]).
//!
//! The hypervisor side is [`crate::Hypervisor::tsys_authorise`],
//! [`crate::Hypervisor::tsys_revoke`] and [`crate::Hypervisor::tsys_status`];
//! docs/tsys.md has the guest ABI.

use std::fmt;
use std::io::Read as _;

use serde::Serialize;

use crate::{DomId, ErrorKind, HvError, Hypervisor, Mfn, Transaction, XenStore};

/// Bytes in a registration token (`XEN_DOMCTL_TSYS_TOKEN_SIZE`).
pub const TSYS_TOKEN_LEN: usize = 32;

/// A one-time registration token: whoever presents it first in the
/// authorised domain becomes a trusted process. A secret, so `Debug` does
/// not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct TsysToken([u8; TSYS_TOKEN_LEN]);

impl TsysToken {
    pub fn from_bytes(bytes: [u8; TSYS_TOKEN_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh token from the kernel's random source.
    pub fn random() -> std::io::Result<Self> {
        let mut bytes = [0u8; TSYS_TOKEN_LEN];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; TSYS_TOKEN_LEN] {
        &self.0
    }

    /// Lower-case hex, 64 characters: the form written to xenstore.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`Self::to_hex`]'s form; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 2 * TSYS_TOKEN_LEN || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; TSYS_TOKEN_LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Debug for TsysToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TsysToken(<redacted>)")
    }
}

/// Bytes in a trusted process's key ([`TsysKey`]).
pub const TSYS_KEY_LEN: usize = 32;

/// The 32-byte key Xen attaches to the process that registers with a keyed
/// token (`tsys_authorise_keyed`): it seals and opens that process's sealed
/// files (CTS1, `circ-tsys-seal`). Wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct TsysKey(zeroize::Zeroizing<[u8; TSYS_KEY_LEN]>);

impl TsysKey {
    pub fn from_bytes(bytes: [u8; TSYS_KEY_LEN]) -> Self {
        Self(zeroize::Zeroizing::new(bytes))
    }

    /// A fresh key from the kernel's random source.
    pub fn random() -> std::io::Result<Self> {
        let mut key = Self::from_bytes([0; TSYS_KEY_LEN]);
        // Read straight into the zeroizing buffer: no plain copy left behind.
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key.0[..])?;
        Ok(key)
    }

    pub fn as_bytes(&self) -> &[u8; TSYS_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for TsysKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TsysKey(<redacted>)")
    }
}

/// One registered (trusted) process, as Xen knows it: by its address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TsysProcess {
    /// Machine frame of the process's user L4 page table: its identity.
    pub l4_mfn: Mfn,
    /// System calls (`int $0x81` or `syscall`) forwarded to the guest kernel.
    pub calls: u64,
    /// Returns to the process with its registers restored.
    pub restores: u64,
    /// Returns from the kernel elsewhere (a signal handler) while a call
    /// was in flight: the state stayed with Xen.
    pub deferred: u64,
    /// Calls in flight now (and interrupted states the kernel holds).
    pub pending: u32,
    /// Other entries into the kernel (exceptions, events) concealed.
    pub bounces: u64,
    /// Saved states dropped because 8 were pending (abandoned calls).
    pub dropped: u64,
    /// Pages of the process's private region (0: none declared).
    pub cloak_pages: u32,
    /// Of those, pages whose data Xen holds now, hidden from the kernel
    /// (all of them while the process is in its kernel).
    pub cloak_held: u32,
    /// Entries into the kernel that left the region visible because
    /// another thread of the process ran in user mode.
    pub cloak_exposed: u32,
    /// dom0 attached a key to its registration: it may seal fds
    /// (xen-patches/0004).
    pub keyed: bool,
    /// File descriptors it has sealed now.
    pub sealed_fds: u16,
    /// Blocks Xen sealed for it (low 32 bits).
    pub sealed_blocks: u32,
    /// Calls on sealed fds Xen refused (read/write, no window, bad
    /// offset, an unrewritten `syscall`); saturates at 65535.
    pub seal_refused: u16,
}

/// A domain's trusted-syscall state in Xen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TsysStatus {
    /// dom0 authorised the domain (and has not revoked it).
    pub authorised: bool,
    /// A token is armed: the next correct registration will succeed.
    pub token_armed: bool,
    /// The armed token carries a key (xen-patches/0004).
    pub key_armed: bool,
    /// `int $0x81` that Xen left to stock behaviour (#GP to the guest
    /// kernel): unregistered processes, bad tokens, refused calls.
    pub refused: u64,
    pub processes: Vec<TsysProcess>,
}

/// Where [`authorise`] leaves the token for the guest, relative to the
/// domain's xenstore directory (`/local/domain/N/`): under `data/`, which
/// the guest owns, so it can read the token and remove the node.
pub const TOKEN_NODE: &str = "data/tsys/token";

/// Draws a fresh token (an error names `dom`).
fn fresh_token(dom: DomId) -> Result<TsysToken, HvError> {
    TsysToken::random().map_err(|e| {
        HvError::with_kind(
            format!("failed to draw a token for domain {dom}: {e}"),
            ErrorKind::Other(e.raw_os_error()),
            None,
        )
    })
}

/// Writes `token` (hex) to the guest's [`TOKEN_NODE`].
fn hand_over_token<X: XenStore + ?Sized>(
    xs: &X,
    dom: DomId,
    token: &TsysToken,
) -> Result<(), HvError> {
    let path = format!("{}/{TOKEN_NODE}", xs.domain_path(dom)?);
    xs.write(Transaction::NONE, &path, token.to_hex().as_bytes())
}

/// Authorises `dom` with a fresh token and, if `hand_over`, writes the
/// token (hex) to the guest's [`TOKEN_NODE`] (after Xen armed it, so a guest
/// that sees it can use it). Returns the token.
pub fn authorise<H, X>(hv: &H, xs: &X, dom: DomId, hand_over: bool) -> Result<TsysToken, HvError>
where
    H: Hypervisor + ?Sized,
    X: XenStore + ?Sized,
{
    let token = fresh_token(dom)?;
    hv.tsys_authorise(dom, &token)?;
    if hand_over {
        hand_over_token(xs, dom, &token)?;
    }
    Ok(token)
}

/// As [`authorise`], but arms a keyed token: the process that registers
/// with it gets `key` (its sealed-file key) from Xen, and only that one
/// process. The key is never written to xenstore; only the token is.
pub fn authorise_keyed<H, X>(
    hv: &H,
    xs: &X,
    dom: DomId,
    key: &TsysKey,
    hand_over: bool,
) -> Result<TsysToken, HvError>
where
    H: Hypervisor + ?Sized,
    X: XenStore + ?Sized,
{
    let token = fresh_token(dom)?;
    hv.tsys_authorise_keyed(dom, &token, key)?;
    if hand_over {
        hand_over_token(xs, dom, &token)?;
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hex_round_trips_and_refuses_junk() {
        let token = TsysToken::from_bytes(std::array::from_fn(|i| i as u8 * 7));
        let hex = token.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(TsysToken::from_hex(&hex), Some(token.clone()));
        assert_eq!(TsysToken::from_hex(&format!("{hex}\n")), Some(token));
        assert_eq!(TsysToken::from_hex(&hex[2..]), None);
        assert_eq!(TsysToken::from_hex(&format!("{}zz", &hex[2..])), None);
        assert_eq!(TsysToken::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn key_debug_is_redacted_and_random_keys_differ() {
        let a = TsysKey::random().unwrap();
        let b = TsysKey::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "TsysKey(<redacted>)");
        let k = TsysKey::from_bytes([0xab; TSYS_KEY_LEN]);
        assert_eq!(k.as_bytes(), &[0xab; TSYS_KEY_LEN]);
        assert!(!format!("{k:?}").to_lowercase().contains("ab"));
    }

    #[test]
    fn token_debug_is_redacted_and_random_tokens_differ() {
        let a = TsysToken::random().unwrap();
        let b = TsysToken::random().unwrap();
        assert_ne!(a, b);
        assert!(!format!("{a:?}").contains(&a.to_hex()[..8]));
    }
}

#[cfg(all(test, feature = "fake"))]
mod fake_tests {
    use super::*;
    use crate::fake::{FakeHypervisor, FakeXenStore};
    use crate::DomainType;

    #[test]
    fn authorise_arms_xen_then_hands_the_token_to_the_guest() {
        let hv = FakeHypervisor::new();
        let xs = FakeXenStore::new();
        hv.add_domain(DomId(5), DomainType::Pv, 1024);
        let token = authorise(&hv, &xs, DomId(5), true).unwrap();
        let written = xs
            .read_string(Transaction::NONE, "/local/domain/5/data/tsys/token")
            .unwrap();
        assert_eq!(TsysToken::from_hex(&written), Some(token.clone()));
        assert!(hv.tsys_register(DomId(5), &token, Mfn(9)));

        // Kept to the caller: nothing in xenstore.
        let token = authorise(&hv, &xs, DomId(5), false).unwrap();
        assert_ne!(
            xs.read_string(Transaction::NONE, "/local/domain/5/data/tsys/token")
                .unwrap(),
            token.to_hex()
        );
    }

    #[test]
    fn authorise_keyed_hands_the_key_to_the_one_process_that_registers() {
        let hv = FakeHypervisor::new();
        let xs = FakeXenStore::new();
        hv.add_domain(DomId(5), DomainType::Pv, 1024);
        let key = TsysKey::from_bytes([0x5a; TSYS_KEY_LEN]);
        let token = authorise_keyed(&hv, &xs, DomId(5), &key, true).unwrap();
        let written = xs
            .read_string(Transaction::NONE, "/local/domain/5/data/tsys/token")
            .unwrap();
        assert_eq!(written, token.to_hex(), "the token, never the key");
        assert!(hv.tsys_status(DomId(5)).unwrap().token_armed);
        assert!(hv.tsys_register(DomId(5), &token, Mfn(9)));
        assert_eq!(hv.tsys_process_key(DomId(5), Mfn(9)), Some(key));
        assert!(!hv.tsys_register(DomId(5), &token, Mfn(10)), "one-time");
        assert_eq!(hv.tsys_process_key(DomId(5), Mfn(10)), None);
    }

    #[test]
    fn keyed_authorise_refused_writes_nothing() {
        let hv = FakeHypervisor::new();
        let xs = FakeXenStore::new();
        hv.add_domain(DomId(6), DomainType::Hvm, 1024);
        let key = TsysKey::from_bytes([1; TSYS_KEY_LEN]);
        assert!(authorise_keyed(&hv, &xs, DomId(6), &key, true).is_err());
        assert!(xs
            .read(Transaction::NONE, "/local/domain/6/data/tsys/token")
            .is_err());
    }

    #[test]
    fn no_token_is_written_when_xen_refuses() {
        let hv = FakeHypervisor::new();
        let xs = FakeXenStore::new();
        hv.add_domain(DomId(6), DomainType::Hvm, 1024);
        assert!(authorise(&hv, &xs, DomId(6), true).is_err());
        assert!(xs
            .read(Transaction::NONE, "/local/domain/6/data/tsys/token")
            .is_err());
    }
}
