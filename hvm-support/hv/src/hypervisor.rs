//! The [`Hypervisor`] trait: host facts, domains, pause, guest memory layout,
//! memory sharing and vCPU registers.

use serde::{Deserialize, Serialize};

use crate::{
    DomId, Errno, ErrorKind, Gfn, GrantRef, HvError, SharingEvents, SharingHandle, TsysKey,
    TsysStatus, TsysToken, PAGE_SIZE,
};

/// Hypervisor version as reported by `XENVER_version` / `XENVER_extraversion`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenVersion {
    pub major: u16,
    pub minor: u16,
    /// Raw extraversion, e.g. `.5` or `.7-pre`.
    pub extra: String,
    /// `XENVER_capabilities`, e.g. `xen-3.0-x86_64 hvm-3.0-x86_32 ...`.
    pub capabilities: String,
}

impl XenVersion {
    /// `major.minor` followed by the numeric part of the extraversion:
    /// `4.17` + `.5-pre` gives `4.17.5`.
    pub fn release(&self) -> String {
        let mut release = format!("{}.{}", self.major, self.minor);
        if let Some(rest) = self.extra.strip_prefix('.') {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !digits.is_empty() {
                release.push('.');
                release.push_str(&digits);
            }
        }
        release
    }
}

/// What the host can run (`XEN_SYSCTL_PHYSCAP_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtCaps {
    pub pv: bool,
    pub hvm: bool,
    pub hap: bool,
    pub shadow: bool,
}

impl VirtCaps {
    /// Names of the set capabilities, in `xl info`'s order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.pv, "pv"),
            (self.hvm, "hvm"),
            (self.hap, "hap"),
            (self.shadow, "shadow"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

/// Host memory and capabilities (`xc_physinfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysInfo {
    pub total_pages: u64,
    pub free_pages: u64,
    pub nr_cpus: u32,
    pub virt_caps: VirtCaps,
}

/// How a domain is virtualized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    Pv,
    Pvh,
    Hvm,
}

impl DomainType {
    /// Whether Xen keeps a p2m for the guest (HVM and PVH): foreign maps and
    /// memory sharing then take gfns.
    pub fn is_translated(self) -> bool {
        !matches!(self, DomainType::Pv)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Pv => "pv",
            DomainType::Pvh => "pvh",
            DomainType::Hvm => "hvm",
        }
    }
}

/// One summary state per domain. Xen reports several flags at once; see
/// `circ-xen` for the precedence used to pick one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainState {
    Running,
    Blocked,
    Paused,
    Shutdown,
    Dying,
    Crashed,
}

impl DomainState {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::Shutdown => "shutdown",
            DomainState::Dying => "dying",
            DomainState::Crashed => "crashed",
        }
    }
}

/// Per-domain facts from one `getdomaininfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub domid: DomId,
    pub domain_type: DomainType,
    pub state: DomainState,
    /// Pages currently allocated to the domain.
    pub tot_pages: u64,
    /// The domain's allocation limit, in pages.
    pub max_pages: u64,
    /// Pages of this domain backed by a shared frame.
    pub shr_pages: u64,
    pub online_vcpus: u32,
}

impl DomainInfo {
    pub fn memory_kib(&self) -> u64 {
        pages_to_kib(self.tot_pages)
    }

    pub fn max_memory_kib(&self) -> u64 {
        pages_to_kib(self.max_pages)
    }
}

/// Pages to KiB, saturating: dom0's `max_pages` can be "unlimited" (~u64::MAX).
pub fn pages_to_kib(pages: u64) -> u64 {
    pages.saturating_mul((PAGE_SIZE / 1024) as u64)
}

/// One side of a share: a nominated page and the handle nominate returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharePage {
    pub dom: DomId,
    pub gfn: Gfn,
    pub handle: SharingHandle,
}

/// Which page of a share: the source, whose frame is kept, or the client,
/// whose frame is given up for the source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShareSide {
    Source,
    Client,
}

