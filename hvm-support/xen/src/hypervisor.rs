//! [`XenHypervisor`]: the `Hypervisor` trait over libxenctrl.

use std::ffi::{c_char, c_void};
use std::mem;

use circ_hv::{
    DomId, DomainInfo, ErrorKind, Gfn, GrantRef, HvError, Hypervisor, PhysInfo, SharePage,
    ShareSide, SharingEvents, SharingHandle, TsysKey, TsysStatus, TsysToken, VcpuRegs, VirtCaps,
    XenVersion,
};
use circ_xen_sys as sys;

use crate::dom0::{check_dom0, OpenError};
use crate::domain::{decode_state, decode_type};
use crate::{errno, XenCtrl, XenForeignMemory, XenSharingEvents};

/// Domains fetched per `xc_domain_getinfolist` call.
const GETINFO_BATCH: usize = 64;

/// The control domain's view of Xen: a libxenctrl handle, plus a
/// foreign-memory handle for probing guests' populated gfns.
#[derive(Debug)]
pub struct XenHypervisor {
    ctrl: XenCtrl,
    fmem: XenForeignMemory,
}

impl XenHypervisor {
    /// Check that this is a dom0, then open libxenctrl and
    /// libxenforeignmemory. A failure to open libxenctrl is reported as
    /// [`OpenError::NotDom0`] too: it means no privcmd or no root.
    pub fn open() -> Result<Self, OpenError> {
        check_dom0()?;
        let ctrl = XenCtrl::open().map_err(|e| {
            let reason = e
                .errno()
                .map_or_else(|| e.to_string(), |errno| format!("{e}: {errno}"));
            OpenError::NotDom0(reason)
        })?;
        let fmem = XenForeignMemory::open()?;
        Ok(Self { ctrl, fmem })
    }

    pub fn ctrl(&self) -> &XenCtrl {
        &self.ctrl
    }

    pub fn foreign_memory(&self) -> &XenForeignMemory {
        &self.fmem
    }

    fn xc_version<T>(&self, cmd: u32, arg: *mut T) -> Result<i32, HvError> {
        // SAFETY: `arg` is null or points to the buffer type `cmd` writes
        // (xen_extraversion_t / xen_capabilities_info_t), owned by the caller.
        let rc = unsafe { sys::xc_version(self.ctrl.raw(), cmd as i32, arg.cast::<c_void>()) };
        if rc < 0 {
            return Err(errno::error(format!("xc_version({cmd}) failed")));
        }
        Ok(rc)
    }

    fn getinfolist(&self, first: u32, buf: &mut [sys::xc_domaininfo_t]) -> Result<usize, HvError> {
        // SAFETY: `buf` is writable for `buf.len()` entries.
        let n = unsafe {
            sys::xc_domain_getinfolist(self.ctrl.raw(), first, buf.len() as u32, buf.as_mut_ptr())
        };
        if n < 0 {
            return Err(errno::error(format!("failed to list domains from {first}")));
        }
        // Never trust a count above what we asked for.
        Ok((n as usize).min(buf.len()))
    }

    fn check(rc: i32, what: impl FnOnce() -> String) -> Result<(), HvError> {
        if rc < 0 {
            // Built lazily, but errno is read first: `what` may allocate.
            let errno = errno::last();
            return Err(HvError::os(what(), errno));
        }
        Ok(())
    }
}

fn domain_info(raw: &sys::xc_domaininfo_t) -> DomainInfo {
    DomainInfo {
        domid: DomId(raw.domain),
        domain_type: decode_type(raw.flags, raw.arch_config.emulation_flags),
        state: decode_state(raw.flags),
        tot_pages: raw.tot_pages,
        max_pages: raw.max_pages,
        shr_pages: raw.shr_pages,
        online_vcpus: raw.nr_online_vcpus,
    }
}

