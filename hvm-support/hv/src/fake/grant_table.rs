//! [`FakeGrantTable`]: the grants of a [`FakeHypervisor`]'s domains
//! ([`FakeHypervisor::set_grant`]), mapped and copied as dom0 would.
//!
//! As on Xen: a mapping follows the guest's page and keeps it from being
//! nominated for sharing (E2BIG) until it is dropped; a read-only grant
//! cannot be mapped (Linux's gntdev fails the mmap with EINVAL) nor copied
//! to (`GNTST_permission_denied`).

use std::sync::atomic::Ordering;

use super::{os_err, FakeForeignMapping, FakeHypervisor};
use crate::ring::RingMemory;
use crate::{
    DomId, ErrorKind, ForeignMapping, ForeignMemory as _, GrantCopy, GrantCopyError, GrantMapping,
    GrantRef, GrantTable, HvError, Placement, Protection,
};

/// Dom0's grant-table handle on a fake host.
#[derive(Debug, Clone)]
pub struct FakeGrantTable {
    hv: FakeHypervisor,
}

impl FakeHypervisor {
    /// A grant-table handle onto this host, acting as dom0.
    pub fn grant_table(&self) -> FakeGrantTable {
        FakeGrantTable { hv: self.clone() }
    }
}

/// Granted pages mapped contiguously; unmapped on drop.
#[derive(Debug)]
pub struct FakeGrantMapping {
    pages: FakeForeignMapping,
    refs: Vec<GrantRef>,
}

impl GrantTable for FakeGrantTable {
    type Mapping = FakeGrantMapping;

    fn map_ring(&self, dom: DomId, refs: &[GrantRef]) -> Result<FakeGrantMapping, HvError> {
        let what = || format!("failed to map {} grants of domain {dom}", refs.len());
        if refs.is_empty() {
            return Err(HvError::with_kind(what(), ErrorKind::InvalidInput, None));
        }
        let mut gfns = Vec::with_capacity(refs.len());
        for gref in refs {
            let grant = self.hv.grant(dom, *gref)?;
            if grant.readonly {
                return Err(os_err(what(), libc::EINVAL));
            }
            gfns.push(grant.gfn);
        }
        let pages =
            self.hv
                .foreign_memory()
                .map(dom, &gfns, Protection::ReadWrite, Placement::Anywhere)?;
        if (0..pages.len()).any(|i| pages.page_error(i).is_some()) {
            return Err(os_err(what(), libc::EINVAL));
        }
        Ok(FakeGrantMapping {
            pages,
            refs: refs.to_vec(),
        })
    }

