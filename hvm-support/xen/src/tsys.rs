//! Circular's trusted-syscall domctl (`XEN_DOMCTL_circ_tsys`,
//! xen-patches/0002), issued through libxenctrl's generic `xc_domctl`.

use circ_hv::{DomId, ErrorKind, HvError, Mfn, TsysKey, TsysProcess, TsysStatus, TsysToken};
use circ_xen_sys as sys;
use zeroize::Zeroize as _;

use crate::{errno, XenCtrl};

/// Processes the patch can hold per domain (`TSYS_MAX_PROCS`); a bound on
/// the `info` loop, so a confused answer cannot spin us.
const MAX_PROCS: u32 = 64;

/// Issues `op` and reads Xen's answer back into it. The bounce copy is
/// wiped: a token or a key travels in it.
fn domctl(
    ctrl: &XenCtrl,
    dom: DomId,
    op: &mut sys::xen_domctl_circ_tsys,
    what: impl FnOnce() -> String,
) -> Result<(), HvError> {
    let mut raw = sys::xen_domctl {
        cmd: sys::XEN_DOMCTL_circ_tsys,
        interface_version: 0, // xc_domctl sets it
        domain: dom.0,
        _pad: [0; 3],
        u: [0; 16],
    };
    // SAFETY: `u` is 128 bytes, 8-byte aligned; the op struct is 96 bytes,
    // 8-byte aligned, plain integers (compile-time checked in circ-xen-sys).
    unsafe {
        raw.u
            .as_mut_ptr()
            .cast::<sys::xen_domctl_circ_tsys>()
            .write(*op)
    };
    // SAFETY: `raw` is a complete, initialised xen_domctl that lives across
    // the call; xc_domctl bounces it to and from the hypervisor.
    let rc = unsafe { sys::xc_domctl(ctrl.raw(), &mut raw) };
    if rc >= 0 {
        // SAFETY: as above; Xen wrote the same struct back.
        *op = unsafe { raw.u.as_ptr().cast::<sys::xen_domctl_circ_tsys>().read() };
    }
    raw.u.zeroize();
    if rc < 0 {
        let err = errno::error(what());
        if err.kind() == ErrorKind::NotSupported {
            return Err(HvError::with_kind(
                format!(
                    "{err}: this Xen has no trusted system calls (xen-patches/0002), \
                     or domain {dom} is not 64-bit PV"
                ),
                ErrorKind::NotSupported,
                err.errno(),
            ));
        }
        return Err(err);
    }
    Ok(())
}

pub(crate) fn authorise(ctrl: &XenCtrl, dom: DomId, token: &TsysToken) -> Result<(), HvError> {
    let mut op = sys::xen_domctl_circ_tsys {
        op: sys::XEN_DOMCTL_TSYS_OP_authorise,
        token: *token.as_bytes(),
        ..Default::default()
    };
    let res = domctl(ctrl, dom, &mut op, || {
        format!("failed to authorise trusted system calls for domain {dom}")
    });
    op.token.zeroize();
    res
}

/// Authorises like [`authorise`], then attaches `key` to the armed
/// registration (xen-patches/0004, `XEN_DOMCTL_TSYS_OP_key`). The token
/// must reach the guest only after this returns.
pub(crate) fn authorise_keyed(
    ctrl: &XenCtrl,
    dom: DomId,
    token: &TsysToken,
    key: &TsysKey,
) -> Result<(), HvError> {
    authorise(ctrl, dom, token)?;
    let mut op = sys::xen_domctl_circ_tsys {
        op: sys::XEN_DOMCTL_TSYS_OP_key,
        token: *key.as_bytes(),
        ..Default::default()
    };
    let res = domctl(ctrl, dom, &mut op, || {
        format!(
            "failed to attach a key to domain {dom}'s trusted registration \
             (this Xen may lack xen-patches/0004)"
        )
    });
    op.token.zeroize();
    if res.is_err() {
        // No registration without its key: replace the armed token by one
        // nobody knows.
        if let Ok(unknown) = TsysToken::random() {
            let _ = authorise(ctrl, dom, &unknown);
        }
    }
    res
}

pub(crate) fn revoke(ctrl: &XenCtrl, dom: DomId) -> Result<(), HvError> {
    let mut op = sys::xen_domctl_circ_tsys {
        op: sys::XEN_DOMCTL_TSYS_OP_revoke,
        ..Default::default()
    };
    domctl(ctrl, dom, &mut op, || {
        format!("failed to revoke trusted system calls of domain {dom}")
    })?;
    Ok(())
}

pub(crate) fn status(ctrl: &XenCtrl, dom: DomId) -> Result<TsysStatus, HvError> {
    let mut status = TsysStatus::default();
    let mut index = 0;
    loop {
        let mut out = sys::xen_domctl_circ_tsys {
            op: sys::XEN_DOMCTL_TSYS_OP_info,
            index,
            ..Default::default()
        };
        domctl(ctrl, dom, &mut out, || {
            format!("failed to read the trusted-syscall state of domain {dom}")
        })?;
        status.authorised = out.flags & sys::XEN_DOMCTL_TSYS_F_authorised != 0;
        status.token_armed = out.flags & sys::XEN_DOMCTL_TSYS_F_token_armed != 0;
        status.key_armed = out.flags & sys::XEN_DOMCTL_TSYS_F_key_armed != 0;
        status.refused = out.refused;
        // Processes come and go between calls: stop at the first index
        // Xen no longer has.
        if out.flags & sys::XEN_DOMCTL_TSYS_F_proc == 0 {
            break;
        }
        status.processes.push(TsysProcess {
            l4_mfn: Mfn(out.l4_mfn),
            calls: out.calls,
            restores: out.restores,
            deferred: out.deferred,
            pending: out.pending,
            bounces: out.bounces,
            dropped: out.dropped,
            cloak_pages: out.cloak_pages,
            cloak_held: out.cloak_held,
            cloak_exposed: out.cloak_exposed,
            keyed: out.flags & sys::XEN_DOMCTL_TSYS_F_keyed != 0,
            sealed_fds: out.sealed_fds,
            sealed_blocks: out.sealed_blocks,
            seal_refused: out.seal_refused,
        });
        index += 1;
        if index >= out.nr_procs.min(MAX_PROCS) {
            break;
        }
    }
    Ok(status)
}
