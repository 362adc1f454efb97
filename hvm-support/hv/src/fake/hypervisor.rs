//! [`FakeHypervisor`] and [`FakeForeignMemory`], sharing one simulated host.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::sharing_events::Rings;
use super::{os_err, FakeSharingEvents};
use crate::{
    DomId, DomainInfo, DomainState, DomainType, Errno, ErrorKind, ForeignMapping, ForeignMemory,
    Gfn, GrantRef, HvError, Hypervisor, Mfn, PhysInfo, Placement, Protection, SharePage, ShareSide,
    SharingHandle, TsysKey, TsysProcess, TsysStatus, TsysToken, VcpuRegs, VirtCaps, XenVersion,
    PAGE_SIZE,
};

type FrameId = u64;

#[derive(Debug)]
struct Frame {
    data: Box<[u8; PAGE_SIZE]>,
    /// p2m entries pointing here; more than one only once shared.
    users: u32,
    /// Set by nominate; cleared when the sole user writes the page.
    handle: Option<u64>,
}

#[derive(Debug)]
struct Domain {
    domain_type: DomainType,
    state: DomainState,
    max_pages: u64,
    pause_count: u32,
    sharing: bool,
    p2m: BTreeMap<Gfn, FrameId>,
    /// Live foreign mappings per gfn.
    mapped: HashMap<Gfn, u32>,
    grants: HashMap<GrantRef, Grant>,
    vcpus: Vec<VcpuRegs>,
    tsys: FakeTsys,
}

/// A domain's trusted-syscall state, as xen-patches/0002 keeps it.
#[derive(Debug, Default)]
struct FakeTsys {
    authorised: bool,
    token: Option<TsysToken>,
    /// The key armed with `token` (a keyed authorisation), handed to the
    /// process that registers with it.
    armed_key: Option<TsysKey>,
    refused: u64,
    processes: Vec<TsysProcess>,
    /// Keys of registered processes, by user L4.
    keys: Vec<(Mfn, TsysKey)>,
}

/// A page a domain granted (to dom0: the fake knows no other grantee).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Grant {
    pub(super) gfn: Gfn,
    pub(super) readonly: bool,
}

#[derive(Debug)]
struct Host {
    version: XenVersion,
    phys: PhysInfo,
    sharing_supported: bool,
    tsys_supported: bool,
    domains: BTreeMap<DomId, Domain>,
    frames: HashMap<FrameId, Frame>,
    next_frame: FrameId,
    next_handle: u64,
}

impl Host {
    fn domain(&self, dom: DomId) -> Result<&Domain, HvError> {
        self.domains
            .get(&dom)
            .ok_or_else(|| os_err(format!("no domain {dom}"), libc::ESRCH))
    }

    fn domain_mut(&mut self, dom: DomId) -> Result<&mut Domain, HvError> {
        self.domains
            .get_mut(&dom)
            .ok_or_else(|| os_err(format!("no domain {dom}"), libc::ESRCH))
    }

    fn alloc_frame(&mut self, data: Box<[u8; PAGE_SIZE]>) -> FrameId {
        let id = self.next_frame;
        self.next_frame += 1;
        self.frames.insert(
            id,
            Frame {
                data,
                users: 1,
                handle: None,
            },
        );
        id
    }

    fn release_frame(&mut self, id: FrameId) {
        if let Some(frame) = self.frames.get_mut(&id) {
            frame.users -= 1;
            if frame.users == 0 {
                self.frames.remove(&id);
            }
        }
    }

    fn info(&self, domid: DomId, d: &Domain) -> DomainInfo {
        let shr_pages = d
            .p2m
            .values()
            .filter(|f| self.frames.get(f).is_some_and(|f| f.handle.is_some()))
            .count() as u64;
        DomainInfo {
            domid,
            domain_type: d.domain_type,
            state: if d.pause_count > 0 {
                DomainState::Paused
            } else {
                d.state
            },
            tot_pages: d.p2m.len() as u64,
            max_pages: d.max_pages,
            shr_pages,
            online_vcpus: d.vcpus.len() as u32,
        }
    }

    fn check_sharing(&self, dom: DomId) -> Result<(), HvError> {
        if !self.sharing_supported {
            return Err(os_err("memory sharing is not built in", libc::ENOSYS));
        }
        if !self.domain(dom)?.sharing {
            return Err(os_err(
                format!("sharing is not enabled on domain {dom}"),
                libc::EOPNOTSUPP,
            ));
        }
        Ok(())
    }