    fn copy(&self, ops: &mut [GrantCopy<'_>]) -> Result<Vec<Result<(), GrantCopyError>>, HvError> {
        for op in ops.iter() {
            op.check_in_page()?;
        }
        Ok(ops.iter_mut().map(|op| self.copy_one(op)).collect())
    }
}

impl FakeGrantTable {
    fn copy_one(&self, op: &mut GrantCopy<'_>) -> Result<(), GrantCopyError> {
        let (dom, gref, offset, _) = op.target();
        let grant = self.hv.grant(dom, gref).map_err(|e| match e.kind() {
            ErrorKind::NotFound => GrantCopyError::BAD_DOMAIN,
            _ => GrantCopyError::BAD_GNTREF,
        })?;
        let writes = matches!(op, GrantCopy::ToGrant { .. });
        if writes && grant.readonly {
            return Err(GrantCopyError::PERMISSION_DENIED);
        }
        let prot = if writes {
            Protection::ReadWrite
        } else {
            Protection::Read
        };
        let page = self
            .hv
            .foreign_memory()
            .map(dom, &[grant.gfn], prot, Placement::Anywhere)
            .map_err(|_| GrantCopyError::BAD_GNTREF)?;
        let offset = usize::from(offset);
        match op {
            GrantCopy::FromGrant { buf, .. } => ForeignMapping::read(&page, 0, offset, buf),
            GrantCopy::ToGrant { data, .. } => ForeignMapping::write(&page, 0, offset, data),
        }
        .map_err(|_| GrantCopyError::BAD_GNTREF)
    }
}

impl GrantMapping for FakeGrantMapping {
    fn dom(&self) -> DomId {
        self.pages.dom()
    }

    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
}

impl RingMemory for FakeGrantMapping {
    fn size(&self) -> usize {
        self.pages.size()
    }

    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        self.pages.load_u32(offset, order)
    }

    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        self.pages.store_u32(offset, value, order)
    }

    fn read(&self, offset: usize, buf: &mut [u8]) {
        RingMemory::read(&self.pages, offset, buf)
    }

    fn write(&self, offset: usize, data: &[u8]) {
        RingMemory::write(&self.pages, offset, data)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fake::FakeEventChannels;
    use crate::ring::{BackRing, FrontRing, RingEntry, RingTypes};
    use crate::{DomainType, EventChannel, EvtchnPort, Gfn, Hypervisor, PAGE_SIZE};

    const GUEST: DomId = DomId(3);
    const RING_GFNS: [Gfn; 2] = [Gfn(0x100), Gfn(0x101)];
    const RING_REFS: [GrantRef; 2] = [GrantRef(8), GrantRef(9)];

    fn guest() -> FakeHypervisor {
        let hv = FakeHypervisor::new();
        hv.add_domain(GUEST, DomainType::Pvh, 1024);
        hv.set_sharing(GUEST, true).unwrap();
        for (gfn, gref) in RING_GFNS.iter().zip(RING_REFS) {
            hv.set_page(GUEST, *gfn, b"");
            hv.set_grant(GUEST, gref, *gfn);
        }
        hv
    }

    /// A toy protocol: the back end answers `x` with `x * x`.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Msg {
        id: u64,
        x: u64,
    }

    impl RingEntry for Msg {
        const SIZE: usize = 16;
        fn from_bytes(b: &[u8]) -> Self {
            let word = |at: usize| {
                let mut w = [0; 8];
                w.copy_from_slice(&b[at..at + 8]);
                u64::from_le_bytes(w)
            };
            Self {
                id: word(0),
                x: word(8),
            }
        }
        fn to_bytes(&self, out: &mut [u8]) {
            out[..8].copy_from_slice(&self.id.to_le_bytes());
            out[8..].copy_from_slice(&self.x.to_le_bytes());
        }
    }

    #[derive(Debug)]
    struct Square;

    impl RingTypes for Square {
        type Request = Msg;
        type Response = Msg;
    }

    /// A back end written against the traits only: map the ring by grant,
    /// bind the front end's port, then serve one notification.
    struct Backend<G: GrantTable, E: EventChannel> {
        ring: BackRing<G::Mapping, Square>,
        evtchn: E,
        port: EvtchnPort,
    }

    impl<G: GrantTable, E: EventChannel> Backend<G, E> {
        fn connect(
            gnttab: &G,
            evtchn: E,
            dom: DomId,
            refs: &[GrantRef],
            remote_port: EvtchnPort,
        ) -> Result<Self, HvError> {
            let mapping = gnttab.map_ring(dom, refs)?;
            let ring = BackRing::new(mapping).expect("two pages hold a ring");
            let port = evtchn.bind_interdomain(dom, remote_port)?;
            Ok(Self { ring, evtchn, port })
        }

        /// Returns how many requests were answered.
        fn serve(&mut self) -> Result<usize, HvError> {
            let Some(port) = self.evtchn.pending(Duration::ZERO)? else {
                return Ok(0);
            };
            self.evtchn.unmask(port)?;
            let mut served = 0;
            loop {
                while let Some(req) = self.ring.next_request().expect("an honest front end") {
                    let rsp = Msg {
                        id: req.id,
                        x: req.x.wrapping_mul(req.x),
                    };
                    self.ring.push_response(&rsp).expect("answers a request");
                    served += 1;
                }
                if !self.ring.final_check_for_requests().expect("honest") {
                    break;
                }
            }
            if self.ring.push_responses_and_check_notify() {
                self.evtchn.notify(self.port)?;
            }
            Ok(served)
        }
    }

    #[test]
    fn a_backend_serves_a_granted_ring_end_to_end() {
        let hv = guest();
        let chans = FakeEventChannels::new();
        // The guest: its two ring pages, initialised, and a port for dom0.
        let guest_view = hv
            .foreign_memory()
            .map(
                GUEST,
                &RING_GFNS,
                Protection::ReadWrite,
                Placement::Anywhere,
            )
            .unwrap();
        let mut front = FrontRing::<_, Square>::init_shared(guest_view).unwrap();
        let guest_evtchn = chans.open(GUEST);
        let guest_port = guest_evtchn.bind_unbound_port(DomId::DOM0).unwrap();

        let gnttab = hv.grant_table();
        let mut backend = Backend::connect(
            &gnttab,
            chans.open(DomId::DOM0),
            GUEST,
            &RING_REFS,
            guest_port,
        )
        .unwrap();
        assert_eq!(
            backend.ring.geometry().slots(),
            256,
            "two pages of 16-byte slots"
        );

        let mut answers = Vec::new();
        for round in 0..3u64 {
            for i in 0..200 {
                front
                    .push_request(&Msg {
                        id: round * 1000 + i,
                        x: i,
                    })
                    .unwrap();
            }
            if front.push_requests_and_check_notify() {
                guest_evtchn.notify(guest_port).unwrap();
            }
            assert_eq!(backend.serve().unwrap(), 200);
            assert_eq!(
                guest_evtchn.pending(Duration::ZERO).unwrap(),
                Some(guest_port),
                "the back end notified"
            );
            guest_evtchn.unmask(guest_port).unwrap();
            while let Some(rsp) = front.next_response().unwrap() {
                answers.push(rsp);
            }
            assert!(!front.final_check_for_responses().unwrap());
        }
        assert_eq!(answers.len(), 600);
        assert!(answers.iter().all(|r| r.x == (r.id % 1000) * (r.id % 1000)));

        // The grant mapping pins the page against sharing until dropped.
        drop(front);
        let busy = hv.nominate_gfn(GUEST, RING_GFNS[0]).unwrap_err();
        assert_eq!(busy.kind(), ErrorKind::Busy);
        drop(backend);
        hv.nominate_gfn(GUEST, RING_GFNS[0]).unwrap();
    }

    #[test]
    fn map_ring_refuses_bad_and_readonly_grants() {
        let hv = guest();
        hv.set_grant_readonly(GUEST, GrantRef(20), RING_GFNS[0]);
        hv.set_grant(GUEST, GrantRef(21), Gfn(0x999));
        let gnttab = hv.grant_table();
        for (refs, kind) in [
            (&[][..], ErrorKind::InvalidInput),
            (&[GrantRef(8), GrantRef(77)][..], ErrorKind::InvalidInput),
            (&[GrantRef(20)][..], ErrorKind::InvalidInput),
            (&[GrantRef(21)][..], ErrorKind::InvalidInput),
        ] {
            assert_eq!(
                gnttab.map_ring(GUEST, refs).unwrap_err().kind(),
                kind,
                "{refs:?}"
            );
        }
        assert_eq!(
            gnttab.map_ring(DomId(42), &RING_REFS).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let m = gnttab.map_ring(GUEST, &RING_REFS[1..]).unwrap();
        assert_eq!((m.dom(), m.refs()), (GUEST, &RING_REFS[1..]));
        assert_eq!(m.size(), PAGE_SIZE);
    }

    #[test]
    fn copy_reads_and_writes_granted_pages_with_per_op_status() {
        let hv = guest();
        hv.set_page(GUEST, RING_GFNS[0], b"hello, dom0");
        hv.set_grant_readonly(GUEST, GrantRef(20), RING_GFNS[0]);
        let gnttab = hv.grant_table();
        let mut buf = [0u8; 5];
        let results = gnttab
            .copy(&mut [
                GrantCopy::FromGrant {
                    dom: GUEST,
                    gref: GrantRef(20),
                    offset: 7,
                    buf: &mut buf,
                },
                GrantCopy::ToGrant {
                    dom: GUEST,
                    gref: GrantRef(9),
                    offset: 4094,
                    data: b"ok",
                },
                GrantCopy::ToGrant {
                    dom: GUEST,
                    gref: GrantRef(20),
                    offset: 0,
                    data: b"no",
                },
                GrantCopy::ToGrant {
                    dom: GUEST,
                    gref: GrantRef(77),
                    offset: 0,
                    data: b"no",
                },
                GrantCopy::FromGrant {
                    dom: DomId(42),
                    gref: GrantRef(8),
                    offset: 0,
                    buf: &mut [0; 1],
                },
            ])
            .unwrap();
        assert_eq!(
            results,
            [
                Ok(()),
                Ok(()),
                Err(GrantCopyError::PERMISSION_DENIED),
                Err(GrantCopyError::BAD_GNTREF),
                Err(GrantCopyError::BAD_DOMAIN),
            ]
        );
        assert_eq!(&buf, b"dom0\0");
        assert_eq!(&hv.page(GUEST, RING_GFNS[1]).unwrap()[4094..], b"ok");
        assert_eq!(&hv.page(GUEST, RING_GFNS[0]).unwrap()[..2], b"he");

        let err = gnttab
            .copy(&mut [GrantCopy::ToGrant {
                dom: GUEST,
                gref: GrantRef(9),
                offset: 4095,
                data: b"ok",
            }])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "leaves the page");
    }
}