/// Xen's `XENMEM_SHARING_OP_S_HANDLE_INVALID` and `..._C_HANDLE_INVALID`:
/// share returns them as errno (they are not EBADF/ECHILD there).
const SHARING_S_HANDLE_INVALID: i32 = 10;
const SHARING_C_HANDLE_INVALID: i32 = 9;

impl ShareSide {
    /// The side whose handle share found stale, from share's errno.
    pub fn from_share_errno(errno: Errno) -> Option<Self> {
        match errno.0 {
            SHARING_S_HANDLE_INVALID => Some(ShareSide::Source),
            SHARING_C_HANDLE_INVALID => Some(ShareSide::Client),
            _ => None,
        }
    }

    /// The errno share returns when this side's handle is stale.
    pub fn stale_handle_errno(self) -> Errno {
        Errno(match self {
            ShareSide::Source => SHARING_S_HANDLE_INVALID,
            ShareSide::Client => SHARING_C_HANDLE_INVALID,
        })
    }
}

/// The few vCPU registers a dom0 tool needs to walk a guest's page tables.
///
/// For HVM/PVH `cr3` is a guest-physical address; for PV it is Xen's encoding
/// of a machine frame (`mfn << 12` for 64-bit guests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuRegs {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
}

/// The control-domain view of the hypervisor.
///
/// Methods take `&self`: implementations are handles whose libraries keep
/// their own locking, or fakes with interior mutability.
pub trait Hypervisor {
    /// Version and capability strings.
    fn version(&self) -> Result<XenVersion, HvError>;

    /// Host memory and virtualization capabilities.
    fn physinfo(&self) -> Result<PhysInfo, HvError>;

    /// All domains, in domid order.
    fn domains(&self) -> Result<Vec<DomainInfo>, HvError>;

    /// One domain; `ErrorKind::NotFound` if it does not exist.
    fn domain(&self, dom: DomId) -> Result<DomainInfo, HvError>;

    fn pause(&self, dom: DomId) -> Result<(), HvError>;

    fn unpause(&self, dom: DomId) -> Result<(), HvError>;

    /// Highest gfn the domain's p2m covers. Often far above its RAM: a
    /// 128 MiB PVH guest has special pages just below 4 GiB. Which gfns
    /// below it are populated: [`crate::populated::populated_ranges`].
    fn maximum_gpfn(&self, dom: DomId) -> Result<Gfn, HvError>;

    /// Turn memory sharing on or off for a domain (`xc_memshr_control`);
    /// nominate fails until it is on.
    fn set_sharing(&self, dom: DomId, enable: bool) -> Result<(), HvError>;

    /// Offer a page for sharing. Fails with `Busy` (E2BIG) while anything
    /// else, including our own foreign mapping, still references it.
    fn nominate_gfn(&self, dom: DomId, gfn: Gfn) -> Result<SharingHandle, HvError>;

    /// Offer the page behind a guest's grant reference for sharing.
    fn nominate_gref(&self, dom: DomId, gref: GrantRef) -> Result<SharingHandle, HvError>;

    /// Back `client` with `source`'s frame. Xen does not compare contents:
    /// the caller must have checked that the pages are equal.
    fn share(&self, source: SharePage, client: SharePage) -> Result<(), HvError>;

    /// Host-wide pages saved by sharing.
    fn sharing_freed_pages(&self) -> Result<u64, HvError>;

    /// Host-wide frames that currently back shared pages.
    fn sharing_used_frames(&self) -> Result<u64, HvError>;

    /// Whether `gfn` of `dom` is backed by a sharing frame, and by how many
    /// gfns that frame is referenced (`xc_memshr_debug_gfn`): `Some(1)` for
    /// a page nominated and not shared yet, `Some(n >= 2)` for a page shared
    /// with `n - 1` others, `None` for a private page (or no page).
    fn sharing_refs(&self, dom: DomId, gfn: Gfn) -> Result<Option<u32>, HvError> {
        let _ = (dom, gfn);
        Err(HvError::with_kind(
            "this hypervisor cannot tell a page's sharing state",
            ErrorKind::NotSupported,
            None,
        ))
    }

