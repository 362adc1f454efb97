//! Decoding `xen_domctl_getdomaininfo` flags into circ-hv's summary types.

use circ_hv::{DomainState, DomainType};
use circ_xen_sys as sys;

/// Emulated devices a PVH domain may have: domUs get only the LAPIC; a PVH
/// dom0 also gets the IOAPIC and vPCI. Anything else (PIC, PIT, RTC, HPET,
/// ACPI PM, VGA, IOMMU) means a full HVM platform.
const PVH_EMULATION: u32 = sys::XEN_X86_EMU_LAPIC | sys::XEN_X86_EMU_IOAPIC | sys::XEN_X86_EMU_VPCI;

/// PV without `XEN_DOMINF_hvm_guest`; among HVM containers, PVH if no legacy
/// platform device is emulated (`arch_config.emulation_flags`).
pub fn decode_type(flags: u32, emulation_flags: u32) -> DomainType {
    if flags & sys::XEN_DOMINF_hvm_guest == 0 {
        DomainType::Pv
    } else if emulation_flags & !PVH_EMULATION == 0 {
        DomainType::Pvh
    } else {
        DomainType::Hvm
    }
}

/// One state from Xen's flags, which can be set together. Precedence, first
/// match wins:
///
/// 1. `dying`: being destroyed, nothing else matters;
/// 2. `crashed`: shut down with reason `SHUTDOWN_crash`;
/// 3. `shutdown`: any other shutdown reason;
/// 4. `paused`: paused by the toolstack (its vCPUs cannot run);
/// 5. `running`: some vCPU is on a pCPU, even if others are blocked;
/// 6. `blocked`: every vCPU waits for an event;
/// 7. none of the above: runnable and waiting for a pCPU, reported as
///    `running` (`xl list` shows `------`).
pub fn decode_state(flags: u32) -> DomainState {
    let set = |bit: u32| flags & bit != 0;
    let shutdown_reason = (flags >> sys::XEN_DOMINF_shutdownshift) & sys::XEN_DOMINF_shutdownmask;
    if set(sys::XEN_DOMINF_dying) {
        DomainState::Dying
    } else if set(sys::XEN_DOMINF_shutdown) && shutdown_reason == sys::SHUTDOWN_crash {
        DomainState::Crashed
    } else if set(sys::XEN_DOMINF_shutdown) {
        DomainState::Shutdown
    } else if set(sys::XEN_DOMINF_paused) {
        DomainState::Paused
    } else if set(sys::XEN_DOMINF_running) {
        DomainState::Running
    } else if set(sys::XEN_DOMINF_blocked) {
        DomainState::Blocked
    } else {
        DomainState::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sys::*;

    fn shutdown(reason: u32) -> u32 {
        XEN_DOMINF_shutdown | (reason << XEN_DOMINF_shutdownshift)
    }

    #[test]
    fn types() {
        assert_eq!(decode_type(0, 0), DomainType::Pv);
        assert_eq!(
            decode_type(XEN_DOMINF_hvm_guest, XEN_X86_EMU_LAPIC),
            DomainType::Pvh
        );
        let pvh_dom0 = XEN_X86_EMU_LAPIC | XEN_X86_EMU_IOAPIC | XEN_X86_EMU_VPCI;
        assert_eq!(decode_type(XEN_DOMINF_hvm_guest, pvh_dom0), DomainType::Pvh);
        assert_eq!(
            decode_type(XEN_DOMINF_hvm_guest, XEN_X86_EMU_ALL),
            DomainType::Hvm
        );
        let libxl_hvm = XEN_X86_EMU_ALL & !XEN_X86_EMU_VPCI & !XEN_X86_EMU_USE_PIRQ;
        assert_eq!(
            decode_type(XEN_DOMINF_hvm_guest | XEN_DOMINF_hap, libxl_hvm),
            DomainType::Hvm
        );
    }

    #[test]
    fn state_precedence() {
        let cases = [
            (
                XEN_DOMINF_running | XEN_DOMINF_blocked,
                DomainState::Running,
            ),
            (XEN_DOMINF_blocked, DomainState::Blocked),
            (XEN_DOMINF_paused | XEN_DOMINF_blocked, DomainState::Paused),
            (
                shutdown(SHUTDOWN_crash) | XEN_DOMINF_paused,
                DomainState::Crashed,
            ),
            (shutdown(0), DomainState::Shutdown),
            (shutdown(1) | XEN_DOMINF_dying, DomainState::Dying),
            (0, DomainState::Running),
        ];
        for (flags, state) in cases {
            assert_eq!(decode_state(flags), state, "flags {flags:#x}");
        }
    }
}