    /// Xen's copy-on-write: a write to a shared page gives the writer a
    /// private copy; a write to a nominated page invalidates the handle.
    fn frame_for_write(&mut self, dom: DomId, gfn: Gfn) -> Result<FrameId, HvError> {
        let id = *self
            .domain(dom)?
            .p2m
            .get(&gfn)
            .ok_or_else(|| os_err("hole", libc::EINVAL))?;
        let frame = self
            .frames
            .get_mut(&id)
            .ok_or_else(|| os_err("lost frame", libc::EFAULT))?;
        if frame.users == 1 {
            frame.handle = None;
            return Ok(id);
        }
        let copy = frame.data.clone();
        frame.users -= 1;
        let new = self.alloc_frame(copy);
        self.domain_mut(dom)?.p2m.insert(gfn, new);
        Ok(new)
    }
}

/// A simulated host: dom0 (PV, running) plus the domains tests add. Clones
/// share the host.
#[derive(Debug, Clone)]
pub struct FakeHypervisor {
    host: Arc<Mutex<Host>>,
    rings: Arc<Mutex<Rings>>,
}

impl Default for FakeHypervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHypervisor {
    /// A 4.17.5 host with 8 GiB, PV/HVM/HAP, sharing available, and dom0.
    pub fn new() -> Self {
        let mut host = Host {
            version: XenVersion {
                major: 4,
                minor: 17,
                extra: ".5".into(),
                capabilities: "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64".into(),
            },
            phys: PhysInfo {
                total_pages: 2 << 20,
                free_pages: 1 << 20,
                nr_cpus: 2,
                virt_caps: VirtCaps {
                    pv: true,
                    hvm: true,
                    hap: true,
                    shadow: false,
                },
            },
            sharing_supported: true,
            tsys_supported: true,
            domains: BTreeMap::new(),
            frames: HashMap::new(),
            next_frame: 1,
            next_handle: 1,
        };
        let mut dom0 = new_domain(DomainType::Pv, 262_144);
        dom0.vcpus = vec![VcpuRegs::default(); 2];
        host.domains.insert(DomId::DOM0, dom0);
        Self {
            host: Arc::new(Mutex::new(host)),
            rings: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Host> {
        lock(&self.host)
    }

    /// Add a running domain with one vCPU and no memory.
    pub fn add_domain(&self, dom: DomId, domain_type: DomainType, max_pages: u64) {
        self.lock()
            .domains
            .insert(dom, new_domain(domain_type, max_pages));
    }

    pub fn remove_domain(&self, dom: DomId) {
        let mut host = self.lock();
        if let Some(d) = host.domains.remove(&dom) {
            for id in d.p2m.into_values() {
                host.release_frame(id);
            }
        }
    }

    /// Populate `gfn` (or replace its contents) with a private page.
    /// `data` shorter than a page is zero-padded.
    pub fn set_page(&self, dom: DomId, gfn: Gfn, data: &[u8]) {
        let mut page = Box::new([0u8; PAGE_SIZE]);
        let n = data.len().min(PAGE_SIZE);
        page[..n].copy_from_slice(&data[..n]);
        let mut host = self.lock();
        let id = host.alloc_frame(page);
        let old = host
            .domains
            .get_mut(&dom)
            .and_then(|d| d.p2m.insert(gfn, id));
        if let Some(old) = old {
            host.release_frame(old);
        }
    }

    /// Contents of a populated page.
    pub fn page(&self, dom: DomId, gfn: Gfn) -> Option<Vec<u8>> {
        let host = self.lock();
        let id = host.domains.get(&dom)?.p2m.get(&gfn)?;
        host.frames.get(id).map(|f| f.data.to_vec())
    }

    /// Whether two pages are backed by the same frame.
    pub fn same_frame(&self, a: (DomId, Gfn), b: (DomId, Gfn)) -> bool {
        let host = self.lock();
        let frame = |(dom, gfn): (DomId, Gfn)| {
            host.domains
                .get(&dom)
                .and_then(|d| d.p2m.get(&gfn).copied())
        };
        matches!((frame(a), frame(b)), (Some(x), Some(y)) if x == y)
    }

    pub fn set_state(&self, dom: DomId, state: DomainState) {
        if let Some(d) = self.lock().domains.get_mut(&dom) {
            d.state = state;
        }
    }

    pub fn set_vcpus(&self, dom: DomId, vcpus: Vec<VcpuRegs>) {
        if let Some(d) = self.lock().domains.get_mut(&dom) {
            d.vcpus = vcpus;
        }
    }

    /// Let `gref` of `dom` grant `gfn` read-write (for `nominate_gref`
    /// and the fake grant table).
    pub fn set_grant(&self, dom: DomId, gref: GrantRef, gfn: Gfn) {
        self.insert_grant(
            dom,
            gref,
            Grant {
                gfn,
                readonly: false,
            },
        );
    }

    /// Let `gref` of `dom` grant `gfn` read-only.
    pub fn set_grant_readonly(&self, dom: DomId, gref: GrantRef, gfn: Gfn) {
        self.insert_grant(
            dom,
            gref,
            Grant {
                gfn,
                readonly: true,
            },
        );
    }

    fn insert_grant(&self, dom: DomId, gref: GrantRef, grant: Grant) {
        if let Some(d) = self.lock().domains.get_mut(&dom) {
            d.grants.insert(gref, grant);
        }
    }

    /// What `gref` of `dom` grants: `NotFound` without the domain,
    /// `InvalidInput` (EINVAL) for a ref it did not grant.
    pub(super) fn grant(&self, dom: DomId, gref: GrantRef) -> Result<Grant, HvError> {
        let host = self.lock();
        host.domain(dom)?
            .grants
            .get(&gref)
            .copied()
            .ok_or_else(|| os_err(format!("bad grant {gref} of domain {dom}"), libc::EINVAL))
    }

    /// `false` models stock Debian Xen: sharing calls fail with ENOSYS.
    pub fn set_sharing_supported(&self, supported: bool) {
        self.lock().sharing_supported = supported;
    }

    /// Free host memory as `physinfo` reports it.
    pub fn set_free_pages(&self, pages: u64) {
        self.lock().phys.free_pages = pages;
    }

    /// The host's sharing rings, as [`Hypervisor::sharing_events`] hands
    /// them out: for tests to post requests and check answers.
    /// A hypervisor without xen-patches/0002: the tsys calls fail with ENOSYS.
    pub fn set_tsys_supported(&self, supported: bool) {
        self.lock().tsys_supported = supported;
    }

    /// What a guest process's registration `int $0x81` does: succeeds only
    /// with the armed token of an authorised domain, which it consumes; a
    /// refusal is counted.
    pub fn tsys_register(&self, dom: DomId, token: &TsysToken, l4: Mfn) -> bool {
        let mut host = self.lock();
        let Ok(d) = host.domain_mut(dom) else {
            return false;
        };
        let t = &mut d.tsys;
        if !t.authorised || t.token.as_ref() != Some(token) {
            t.refused += 1;
            return false;
        }
        t.token = None;
        t.keys.retain(|(m, _)| *m != l4);
        let keyed = t.armed_key.is_some();
        if let Some(key) = t.armed_key.take() {
            t.keys.push((l4, key));
        }
        if let Some(p) = t.processes.iter_mut().find(|p| p.l4_mfn == l4) {
            p.keyed = keyed;
        } else {
            t.processes.push(TsysProcess {
                l4_mfn: l4,
                calls: 0,
                restores: 0,
                deferred: 0,
                pending: 0,
                bounces: 0,
                dropped: 0,
                cloak_pages: 0,
                cloak_held: 0,
                cloak_exposed: 0,
                keyed,
                sealed_fds: 0,
                sealed_blocks: 0,
                seal_refused: 0,
            });
        }
        true
    }

    /// The key Xen attached to the process registered with user L4 `l4`
    /// (from a keyed token), as the sealed-I/O path would use it.
    pub fn tsys_process_key(&self, dom: DomId, l4: Mfn) -> Option<TsysKey> {
        let host = self.lock();
        let d = host.domain(dom).ok()?;
        d.tsys
            .keys
            .iter()
            .find(|(m, _)| *m == l4)
            .map(|(_, k)| k.clone())
    }

    /// The guest freed (or unpinned) an L4: its registration ends, and its
    /// key with it.
    pub fn tsys_l4_gone(&self, dom: DomId, l4: Mfn) {
        if let Ok(d) = self.lock().domain_mut(dom) {
            d.tsys.processes.retain(|p| p.l4_mfn != l4);
            d.tsys.keys.retain(|(m, _)| *m != l4);
        }
    }

    fn tsys_domain<R>(
        &self,
        dom: DomId,
        what: &str,
        f: impl FnOnce(&mut FakeTsys) -> R,
    ) -> Result<R, HvError> {
        let mut host = self.lock();
        if !host.tsys_supported {
            return Err(os_err(
                format!("failed to {what} domain {dom}: no trusted system calls"),
                libc::ENOSYS,
            ));
        }
        let d = host.domain_mut(dom)?;
        if d.domain_type != DomainType::Pv {
            return Err(os_err(
                format!("failed to {what} domain {dom}: not a 64-bit PV domain"),
                libc::EOPNOTSUPP,
            ));
        }
        Ok(f(&mut d.tsys))
    }

    pub fn sharing_rings(&self) -> FakeSharingEvents {
        FakeSharingEvents::new(self.clone(), Arc::clone(&self.rings))
    }

    /// A foreign-memory handle onto this host.
    pub fn foreign_memory(&self) -> FakeForeignMemory {
        FakeForeignMemory {
            host: Arc::clone(&self.host),
        }
    }
}

fn new_domain(domain_type: DomainType, max_pages: u64) -> Domain {
    Domain {
        domain_type,
        state: DomainState::Running,
        max_pages,
        pause_count: 0,
        sharing: false,
        p2m: BTreeMap::new(),
        mapped: HashMap::new(),
        grants: HashMap::new(),
        vcpus: vec![VcpuRegs::default()],
        tsys: FakeTsys::default(),
    }
}

/// A panic in another test thread must not cascade into every later call.
fn lock(host: &Mutex<Host>) -> MutexGuard<'_, Host> {
    host.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hypervisor for FakeHypervisor {
    fn version(&self) -> Result<XenVersion, HvError> {
        Ok(self.lock().version.clone())
    }

    fn physinfo(&self) -> Result<PhysInfo, HvError> {
        Ok(self.lock().phys)
    }

    fn domains(&self) -> Result<Vec<DomainInfo>, HvError> {
        let host = self.lock();
        Ok(host
            .domains
            .iter()
            .map(|(id, d)| host.info(*id, d))
            .collect())
    }

    fn domain(&self, dom: DomId) -> Result<DomainInfo, HvError> {
        let host = self.lock();
        let d = host.domain(dom)?;
        Ok(host.info(dom, d))
    }

    fn pause(&self, dom: DomId) -> Result<(), HvError> {
        self.lock().domain_mut(dom)?.pause_count += 1;
        Ok(())
    }

    fn unpause(&self, dom: DomId) -> Result<(), HvError> {
        let mut host = self.lock();
        let d = host.domain_mut(dom)?;
        if d.pause_count == 0 {
            return Err(os_err(format!("domain {dom} is not paused"), libc::EINVAL));
        }
        d.pause_count -= 1;
        Ok(())
    }

    fn maximum_gpfn(&self, dom: DomId) -> Result<Gfn, HvError> {
        let host = self.lock();
        Ok(host
            .domain(dom)?
            .p2m
            .keys()
            .next_back()
            .copied()
            .unwrap_or(Gfn(0)))
    }

    fn set_sharing(&self, dom: DomId, enable: bool) -> Result<(), HvError> {
        let mut host = self.lock();
        if !host.sharing_supported {
            return Err(os_err("memory sharing is not built in", libc::ENOSYS));
        }
        host.domain_mut(dom)?.sharing = enable;
        Ok(())
    }

    fn nominate_gfn(&self, dom: DomId, gfn: Gfn) -> Result<SharingHandle, HvError> {
        let mut host = self.lock();
        host.check_sharing(dom)?;
        let what = || format!("failed to nominate gfn {gfn} of domain {dom}");
        let d = host.domain(dom)?;
        let id = *d
            .p2m
            .get(&gfn)
            .ok_or_else(|| os_err(what(), libc::EINVAL))?;
        if d.mapped.get(&gfn).is_some_and(|n| *n > 0) {
            return Err(os_err(what(), libc::E2BIG));
        }
        let next = host.next_handle;
        let frame = host
            .frames
            .get_mut(&id)
            .ok_or_else(|| os_err(what(), libc::ENOENT))?;
        let handle = *frame.handle.get_or_insert(next);
        if handle == next {
            host.next_handle += 1;
        }
        Ok(SharingHandle(handle))
    }

    fn sharing_refs(&self, dom: DomId, gfn: Gfn) -> Result<Option<u32>, HvError> {
        let host = self.lock();
        host.check_sharing(dom)?;
        let d = host.domain(dom)?;
        Ok(d.p2m
            .get(&gfn)
            .and_then(|id| host.frames.get(id))
            .filter(|f| f.handle.is_some())
            .map(|f| f.users))
    }

    fn nominate_gref(&self, dom: DomId, gref: GrantRef) -> Result<SharingHandle, HvError> {
        let gfn = self.grant(dom, gref)?.gfn;
        self.nominate_gfn(dom, gfn)
    }

    fn share(&self, source: SharePage, client: SharePage) -> Result<(), HvError> {
        let mut host = self.lock();
        host.check_sharing(source.dom)?;
        host.check_sharing(client.dom)?;
        let what = format!(
            "failed to share gfn {} of domain {} into gfn {} of domain {}",
            source.gfn, source.dom, client.gfn, client.dom
        );
        let frame_with = |host: &Host, page: SharePage| {
            let id = *host.domain(page.dom).ok()?.p2m.get(&page.gfn)?;
            (host.frames.get(&id)?.handle == Some(page.handle.0)).then_some(id)
        };
        // As Xen: the side's XENMEM_SHARING_OP_*_HANDLE_INVALID as errno.
        let stale = |side: ShareSide| {
            let errno = side.stale_handle_errno();
            HvError::with_kind(what.clone(), ErrorKind::StaleHandle(side), Some(errno))
        };
        let src = frame_with(&host, source).ok_or_else(|| stale(ShareSide::Source))?;
        let cli = frame_with(&host, client).ok_or_else(|| stale(ShareSide::Client))?;
        if src == cli {
            return Ok(());
        }
        host.domain_mut(client.dom)?.p2m.insert(client.gfn, src);
        if let Some(f) = host.frames.get_mut(&src) {
            f.users += 1;
        }
        host.release_frame(cli);
        Ok(())
    }

    fn sharing_freed_pages(&self) -> Result<u64, HvError> {
        let host = self.lock();
        if !host.sharing_supported {
            return Err(os_err("memory sharing is not built in", libc::ENOSYS));
        }
        Ok(host
            .frames
            .values()
            .filter(|f| f.handle.is_some())
            .map(|f| u64::from(f.users) - 1)
            .sum())
    }

    fn sharing_used_frames(&self) -> Result<u64, HvError> {
        let host = self.lock();
        if !host.sharing_supported {
            return Err(os_err("memory sharing is not built in", libc::ENOSYS));
        }
        Ok(host.frames.values().filter(|f| f.handle.is_some()).count() as u64)
    }

    fn vcpu_registers(&self, dom: DomId, vcpu: u32) -> Result<VcpuRegs, HvError> {
        let host = self.lock();
        let d = host.domain(dom)?;
        d.vcpus
            .get(vcpu as usize)
            .copied()
            .ok_or_else(|| os_err(format!("no vcpu {vcpu} in domain {dom}"), libc::ESRCH))
    }

    fn sharing_events(&self) -> Result<Box<dyn crate::SharingEvents>, HvError> {
        if !self.lock().sharing_supported {
            return Err(os_err("memory sharing is not built in", libc::ENOSYS));
        }
        Ok(Box::new(self.sharing_rings()))
    }

    fn tsys_authorise(&self, dom: DomId, token: &TsysToken) -> Result<(), HvError> {
        self.tsys_domain(dom, "authorise", |t| {
            t.authorised = true;
            t.token = Some(token.clone());
            t.armed_key = None;
        })
    }

    fn tsys_authorise_keyed(
        &self,
        dom: DomId,
        token: &TsysToken,
        key: &TsysKey,
    ) -> Result<(), HvError> {
        self.tsys_domain(dom, "authorise (keyed)", |t| {
            t.authorised = true;
            t.token = Some(token.clone());
            t.armed_key = Some(key.clone());
        })
    }

    fn tsys_revoke(&self, dom: DomId) -> Result<(), HvError> {
        self.tsys_domain(dom, "revoke", |t| {
            t.authorised = false;
            t.token = None;
            t.armed_key = None;
            t.processes.clear();
            t.keys.clear();
        })
    }

    fn tsys_status(&self, dom: DomId) -> Result<TsysStatus, HvError> {
        self.tsys_domain(dom, "read the trusted-syscall state of", |t| TsysStatus {
            authorised: t.authorised,
            token_armed: t.token.is_some(),
            key_armed: t.armed_key.is_some(),
            refused: t.refused,
            processes: t.processes.clone(),
        })
    }
}

/// Foreign mappings onto a [`FakeHypervisor`]'s pages.
#[derive(Debug, Clone)]
pub struct FakeForeignMemory {
    host: Arc<Mutex<Host>>,
}

/// A live fake mapping: holds a reference on each mapped gfn until dropped.
#[derive(Debug)]
pub struct FakeForeignMapping {
    host: Arc<Mutex<Host>>,
    dom: DomId,
    gfns: Vec<Gfn>,
    errors: Vec<Option<Errno>>,
    writable: bool,
    address: usize,
}

impl ForeignMemory for FakeForeignMemory {
    type Mapping = FakeForeignMapping;

    fn map(
        &self,
        dom: DomId,
        gfns: &[Gfn],
        prot: Protection,
        placement: Placement,
    ) -> Result<FakeForeignMapping, HvError> {
        // As the real wrapper: a mapping of zero frames does not exist.
        if gfns.is_empty() {
            return Err(HvError::with_kind(
                format!("failed to map 0 frames of domain {dom}"),
                ErrorKind::InvalidInput,
                None,
            ));
        }
        let mut host = lock(&self.host);
        let d = host.domain_mut(dom)?;
        let mut errors = Vec::with_capacity(gfns.len());
        for gfn in gfns {
            if d.p2m.contains_key(gfn) {
                *d.mapped.entry(*gfn).or_default() += 1;
                errors.push(None);
            } else {
                errors.push(Some(Errno(libc::EINVAL)));
            }
        }
        let address = match placement {
            Placement::Hint(addr) => addr,
            Placement::Anywhere => 0x7f00_0000_0000,
        };
        Ok(FakeForeignMapping {
            host: Arc::clone(&self.host),
            dom,
            gfns: gfns.to_vec(),
            errors,
            writable: prot == Protection::ReadWrite,
            address,
        })
    }
}

impl FakeForeignMapping {
    fn check(&self, index: usize, offset: usize, len: usize) -> Result<Gfn, HvError> {
        let gfn = self.gfns[index];
        if let Some(errno) = self.errors[index] {
            return Err(HvError::os(
                format!("gfn {gfn} of domain {} is not mapped", self.dom),
                errno,
            ));
        }
        if offset.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return Err(os_err(
                format!("access at {offset}+{len} leaves the page"),
                libc::EINVAL,
            ));
        }
        Ok(gfn)
    }
}

impl ForeignMapping for FakeForeignMapping {
    fn dom(&self) -> DomId {
        self.dom
    }