    /// Registers of one vCPU (64-bit guests).
    fn vcpu_registers(&self, dom: DomId, vcpu: u32) -> Result<VcpuRegs, HvError>;

    /// A handle for the domains' memory-sharing vm_event rings (see
    /// [`SharingEvents`]). `NotSupported` where there are none.
    fn sharing_events(&self) -> Result<Box<dyn SharingEvents>, HvError> {
        Err(HvError::with_kind(
            "this hypervisor has no memory-sharing event rings",
            ErrorKind::NotSupported,
            None,
        ))
    }

    /// Trusted system calls (xen-patches/0002): lets `dom`'s processes
    /// register, arming one registration with `token` (replacing an unused
    /// one). `NotSupported` on a hypervisor without the patch or for a
    /// domain that is not 64-bit PV.
    fn tsys_authorise(&self, dom: DomId, token: &TsysToken) -> Result<(), HvError> {
        let _ = (dom, token);
        Err(tsys_unsupported())
    }

    /// As [`Self::tsys_authorise`], and Xen attaches `key` to the process
    /// that registers with `token`: Xen seals and opens that process's
    /// sealed files (CTS1) with it. The key goes to that one registration
    /// only; a later unkeyed token carries none. `NotSupported` on a
    /// hypervisor without the sealed-I/O patch.
    fn tsys_authorise_keyed(
        &self,
        dom: DomId,
        token: &TsysToken,
        key: &TsysKey,
    ) -> Result<(), HvError> {
        let _ = (dom, token, key);
        Err(tsys_unsupported())
    }

    /// Ends `dom`'s authorisation, its armed token and every registration.
    fn tsys_revoke(&self, dom: DomId) -> Result<(), HvError> {
        let _ = dom;
        Err(tsys_unsupported())
    }

    /// `dom`'s trusted-syscall state: authorisation and registered processes.
    fn tsys_status(&self, dom: DomId) -> Result<TsysStatus, HvError> {
        let _ = dom;
        Err(tsys_unsupported())
    }
}

fn tsys_unsupported() -> HvError {
    HvError::with_kind(
        "this hypervisor has no trusted system calls",
        ErrorKind::NotSupported,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(extra: &str) -> XenVersion {
        XenVersion {
            major: 4,
            minor: 17,
            extra: extra.into(),
            capabilities: String::new(),
        }
    }

    #[test]
    fn release_takes_numeric_extraversion() {
        assert_eq!(version(".5").release(), "4.17.5");
        assert_eq!(version(".5-pre").release(), "4.17.5");
        assert_eq!(version("-rc").release(), "4.17");
        assert_eq!(version("").release(), "4.17");
    }

    #[test]
    fn virt_caps_names_in_xl_order() {
        let caps = VirtCaps {
            pv: true,
            hvm: true,
            hap: true,
            shadow: false,
        };
        assert_eq!(caps.names(), ["pv", "hvm", "hap"]);
    }

    #[test]
    fn share_errno_names_the_stale_side() {
        for side in [ShareSide::Source, ShareSide::Client] {
            assert_eq!(
                ShareSide::from_share_errno(side.stale_handle_errno()),
                Some(side)
            );
        }
        assert_eq!(
            ShareSide::from_share_errno(Errno(10)),
            Some(ShareSide::Source)
        );
        assert_eq!(
            ShareSide::from_share_errno(Errno(9)),
            Some(ShareSide::Client)
        );
        assert_eq!(ShareSide::from_share_errno(Errno(libc::EINVAL)), None);
    }

    #[test]
    fn unlimited_max_pages_saturates() {
        assert_eq!(pages_to_kib(u64::MAX), u64::MAX);
        assert_eq!(pages_to_kib(256), 1024);
    }
}
