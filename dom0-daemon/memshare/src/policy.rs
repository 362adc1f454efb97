//! Which domains take part in page sharing.
//!
//! Opt-in is per domain and lives in xenstore under a dom0-owned node that
//! guests can neither read nor write:
//!
//! ```text
//! /local/domain/0/circular/memshare/<domid> = "<domain name>"
//! ```
//!
//! `circ share enable DOMAIN` writes it, `circ share disable DOMAIN` removes
//! it. The value is the domain's name at enable time: a key left behind by a
//! domain that died while no daemon ran is ignored (and removed) once its
//! domid is reused by a domain with another name. dom0 and PV guests are
//! never eligible, whatever the store says: PV guests have no p2m in Xen,
//! and sharing needs one.

use std::collections::BTreeMap;

use circ_hv::{
    DomId, DomainInfo, DomainState, DomainType, ErrorKind, HvError, Hypervisor, Transaction,
    XenStore,
};
use serde::Serialize;

use crate::MemshareError;

/// Parent of the per-domain opt-in keys.
pub const POLICY_ROOT: &str = "/local/domain/0/circular/memshare";

/// The opt-in key of one domain.
pub fn policy_key(dom: DomId) -> String {
    format!("{POLICY_ROOT}/{dom}")
}

/// Why a domain is or is not scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Eligibility {
    /// Opted in, translated (HVM/PVH) and alive: scanned.
    Eligible,
    /// The control domain is never touched.
    ControlDomain,
    /// PV guests have no p2m: Xen cannot share their pages.
    Pv,
    /// No opt-in key.
    NotOptedIn,
    /// The key names another domain that had this domid before.
    StaleKey,
    /// Shutting down, dying or crashed: left alone.
    NotRunning,
}

impl Eligibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Eligibility::Eligible => "eligible",
            Eligibility::ControlDomain => "control-domain",
            Eligibility::Pv => "pv",
            Eligibility::NotOptedIn => "not-opted-in",
            Eligibility::StaleKey => "stale-key",
            Eligibility::NotRunning => "not-running",
        }
    }
}

/// The opt-in keys as read from the store: domid to the name recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    opted_in: BTreeMap<DomId, String>,
}

impl Policy {
    /// Read every key under [`POLICY_ROOT`]. Children that are not domids
    /// are ignored: only dom0 writes there, but a typo must not stop us.
    pub fn read<S: XenStore>(xs: &S) -> Result<Self, HvError> {
        let children = match xs.directory(Transaction::NONE, POLICY_ROOT) {
            Ok(children) => children,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e),
        };
        let mut opted_in = BTreeMap::new();
        for child in children {
            let Ok(domid) = child.parse::<u16>() else {
                tracing::warn!(key = %child, "ignoring a memshare policy key that is not a domid");
                continue;
            };
            let path = format!("{POLICY_ROOT}/{child}");
            match xs.read_string(Transaction::NONE, &path) {
                Ok(name) => {
                    opted_in.insert(DomId(domid), name);
                }
                // Removed between the listing and the read.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self { opted_in })
    }

    /// Decide for one domain; `name` is its current `/local/domain/N/name`.
    pub fn eligibility(&self, info: &DomainInfo, name: &str) -> Eligibility {
        if info.domid == DomId::DOM0 {
            return Eligibility::ControlDomain;
        }
        if info.domain_type == DomainType::Pv {
            return Eligibility::Pv;
        }
        match self.opted_in.get(&info.domid) {
            None => Eligibility::NotOptedIn,
            Some(recorded) if recorded != name => Eligibility::StaleKey,
            Some(_) => match info.state {
                DomainState::Running | DomainState::Blocked | DomainState::Paused => {
                    Eligibility::Eligible
                }
                DomainState::Shutdown | DomainState::Dying | DomainState::Crashed => {
                    Eligibility::NotRunning
                }
            },
        }
    }

    /// Domids with a key, whether or not the domain still exists.
    pub fn keyed_domids(&self) -> impl Iterator<Item = DomId> + '_ {
        self.opted_in.keys().copied()
    }
}