/// A fixed-size C string buffer filled by Xen, possibly without a NUL.
fn c_buf_to_string(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn zeroed_domaininfo() -> sys::xc_domaininfo_t {
    // SAFETY: a plain C struct of integers; all-zero is a valid value.
    unsafe { mem::zeroed() }
}

impl Hypervisor for XenHypervisor {
    fn version(&self) -> Result<XenVersion, HvError> {
        let packed = self.xc_version(sys::XENVER_version, std::ptr::null_mut::<c_void>())?;
        let mut extra: sys::xen_extraversion_t = [0; 16];
        self.xc_version(sys::XENVER_extraversion, &mut extra)?;
        let mut caps: sys::xen_capabilities_info_t = [0; 1024];
        self.xc_version(sys::XENVER_capabilities, &mut caps)?;
        Ok(XenVersion {
            major: (packed >> 16) as u16,
            minor: (packed & 0xffff) as u16,
            extra: c_buf_to_string(&extra),
            capabilities: c_buf_to_string(&caps),
        })
    }

    fn physinfo(&self) -> Result<PhysInfo, HvError> {
        // SAFETY: plain C struct of integers; all-zero is valid.
        let mut info: sys::xc_physinfo_t = unsafe { mem::zeroed() };
        // SAFETY: `info` is a valid, writable xc_physinfo_t.
        let rc = unsafe { sys::xc_physinfo(self.ctrl.raw(), &mut info) };
        Self::check(rc, || "xc_physinfo failed".into())?;
        let cap = |bit: u32| info.capabilities & bit != 0;
        Ok(PhysInfo {
            total_pages: info.total_pages,
            free_pages: info.free_pages,
            nr_cpus: info.nr_cpus,
            virt_caps: VirtCaps {
                pv: cap(sys::XEN_SYSCTL_PHYSCAP_pv),
                hvm: cap(sys::XEN_SYSCTL_PHYSCAP_hvm),
                hap: cap(sys::XEN_SYSCTL_PHYSCAP_hap),
                shadow: cap(sys::XEN_SYSCTL_PHYSCAP_shadow),
            },
        })
    }

    fn domains(&self) -> Result<Vec<DomainInfo>, HvError> {
        let mut buf = vec![zeroed_domaininfo(); GETINFO_BATCH];
        let mut domains = Vec::new();
        let mut first = 0u32;
        loop {
            let n = self.getinfolist(first, &mut buf)?;
            domains.extend(buf[..n].iter().map(domain_info));
            match buf[..n].last() {
                Some(last) if n == buf.len() => first = u32::from(last.domain) + 1,
                _ => break,
            }
        }
        Ok(domains)
    }

    fn domain(&self, dom: DomId) -> Result<DomainInfo, HvError> {
        let mut buf = [zeroed_domaininfo()];
        let n = self.getinfolist(u32::from(dom.0), &mut buf)?;
        // getinfolist returns the next domain at or after `dom`.
        match buf[..n].first() {
            Some(raw) if raw.domain == dom.0 => Ok(domain_info(raw)),
            _ => Err(HvError::with_kind(
                format!("no domain {dom}"),
                ErrorKind::NotFound,
                None,
            )),
        }
    }

    fn pause(&self, dom: DomId) -> Result<(), HvError> {
        // SAFETY: plain call on a valid handle.
        let rc = unsafe { sys::xc_domain_pause(self.ctrl.raw(), u32::from(dom.0)) };
        Self::check(rc, || format!("failed to pause domain {dom}"))
    }

    fn unpause(&self, dom: DomId) -> Result<(), HvError> {
        // SAFETY: plain call on a valid handle.
        let rc = unsafe { sys::xc_domain_unpause(self.ctrl.raw(), u32::from(dom.0)) };
        Self::check(rc, || format!("failed to unpause domain {dom}"))
    }

    fn maximum_gpfn(&self, dom: DomId) -> Result<Gfn, HvError> {
        let mut gpfn: sys::xen_pfn_t = 0;
        // SAFETY: `gpfn` is a valid out-parameter.
        let rc =
            unsafe { sys::xc_domain_maximum_gpfn(self.ctrl.raw(), u32::from(dom.0), &mut gpfn) };
        Self::check(rc, || {
            format!("failed to get the maximum gpfn of domain {dom}")
        })?;
        Ok(Gfn(gpfn))
    }

    fn set_sharing(&self, dom: DomId, enable: bool) -> Result<(), HvError> {
        // SAFETY: plain call on a valid handle.
        let rc =
            unsafe { sys::xc_memshr_control(self.ctrl.raw(), u32::from(dom.0), i32::from(enable)) };
        Self::check(rc, || {
            format!("failed to set memory sharing of domain {dom} to {enable}")
        })
    }

    fn nominate_gfn(&self, dom: DomId, gfn: Gfn) -> Result<SharingHandle, HvError> {
        let mut handle = 0u64;
        // SAFETY: `handle` is a valid out-parameter.
        let rc = unsafe {
            sys::xc_memshr_nominate_gfn(self.ctrl.raw(), u32::from(dom.0), gfn.0, &mut handle)
        };
        Self::check(rc, || {
            format!("failed to nominate gfn {gfn} of domain {dom}")
        })?;
        Ok(SharingHandle(handle))
    }

    fn nominate_gref(&self, dom: DomId, gref: GrantRef) -> Result<SharingHandle, HvError> {
        let mut handle = 0u64;
        // SAFETY: `handle` is a valid out-parameter.
        let rc = unsafe {
            sys::xc_memshr_nominate_gref(self.ctrl.raw(), u32::from(dom.0), gref.0, &mut handle)
        };
        Self::check(rc, || {
            format!("failed to nominate grant {gref} of domain {dom}")
        })?;
        Ok(SharingHandle(handle))
    }

    fn share(&self, source: SharePage, client: SharePage) -> Result<(), HvError> {
        // SAFETY: plain call on a valid handle.
        let rc = unsafe {
            sys::xc_memshr_share_gfns(
                self.ctrl.raw(),
                u32::from(source.dom.0),
                source.gfn.0,
                source.handle.0,
                u32::from(client.dom.0),
                client.gfn.0,
                client.handle.0,
            )
        };
        if rc >= 0 {
            return Ok(());
        }
        let errno = errno::last();
        let what = format!(
            "failed to share gfn {} of domain {} into gfn {} of domain {}",
            source.gfn, source.dom, client.gfn, client.dom
        );
        // XENMEM_SHARING_OP_{S,C}_HANDLE_INVALID come back as errno.
        Err(match ShareSide::from_share_errno(errno) {
            Some(side) => HvError::with_kind(what, ErrorKind::StaleHandle(side), Some(errno)),
            None => HvError::os(what, errno),
        })
    }

    fn sharing_freed_pages(&self) -> Result<u64, HvError> {
        // SAFETY: plain call on a valid handle.
        let n = unsafe { sys::xc_sharing_freed_pages(self.ctrl.raw()) };
        u64::try_from(n).map_err(|_| errno::error("failed to read the pages freed by sharing"))
    }

    fn sharing_used_frames(&self) -> Result<u64, HvError> {
        // SAFETY: plain call on a valid handle.
        let n = unsafe { sys::xc_sharing_used_frames(self.ctrl.raw()) };
        u64::try_from(n).map_err(|_| errno::error("failed to read the frames used by sharing"))
    }

    /// `xc_memshr_debug_gfn` (Xen 4.17 `debug_gfn`): the frame's type
    /// count less the lock's reference, i.e. the gfns it backs, for a frame
    /// in the sharing hash; `EINVAL` for any other page.
    fn sharing_refs(&self, dom: DomId, gfn: Gfn) -> Result<Option<u32>, HvError> {
        // SAFETY: plain call on a valid handle (c_ulong is u64 on x86-64).
        let rc = unsafe { sys::xc_memshr_debug_gfn(self.ctrl.raw(), u32::from(dom.0), gfn.0) };
        if rc >= 0 {
            return Ok(Some(rc.unsigned_abs()));
        }
        let errno = errno::last();
        if errno.0 == libc::EINVAL {
            return Ok(None);
        }
        Err(HvError::os(
            format!("failed to read the sharing state of gfn {gfn} of domain {dom}"),
            errno,
        ))
    }

    /// Rings are enabled per domain by `attach`; each opens its own
    /// libxenctrl and libxenevtchn handles.
    fn sharing_events(&self) -> Result<Box<dyn SharingEvents>, HvError> {
        Ok(Box::new(XenSharingEvents::new(self.fmem.clone())))
    }

    /// PV: `xc_vcpu_getcontext`, read as a 64-bit guest (32-bit PV guests
    /// are not supported). HVM/PVH: the `CPU` record of the HVM save
    /// context, instance = vCPU id.
    fn tsys_authorise(&self, dom: DomId, token: &TsysToken) -> Result<(), HvError> {
        crate::tsys::authorise(&self.ctrl, dom, token)
    }

    fn tsys_authorise_keyed(
        &self,
        dom: DomId,
        token: &TsysToken,
        key: &TsysKey,
    ) -> Result<(), HvError> {
        crate::tsys::authorise_keyed(&self.ctrl, dom, token, key)
    }

    fn tsys_revoke(&self, dom: DomId) -> Result<(), HvError> {
        crate::tsys::revoke(&self.ctrl, dom)
    }

    fn tsys_status(&self, dom: DomId) -> Result<TsysStatus, HvError> {
        crate::tsys::status(&self.ctrl, dom)
    }

    fn vcpu_registers(&self, dom: DomId, vcpu: u32) -> Result<VcpuRegs, HvError> {
        let info = self.domain(dom)?;
        let what = || format!("failed to read vcpu {vcpu} of domain {dom}");
        if info.domain_type.is_translated() {
            let instance = u16::try_from(vcpu)
                .map_err(|_| HvError::with_kind(what(), ErrorKind::InvalidInput, None))?;
            // SAFETY: plain C struct of integers; all-zero is valid.
            let mut cpu: sys::hvm_hw_cpu = unsafe { mem::zeroed() };
            // SAFETY: `cpu` is writable for the size we pass, which is the
            // size of the CPU record (HVM_SAVE_LENGTH(CPU)).
            let rc = unsafe {
                sys::xc_domain_hvm_getcontext_partial(
                    self.ctrl.raw(),
                    u32::from(dom.0),
                    sys::CIRC_HVM_SAVE_CODE_CPU as u16,
                    instance,
                    (&mut cpu as *mut sys::hvm_hw_cpu).cast::<c_void>(),
                    mem::size_of::<sys::hvm_hw_cpu>() as u32,
                )
            };
            Self::check(rc, what)?;
            Ok(VcpuRegs {
                rip: cpu.rip,
                rsp: cpu.rsp,
                rflags: cpu.rflags,
                cr0: cpu.cr0,
                cr3: cpu.cr3,
                cr4: cpu.cr4,
            })
        } else {
            // SAFETY: plain C union of integer structs; all-zero is valid.
            let mut ctx: sys::vcpu_guest_context_any_t = unsafe { mem::zeroed() };
            // SAFETY: `ctx` is a valid, writable vcpu_guest_context_any_t.
            let rc = unsafe {
                sys::xc_vcpu_getcontext(self.ctrl.raw(), u32::from(dom.0), vcpu, &mut ctx)
            };
            Self::check(rc, what)?;
            // SAFETY: every variant is plain integers, so reading the x64 view
            // is defined; it is the right view for a 64-bit PV guest.
            let x64 = unsafe { ctx.x64 };
            let regs = &x64.user_regs;
            // SAFETY: these unions hold u64 in every variant on x86_64.
            let (rip, rsp, rflags) = unsafe {
                (
                    regs.__bindgen_anon_16.rip,
                    regs.__bindgen_anon_18.rsp,
                    regs.__bindgen_anon_17.rflags,
                )
            };
            Ok(VcpuRegs {
                rip,
                rsp,
                rflags,
                cr0: x64.ctrlreg[0],
                cr3: x64.ctrlreg[3],
                cr4: x64.ctrlreg[4],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_buffers_without_nul_are_bounded() {
        let buf: [c_char; 4] = [b'.' as c_char, b'5' as c_char, 0, b'x' as c_char];
        assert_eq!(c_buf_to_string(&buf), ".5");
        let full: [c_char; 2] = [b'a' as c_char, b'b' as c_char];
        assert_eq!(c_buf_to_string(&full), "ab");
    }

    #[test]
    fn hvm_cpu_save_code_is_two() {
        // HVM_SAVE_CODE(CPU) in xen/include/public/arch-x86/hvm/save.h.
        assert_eq!(sys::CIRC_HVM_SAVE_CODE_CPU, 2);
    }
}