    fn gfns(&self) -> &[Gfn] {
        &self.gfns
    }

    fn address(&self) -> usize {
        self.address
    }

    fn page_error(&self, index: usize) -> Option<Errno> {
        self.errors[index]
    }

    fn read(&self, index: usize, offset: usize, buf: &mut [u8]) -> Result<(), HvError> {
        let gfn = self.check(index, offset, buf.len())?;
        let host = lock(&self.host);
        let id = host
            .domain(self.dom)?
            .p2m
            .get(&gfn)
            .ok_or_else(|| os_err("hole", libc::EFAULT))?;
        let frame = host
            .frames
            .get(id)
            .ok_or_else(|| os_err("lost frame", libc::EFAULT))?;
        buf.copy_from_slice(&frame.data[offset..offset + buf.len()]);
        Ok(())
    }

    fn write(&self, index: usize, offset: usize, data: &[u8]) -> Result<(), HvError> {
        let gfn = self.check(index, offset, data.len())?;
        if !self.writable {
            return Err(os_err("mapping is read-only", libc::EACCES));
        }
        let mut host = lock(&self.host);
        let id = host.frame_for_write(self.dom, gfn)?;
        let frame = host
            .frames
            .get_mut(&id)
            .ok_or_else(|| os_err("lost frame", libc::EFAULT))?;
        frame.data[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }
}

impl Drop for FakeForeignMapping {
    fn drop(&mut self) {
        let mut host = lock(&self.host);
        let Some(d) = host.domains.get_mut(&self.dom) else {
            return;
        };
        for (gfn, err) in self.gfns.iter().zip(&self.errors) {
            if err.is_none() {
                if let Some(n) = d.mapped.get_mut(gfn) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::populated::populated_ranges;
    use crate::GfnRange;

    const A: DomId = DomId(1);
    const B: DomId = DomId(2);

    fn two_guests_with_equal_page() -> FakeHypervisor {
        let hv = FakeHypervisor::new();
        for dom in [A, B] {
            hv.add_domain(dom, DomainType::Pvh, 1024);
            hv.set_page(dom, Gfn(7), b"same");
            hv.set_sharing(dom, true).unwrap();
        }
        hv
    }

    fn page(dom: DomId, gfn: Gfn, handle: SharingHandle) -> SharePage {
        SharePage { dom, gfn, handle }
    }

    #[test]
    fn share_frees_a_page_and_updates_counters() {
        let hv = two_guests_with_equal_page();
        let ha = hv.nominate_gfn(A, Gfn(7)).unwrap();
        let hb = hv.nominate_gfn(B, Gfn(7)).unwrap();
        assert_ne!(ha, hb);
        assert_eq!(
            hv.nominate_gfn(A, Gfn(7)).unwrap(),
            ha,
            "re-nominate returns the same handle"
        );
        hv.share(page(A, Gfn(7), ha), page(B, Gfn(7), hb)).unwrap();

        assert!(hv.same_frame((A, Gfn(7)), (B, Gfn(7))));
        assert_eq!(hv.sharing_freed_pages().unwrap(), 1);
        assert_eq!(hv.sharing_used_frames().unwrap(), 1);
        let shr: u64 = hv.domains().unwrap().iter().map(|d| d.shr_pages).sum();
        assert_eq!(shr, 2, "sum of shr_pages = freed + used");
    }

    #[test]
    fn nominate_fails_busy_while_mapped() {
        let hv = two_guests_with_equal_page();
        let fm = hv.foreign_memory();
        let mapping = fm
            .map(A, &[Gfn(7)], Protection::Read, Placement::Anywhere)
            .unwrap();
        let err = hv.nominate_gfn(A, Gfn(7)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        assert_eq!(err.errno(), Some(Errno(libc::E2BIG)));
        drop(mapping);
        hv.nominate_gfn(A, Gfn(7)).unwrap();
    }

    #[test]
    fn write_after_nominate_invalidates_the_handle() {
        let hv = two_guests_with_equal_page();
        let ha = hv.nominate_gfn(A, Gfn(7)).unwrap();
        let hb = hv.nominate_gfn(B, Gfn(7)).unwrap();
        let fm = hv.foreign_memory();
        fm.map(B, &[Gfn(7)], Protection::ReadWrite, Placement::Anywhere)
            .unwrap()
            .write(0, 0, b"diff")
            .unwrap();
        let err = hv
            .share(page(A, Gfn(7), ha), page(B, Gfn(7), hb))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::StaleHandle(ShareSide::Client));
    }

    #[test]
    fn write_to_shared_page_copies_on_write() {
        let hv = two_guests_with_equal_page();
        let ha = hv.nominate_gfn(A, Gfn(7)).unwrap();
        let hb = hv.nominate_gfn(B, Gfn(7)).unwrap();
        hv.share(page(A, Gfn(7), ha), page(B, Gfn(7), hb)).unwrap();
        let fm = hv.foreign_memory();
        fm.map(B, &[Gfn(7)], Protection::ReadWrite, Placement::Anywhere)
            .unwrap()
            .write(0, 0, b"mine")
            .unwrap();
        assert!(!hv.same_frame((A, Gfn(7)), (B, Gfn(7))));
        assert_eq!(&hv.page(A, Gfn(7)).unwrap()[..4], b"same");
        assert_eq!(&hv.page(B, Gfn(7)).unwrap()[..4], b"mine");
        assert_eq!(hv.sharing_freed_pages().unwrap(), 0);
    }

    #[test]
    fn sharing_unsupported_is_enosys() {
        let hv = two_guests_with_equal_page();
        hv.set_sharing_supported(false);
        let err = hv.nominate_gfn(A, Gfn(7)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotSupported);
        assert_eq!(
            hv.sharing_freed_pages().unwrap_err().kind(),
            ErrorKind::NotSupported
        );
    }

    #[test]
    fn mapping_zero_frames_is_invalid_input_as_on_xen() {
        let hv = two_guests_with_equal_page();
        let err = hv
            .foreign_memory()
            .map(A, &[], Protection::Read, Placement::Anywhere)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn map_reports_per_page_errors_and_reads() {
        let hv = two_guests_with_equal_page();
        let fm = hv.foreign_memory();
        let m = fm
            .map(
                A,
                &[Gfn(6), Gfn(7)],
                Protection::Read,
                Placement::Hint(0x1000_0000),
            )
            .unwrap();
        assert_eq!(m.address(), 0x1000_0000);
        assert_eq!(m.page_error(0), Some(Errno(libc::EINVAL)));
        assert_eq!(m.page_error(1), None);
        let mut buf = [0u8; 4];
        m.read(1, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"same");
        assert!(m.read(0, 0, &mut buf).is_err());
        assert!(m.read(1, PAGE_SIZE - 2, &mut buf).is_err());
        assert_eq!(
            m.write(1, 0, b"x").unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            fm.map(DomId(9), &[Gfn(0)], Protection::Read, Placement::Anywhere)
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn tsys_token_registers_once_and_l4_reuse_loses_trust() {
        let hv = FakeHypervisor::new();
        let guest = DomId(3);
        hv.add_domain(guest, DomainType::Pv, 1024);
        let token = TsysToken::from_bytes([7; 32]);
        assert!(
            !hv.tsys_register(guest, &token, Mfn(0x100)),
            "not authorised yet"
        );
        hv.tsys_authorise(guest, &token).unwrap();
        let status = hv.tsys_status(guest).unwrap();
        assert!(status.authorised && status.token_armed);
        assert!(!hv.tsys_register(guest, &TsysToken::from_bytes([8; 32]), Mfn(0x100)));
        assert!(hv.tsys_register(guest, &token, Mfn(0x100)));
        assert!(
            !hv.tsys_register(guest, &token, Mfn(0x200)),
            "one-time token"
        );
        let status = hv.tsys_status(guest).unwrap();
        assert!(!status.token_armed);
        assert_eq!(status.refused, 3);
        assert_eq!(status.processes.len(), 1);
        assert_eq!(status.processes[0].l4_mfn, Mfn(0x100));
        hv.tsys_l4_gone(guest, Mfn(0x100));
        assert!(hv.tsys_status(guest).unwrap().processes.is_empty());
        hv.tsys_authorise(guest, &token).unwrap();
        assert!(hv.tsys_register(guest, &token, Mfn(0x100)));
        hv.tsys_revoke(guest).unwrap();
        let status = hv.tsys_status(guest).unwrap();
        assert!(!status.authorised && !status.token_armed && status.processes.is_empty());
    }

    #[test]
    fn tsys_keyed_token_gives_its_key_to_one_process_only() {
        let hv = FakeHypervisor::new();
        let guest = DomId(3);
        hv.add_domain(guest, DomainType::Pv, 1024);
        let key = TsysKey::from_bytes([0x11; 32]);
        let keyed = TsysToken::from_bytes([7; 32]);
        hv.tsys_authorise_keyed(guest, &keyed, &key).unwrap();
        // A plain token replacing an unused keyed one drops its key.
        let plain = TsysToken::from_bytes([8; 32]);
        hv.tsys_authorise(guest, &plain).unwrap();
        assert!(hv.tsys_register(guest, &plain, Mfn(0x100)));
        assert_eq!(hv.tsys_process_key(guest, Mfn(0x100)), None);

        hv.tsys_authorise_keyed(guest, &keyed, &key).unwrap();
        assert!(hv.tsys_register(guest, &keyed, Mfn(0x200)));
        assert_eq!(hv.tsys_process_key(guest, Mfn(0x200)), Some(key.clone()));
        assert_eq!(hv.tsys_process_key(guest, Mfn(0x100)), None);
        hv.tsys_l4_gone(guest, Mfn(0x200));
        assert_eq!(hv.tsys_process_key(guest, Mfn(0x200)), None);

        hv.tsys_authorise_keyed(guest, &keyed, &key).unwrap();
        assert!(hv.tsys_register(guest, &keyed, Mfn(0x300)));
        hv.tsys_revoke(guest).unwrap();
        assert_eq!(hv.tsys_process_key(guest, Mfn(0x300)), None);

        hv.add_domain(DomId(4), DomainType::Pvh, 1024);
        assert!(hv.tsys_authorise_keyed(DomId(4), &keyed, &key).is_err());
        hv.set_tsys_supported(false);
        assert!(hv.tsys_authorise_keyed(guest, &keyed, &key).is_err());
    }

    #[test]
    fn tsys_is_for_pv_guests_on_a_patched_hypervisor() {
        let hv = FakeHypervisor::new();
        hv.add_domain(DomId(4), DomainType::Pvh, 1024);
        let token = TsysToken::from_bytes([1; 32]);
        let err = hv.tsys_authorise(DomId(4), &token).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotSupported);
        hv.set_tsys_supported(false);
        let err = hv.tsys_status(DomId::DOM0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotSupported);
    }

    #[test]
    fn pause_is_counted() {
        let hv = two_guests_with_equal_page();
        hv.pause(A).unwrap();
        hv.pause(A).unwrap();
        hv.unpause(A).unwrap();
        assert_eq!(hv.domain(A).unwrap().state, DomainState::Paused);
        hv.unpause(A).unwrap();
        assert_eq!(hv.domain(A).unwrap().state, DomainState::Running);
        assert_eq!(hv.unpause(A).unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(hv.pause(DomId(42)).unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[test]
    fn populated_ranges_and_max_gpfn() {
        let hv = two_guests_with_equal_page();
        hv.set_page(A, Gfn(8), b"");
        hv.set_page(A, Gfn(0xfeff0), b"");
        assert_eq!(hv.maximum_gpfn(A).unwrap(), Gfn(0xfeff0));
        let fm = hv.foreign_memory();
        assert_eq!(
            populated_ranges(&hv, &fm, A).unwrap(),
            [
                GfnRange::new(Gfn(7), Gfn(9)),
                GfnRange::new(Gfn(0xfeff0), Gfn(0xfeff1))
            ]
        );
        assert_eq!(
            populated_ranges(&hv, &fm, DomId::DOM0).unwrap_err().kind(),
            ErrorKind::NotSupported
        );
    }

    #[test]
    fn nominate_gref_resolves_grant() {
        let hv = two_guests_with_equal_page();
        hv.set_grant(A, GrantRef(3), Gfn(7));
        let h = hv.nominate_gref(A, GrantRef(3)).unwrap();
        assert_eq!(hv.nominate_gfn(A, Gfn(7)).unwrap(), h);
        assert!(hv.nominate_gref(A, GrantRef(4)).is_err());
    }
}