/// The name of a domain, or "" if it has none (or just vanished).
pub fn domain_name<S: XenStore>(xs: &S, dom: DomId) -> Result<String, HvError> {
    match xs.read_string(Transaction::NONE, &format!("/local/domain/{dom}/name")) {
        Ok(name) => Ok(name),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// Find a domain by domid or name.
pub fn resolve_domain<H: Hypervisor, S: XenStore>(
    hv: &H,
    xs: &S,
    spec: &str,
) -> Result<(DomainInfo, String), MemshareError> {
    let domains = hv.domains()?;
    if let Ok(domid) = spec.parse::<u16>() {
        if let Some(info) = domains.iter().find(|d| d.domid == DomId(domid)) {
            let name = domain_name(xs, info.domid)?;
            return Ok((info.clone(), name));
        }
    }
    for info in domains {
        let name = domain_name(xs, info.domid)?;
        if name == spec {
            return Ok((info, name));
        }
    }
    Err(MemshareError::NoSuchDomain(spec.to_owned()))
}

/// Opt a domain in: write its key and turn sharing on in Xen.
pub fn enable<H: Hypervisor, S: XenStore>(
    hv: &H,
    xs: &S,
    spec: &str,
) -> Result<DomId, MemshareError> {
    let (info, name) = resolve_domain(hv, xs, spec)?;
    let refuse = |reason| MemshareError::NotEligible {
        dom: info.domid,
        reason,
    };
    if info.domid == DomId::DOM0 {
        return Err(refuse("the control domain"));
    }
    if info.domain_type == DomainType::Pv {
        return Err(refuse(
            "a PV guest: Xen shares pages of HVM/PVH guests only",
        ));
    }
    hv.set_sharing(info.domid, true)
        .map_err(MemshareError::from_sharing)?;
    xs.write(Transaction::NONE, &policy_key(info.domid), name.as_bytes())?;
    Ok(info.domid)
}

/// Opt a domain out: remove its key and turn sharing off in Xen. Pages
/// already shared stay shared until the guest writes them.
pub fn disable<H: Hypervisor, S: XenStore>(
    hv: &H,
    xs: &S,
    spec: &str,
) -> Result<DomId, MemshareError> {
    let (info, _) = resolve_domain(hv, xs, spec)?;
    match xs.rm(Transaction::NONE, &policy_key(info.domid)) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    if info.domid != DomId::DOM0 && info.domain_type.is_translated() {
        match hv.set_sharing(info.domid, false) {
            Ok(()) => {}
            // Nothing to turn off on a hypervisor without sharing.
            Err(e) if e.kind() == ErrorKind::NotSupported => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(info.domid)
}

/// Remove keys of domains that no longer exist or whose domid now belongs
/// to another domain. Returns the domids pruned.
pub fn prune_stale<S: XenStore>(
    xs: &S,
    policy: &Policy,
    live: &[(DomainInfo, String)],
) -> Result<Vec<DomId>, HvError> {
    let mut pruned = Vec::new();
    for dom in policy.keyed_domids() {
        let keep = live.iter().any(|(info, name)| {
            info.domid == dom && policy.eligibility(info, name) != Eligibility::StaleKey
        });
        if !keep {
            match xs.rm(Transaction::NONE, &policy_key(dom)) {
                Ok(()) => pruned.push(dom),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use circ_hv::fake::{FakeHypervisor, FakeXenStore};

    fn host() -> (FakeHypervisor, FakeXenStore) {
        let hv = FakeHypervisor::new();
        let xs = FakeXenStore::new();
        for (id, ty, name) in [
            (1, DomainType::Pvh, "a"),
            (2, DomainType::Pv, "pv"),
            (3, DomainType::Hvm, "c"),
        ] {
            hv.add_domain(DomId(id), ty, 1024);
            xs.write(
                Transaction::NONE,
                &format!("/local/domain/{id}/name"),
                name.as_bytes(),
            )
            .unwrap();
        }
        xs.write(Transaction::NONE, "/local/domain/0/name", b"Domain-0")
            .unwrap();
        (hv, xs)
    }

    fn eligibility_of(hv: &FakeHypervisor, xs: &FakeXenStore, dom: u16) -> Eligibility {
        let policy = Policy::read(xs).unwrap();
        let info = hv.domain(DomId(dom)).unwrap();
        policy.eligibility(&info, &domain_name(xs, DomId(dom)).unwrap())
    }

    #[test]
    fn enable_by_name_writes_key_and_turns_sharing_on() {
        let (hv, xs) = host();
        assert_eq!(eligibility_of(&hv, &xs, 1), Eligibility::NotOptedIn);
        assert_eq!(enable(&hv, &xs, "a").unwrap(), DomId(1));
        assert_eq!(
            xs.read(Transaction::NONE, &policy_key(DomId(1))).unwrap(),
            b"a"
        );
        assert_eq!(eligibility_of(&hv, &xs, 1), Eligibility::Eligible);
        // Sharing is on in the hypervisor: nominate works.
        hv.set_page(DomId(1), circ_hv::Gfn(0), b"x");
        hv.nominate_gfn(DomId(1), circ_hv::Gfn(0)).unwrap();

        disable(&hv, &xs, "1").unwrap();
        assert_eq!(eligibility_of(&hv, &xs, 1), Eligibility::NotOptedIn);
        assert!(hv.nominate_gfn(DomId(1), circ_hv::Gfn(0)).is_err());
    }

    #[test]
    fn dom0_and_pv_are_refused_even_with_a_key() {
        let (hv, xs) = host();
        assert!(matches!(
            enable(&hv, &xs, "pv"),
            Err(MemshareError::NotEligible { .. })
        ));
        assert!(matches!(
            enable(&hv, &xs, "Domain-0"),
            Err(MemshareError::NotEligible { .. })
        ));
        // A hand-written key changes nothing.
        xs.write(Transaction::NONE, &policy_key(DomId(2)), b"pv")
            .unwrap();
        xs.write(Transaction::NONE, &policy_key(DomId(0)), b"Domain-0")
            .unwrap();
        assert_eq!(eligibility_of(&hv, &xs, 2), Eligibility::Pv);
        assert_eq!(eligibility_of(&hv, &xs, 0), Eligibility::ControlDomain);
        assert!(matches!(
            enable(&hv, &xs, "nope"),
            Err(MemshareError::NoSuchDomain(_))
        ));
    }

    #[test]
    fn reused_domid_is_a_stale_key_and_gets_pruned() {
        let (hv, xs) = host();
        enable(&hv, &xs, "c").unwrap();
        xs.write(Transaction::NONE, &policy_key(DomId(9)), b"gone")
            .unwrap();
        xs.write(Transaction::NONE, &format!("{POLICY_ROOT}/junk"), b"")
            .unwrap();
        // Domain 3 dies; a new domain gets domid 3 with another name.
        xs.write(Transaction::NONE, "/local/domain/3/name", b"other")
            .unwrap();
        assert_eq!(eligibility_of(&hv, &xs, 3), Eligibility::StaleKey);

        let policy = Policy::read(&xs).unwrap();
        let live: Vec<_> = hv
            .domains()
            .unwrap()
            .into_iter()
            .map(|d| {
                let name = domain_name(&xs, d.domid).unwrap();
                (d, name)
            })
            .collect();
        let pruned = prune_stale(&xs, &policy, &live).unwrap();
        assert_eq!(pruned, [DomId(3), DomId(9)]);
        assert_eq!(
            Policy::read(&xs).unwrap().keyed_domids().count(),
            0,
            "only the non-domid key is left, and it is ignored"
        );
    }

    #[test]
    fn dying_domains_are_left_alone() {
        let (hv, xs) = host();
        enable(&hv, &xs, "a").unwrap();
        hv.set_state(DomId(1), DomainState::Dying);
        assert_eq!(eligibility_of(&hv, &xs, 1), Eligibility::NotRunning);
    }
}
