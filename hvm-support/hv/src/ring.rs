//! Xen's shared I/O rings (`xen/include/public/io/ring.h`), bounds-checked.
//!
//! A shared ring is a 64-byte header (`req_prod`, `req_event`, `rsp_prod`,
//! `rsp_event`, padding) followed by a power-of-two number of slots, each
//! holding a request or a response (the C `union NAME_sring_entry`). The
//! front end produces requests and consumes responses; the back end consumes
//! requests and produces responses into the slots of requests it consumed.
//! Each side keeps its private indices ([`FrontRing`], [`BackRing`]) and
//! publishes its producer index with release ordering; the `*_event`
//! indices say when the other side wants a notification.
//!
//! The peer is not trusted. Its producer index is checked against the ring
//! size before any slot is read (an index that jumps, runs backwards or is
//! garbage is a [`RingError`], never an out-of-ring access), every slot
//! offset is masked into the ring, and each entry is copied out once and
//! decoded from the copy, so the peer cannot change it under the parser
//! (`RING_COPY_REQUEST`). The ring never reads the peer's idea of our own
//! indices back.
//!
//! The code is generic over [`RingMemory`] (atomic `u32` access to the
//! indices, byte copies of slots), as rust-vmm's rings are over guest
//! memory: `circ-xen` implements it over mapped pages, `fake` over a `Vec`.
//! Entries are typed through [`RingEntry`]; a protocol names its request and
//! response types with [`RingTypes`], like C's `DEFINE_RING_TYPES`.

use std::marker::PhantomData;
use std::sync::atomic::{fence, Ordering};

use crate::PAGE_SIZE;

/// `offsetof(struct NAME_sring, ring)`: four indices, 4 bytes `pvt`, 44 of
/// padding. The slots start here.
pub const HEADER_SIZE: usize = 64;

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;
const INDICES_END: usize = 16;

/// Shared memory a ring lives in: a mapping of one or more pages.
///
/// Offsets are bytes from the start of the mapping. The ring only asks for
/// 4-aligned `u32`s inside the header and for whole slots inside the ring,
/// so implementations may panic on anything else, like slice indexing
/// does; they must never touch memory outside `0..size()`.
pub trait RingMemory {
    /// Bytes of shared memory (`pages * PAGE_SIZE` for a mapping).
    fn size(&self) -> usize;

    /// Atomic load of the aligned `u32` at `offset`.
    fn load_u32(&self, offset: usize, order: Ordering) -> u32;

    /// Atomic store of the aligned `u32` at `offset`.
    fn store_u32(&self, offset: usize, value: u32, order: Ordering);

    /// Copy `buf.len()` bytes from `offset`. The peer may write them at the
    /// same time: implementations copy (volatile), never lend a reference.
    fn read(&self, offset: usize, buf: &mut [u8]);

    /// Copy `data` to `offset`.
    fn write(&self, offset: usize, data: &[u8]);
}

impl<M: RingMemory + ?Sized> RingMemory for &M {
    fn size(&self) -> usize {
        (**self).size()
    }
    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        (**self).load_u32(offset, order)
    }
    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        (**self).store_u32(offset, value, order)
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        (**self).read(offset, buf)
    }
    fn write(&self, offset: usize, data: &[u8]) {
        (**self).write(offset, data)
    }
}

/// A request or response as laid out in a slot.
///
/// Decoding cannot fail: an entry is plain integers, and whether their
/// values make sense is the protocol's business, checked on the decoded
/// copy.
pub trait RingEntry: Sized {
    /// `sizeof` the C struct.
    const SIZE: usize;

    /// Decode from exactly [`SIZE`](Self::SIZE) bytes.
    fn from_bytes(bytes: &[u8]) -> Self;

    /// Encode into exactly [`SIZE`](Self::SIZE) bytes (already zeroed).
    fn to_bytes(&self, out: &mut [u8]);
}

/// A ring protocol: what `DEFINE_RING_TYPES(name, req_t, rsp_t)` declares.
pub trait RingTypes {
    type Request: RingEntry;
    type Response: RingEntry;

    /// `sizeof(union NAME_sring_entry)`: the larger entry, unless the C
    /// union pads further (a smaller member with a larger alignment).
    const SLOT_SIZE: usize = if Self::Request::SIZE > Self::Response::SIZE {
        Self::Request::SIZE
    } else {
        Self::Response::SIZE
    };
}

/// Where the slots are: `__RING_SIZE` of a shared area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingGeometry {
    slots: u32,
    slot_size: usize,
}

impl RingGeometry {
    /// The slots of `slot_size` bytes that fit after the header in `bytes`
    /// of shared memory, rounded down to a power of two (`__RD32`).
    pub fn new(bytes: usize, slot_size: usize) -> Result<Self, RingError> {
        let too_small = RingError::TooSmall { bytes, slot_size };
        if slot_size == 0 {
            return Err(too_small);
        }
        let fit = bytes.saturating_sub(HEADER_SIZE) / slot_size;
        // RING_IDX is 32 bits: more slots than 2^31 cannot be indexed.
        let fit = u32::try_from(fit).unwrap_or(u32::MAX).min(1 << 31);
        if fit == 0 {
            return Err(too_small);
        }
        Ok(Self {
            slots: 1 << (31 - fit.leading_zeros()),
            slot_size,
        })
    }

    /// A ring on `pages` pages (`XEN_FLEX_RING_SIZE`-style multi-page rings,
    /// e.g. blkif's `ring-page-order`).
    pub fn for_pages(pages: usize, slot_size: usize) -> Result<Self, RingError> {
        Self::new(pages.saturating_mul(PAGE_SIZE), slot_size)
    }

    /// `RING_SIZE`: number of slots, a power of two.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Byte offset of the slot of free-running index `idx`: masked, so
    /// always inside the ring whatever the index.
    pub fn slot_offset(&self, idx: u32) -> usize {
        HEADER_SIZE + (idx & (self.slots - 1)) as usize * self.slot_size
    }

    /// Bytes the header and slots take (the rest of the area is unused).
    pub fn end(&self) -> usize {
        HEADER_SIZE + self.slots as usize * self.slot_size
    }
}

/// A ring that cannot be used, or a peer that broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("{bytes} bytes of shared memory hold no ring slot of {slot_size} bytes")]
    TooSmall { bytes: usize, slot_size: usize },
    /// The peer's `req_prod` is more than a ring ahead of our `req_cons`:
    /// it jumped, ran backwards or is garbage.
    #[error("request producer {prod} is not within {slots} slots after the consumer {cons}")]
    RequestOverflow { prod: u32, cons: u32, slots: u32 },
    /// The peer's `rsp_prod` claims responses to requests never made.
    #[error("response producer {prod} is past the {outstanding} requests outstanding after the consumer {cons}")]
    ResponseOverflow {
        prod: u32,
        cons: u32,
        outstanding: u32,
    },
    /// A response was pushed with no consumed request left to answer: it
    /// would overwrite a request not read yet.
    #[error("no consumed request is waiting for a response")]
    NoRequestToAnswer,
    /// Every slot holds a request or response not consumed yet.
    #[error("the ring is full")]
    Full,
}

/// The shared area with its geometry; both ends hold one.
#[derive(Debug)]
struct Shared<M> {
    mem: M,
    geometry: RingGeometry,
}

impl<M: RingMemory> Shared<M> {
    /// A ring of `T`'s slots over `mem`. The slot is never smaller than
    /// either entry, whatever `T::SLOT_SIZE` says.
    fn new<T: RingTypes>(mem: M) -> Result<Self, RingError> {
        let slot_size = T::SLOT_SIZE.max(T::Request::SIZE).max(T::Response::SIZE);
        let geometry = RingGeometry::new(mem.size(), slot_size)?;
        Ok(Self { mem, geometry })
    }

    fn load(&self, index: usize, order: Ordering) -> u32 {
        self.mem.load_u32(index, order)
    }

    fn store(&self, index: usize, value: u32, order: Ordering) {
        self.mem.store_u32(index, value, order)
    }

    /// `SHARED_RING_INIT`: indices 0, event thresholds 1, padding zeroed.
    fn init(&self) {
        self.mem.write(INDICES_END, &[0; HEADER_SIZE - INDICES_END]);
        self.store(REQ_PROD, 0, Ordering::Relaxed);
        self.store(RSP_PROD, 0, Ordering::Relaxed);
        self.store(REQ_EVENT, 1, Ordering::Relaxed);
        self.store(RSP_EVENT, 1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Copy the entry in slot `idx` once and decode the copy.
    fn read_entry<E: RingEntry>(&self, idx: u32) -> E {
        let mut buf = vec![0u8; E::SIZE];
        self.mem.read(self.geometry.slot_offset(idx), &mut buf);
        E::from_bytes(&buf)
    }

    fn write_entry<E: RingEntry>(&self, idx: u32, entry: &E) {
        let mut buf = vec![0u8; E::SIZE];
        entry.to_bytes(&mut buf);
        self.mem.write(self.geometry.slot_offset(idx), &buf);
    }

    /// `RING_FINAL_CHECK_FOR_*`: whether `unconsumed` finds work; if not,
    /// set the event threshold at `event` to the next index after `cons`
    /// and look once more (a full barrier between), so an entry published
    /// meanwhile is not missed.
    fn final_check(
        &self,
        event: usize,
        cons: u32,
        unconsumed: impl Fn() -> Result<u32, RingError>,
    ) -> Result<bool, RingError> {
        if unconsumed()? > 0 {
            return Ok(true);
        }
        self.store(event, cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Ok(unconsumed()? > 0)
    }

    /// Publish `new` as our producer index at `prod` (after the entries it
    /// covers), then read the peer's event threshold at `event`: whether
    /// the peer asked to be notified of an index in `(old, new]`
    /// (`RING_PUSH_*_AND_CHECK_NOTIFY`).
    fn publish_and_check(&self, prod: usize, event: usize, old: u32, new: u32) -> bool {
        self.store(prod, new, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = self.load(event, Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }
}

/// The back end of a ring: consumes requests, produces responses
/// (`NAME_back_ring`).
#[derive(Debug)]
pub struct BackRing<M, T> {
    shared: Shared<M>,
    req_cons: u32,
    rsp_prod_pvt: u32,
    /// `rsp_prod` as we last published it.
    rsp_prod: u32,
    types: PhantomData<fn() -> T>,
}

impl<M: RingMemory, T: RingTypes> BackRing<M, T> {
    /// `BACK_RING_INIT` over a ring the front end initialised.
    pub fn new(mem: M) -> Result<Self, RingError> {
        Self::attach(mem, 0)
    }

    /// `BACK_RING_ATTACH`: take over a ring in use, with both private
    /// indices at `start` (the `rsp_prod` a previous back end published).
    pub fn attach(mem: M, start: u32) -> Result<Self, RingError> {
        Ok(Self {
            shared: Shared::new::<T>(mem)?,
            req_cons: start,
            rsp_prod_pvt: start,
            rsp_prod: start,
            types: PhantomData,
        })
    }

    /// `SHARED_RING_INIT` then `BACK_RING_INIT`: for rings the back end
    /// sets up, such as Xen's vm_event rings (Xen is their front end).
    pub fn init_shared(mem: M) -> Result<Self, RingError> {
        let ring = Self::new(mem)?;
        ring.shared.init();
        Ok(ring)
    }

    pub fn geometry(&self) -> RingGeometry {
        self.shared.geometry
    }

    pub fn memory(&self) -> &M {
        &self.shared.mem
    }

    /// `req_cons`: the next request to consume.
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// `rsp_prod_pvt`: where the next response goes.
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// `RING_HAS_UNCONSUMED_REQUESTS`: requests we may consume now. Never
    /// more than the slots not holding a response we still owe (the
    /// responses go into the slots of consumed requests).
    pub fn unconsumed_requests(&self) -> Result<u32, RingError> {
        // Acquire pairs with the producer's write barrier before req_prod.
        let prod = self.shared.load(REQ_PROD, Ordering::Acquire);
        let slots = self.shared.geometry.slots;
        let req = prod.wrapping_sub(self.req_cons);
        if req > slots {
            return Err(RingError::RequestOverflow {
                prod,
                cons: self.req_cons,
                slots,
            });
        }
        // We keep req_cons - rsp_prod_pvt <= slots (push_response).
        let rsp_free = slots.saturating_sub(self.req_cons.wrapping_sub(self.rsp_prod_pvt));
        Ok(req.min(rsp_free))
    }

    /// The next request (`RING_COPY_REQUEST`, then `req_cons++`), or `None`
    /// if there is none to consume now.
    pub fn next_request(&mut self) -> Result<Option<T::Request>, RingError> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let req = self.shared.read_entry(self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: whether there is more work; if not,
    /// ask the front end to notify us of the next request (and look once
    /// more, so a request published meanwhile is not missed).
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        self.shared
            .final_check(REQ_EVENT, self.req_cons, || self.unconsumed_requests())
    }

    /// Put a response in the next slot, not yet visible to the front end
    /// (`RING_GET_RESPONSE` at `rsp_prod_pvt++`).
    pub fn push_response(&mut self, rsp: &T::Response) -> Result<(), RingError> {
        if self.rsp_prod_pvt == self.req_cons {
            return Err(RingError::NoRequestToAnswer);
        }
        self.shared.write_entry(self.rsp_prod_pvt, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Put and publish responses that answer no request, on a ring where
    /// none is owed (`req_cons == rsp_prod_pvt`), at most a ring's worth,
    /// and only once the front end consumed the previous ones.
    ///
    /// This breaks the ring for good (the front end then counts more free
    /// slots than there are, and our `req_cons` runs ahead of its
    /// `req_prod`): it is for a ring set up only to be torn down, e.g. Xen's
    /// vm_event rings, where a response unpauses a vCPU whatever ring paused
    /// it (circ-xen's stale-ring take-over).
    pub fn push_unsolicited_responses(&mut self, rsps: &[T::Response]) -> Result<(), RingError> {
        if self.rsp_prod_pvt != self.req_cons {
            return Err(RingError::NoRequestToAnswer);
        }
        if rsps.len() > self.shared.geometry.slots as usize {
            return Err(RingError::Full);
        }
        for rsp in rsps {
            self.shared.write_entry(self.rsp_prod_pvt, rsp);
            self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        }
        self.req_cons = self.rsp_prod_pvt;
        self.push_responses();
        Ok(())
    }

    /// `RING_PUSH_RESPONSES`: publish the responses pushed so far.
    pub fn push_responses(&mut self) {
        self.shared
            .store(RSP_PROD, self.rsp_prod_pvt, Ordering::Release);
        self.rsp_prod = self.rsp_prod_pvt;
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publish, and say whether the
    /// front end asked for a notification. A garbage `rsp_event` only
    /// changes the answer.
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let (old, new) = (self.rsp_prod, self.rsp_prod_pvt);
        self.rsp_prod = new;
        self.shared.publish_and_check(RSP_PROD, RSP_EVENT, old, new)
    }
}

/// The front end of a ring: produces requests, consumes responses
/// (`NAME_front_ring`).
#[derive(Debug)]
pub struct FrontRing<M, T> {
    shared: Shared<M>,
    req_prod_pvt: u32,
    rsp_cons: u32,
    /// `req_prod` as we last published it.
    req_prod: u32,
    types: PhantomData<fn() -> T>,
}

impl<M: RingMemory, T: RingTypes> FrontRing<M, T> {
    /// `XEN_FRONT_RING_INIT`: initialise the shared header, indices at 0.
    pub fn init_shared(mem: M) -> Result<Self, RingError> {
        let ring = Self::attach(mem, 0)?;
        ring.shared.init();
        Ok(ring)
    }

    /// `FRONT_RING_ATTACH`: take over a ring in use at index `start`.
    pub fn attach(mem: M, start: u32) -> Result<Self, RingError> {
        Ok(Self {
            shared: Shared::new::<T>(mem)?,
            req_prod_pvt: start,
            rsp_cons: start,
            req_prod: start,
            types: PhantomData,
        })
    }

    pub fn geometry(&self) -> RingGeometry {
        self.shared.geometry
    }

    pub fn memory(&self) -> &M {
        &self.shared.mem
    }

    /// `RING_FREE_REQUESTS`.
    pub fn free_requests(&self) -> u32 {
        let used = self.req_prod_pvt.wrapping_sub(self.rsp_cons);
        self.shared.geometry.slots.saturating_sub(used)
    }

    /// Put a request in the next slot, not yet visible to the back end.
    pub fn push_request(&mut self, req: &T::Request) -> Result<(), RingError> {
        if self.free_requests() == 0 {
            return Err(RingError::Full);
        }
        self.shared.write_entry(self.req_prod_pvt, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_REQUESTS`.
    pub fn push_requests(&mut self) {
        self.shared
            .store(REQ_PROD, self.req_prod_pvt, Ordering::Release);
        self.req_prod = self.req_prod_pvt;
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`.
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let (old, new) = (self.req_prod, self.req_prod_pvt);
        self.req_prod = new;
        self.shared.publish_and_check(REQ_PROD, REQ_EVENT, old, new)
    }

    /// `RING_HAS_UNCONSUMED_RESPONSES`, checked: the back end cannot have
    /// answered more requests than we made.
    pub fn unconsumed_responses(&self) -> Result<u32, RingError> {
        let prod = self.shared.load(RSP_PROD, Ordering::Acquire);
        let outstanding = self.req_prod_pvt.wrapping_sub(self.rsp_cons);
        let rsp = prod.wrapping_sub(self.rsp_cons);
        if rsp > outstanding {
            return Err(RingError::ResponseOverflow {
                prod,
                cons: self.rsp_cons,
                outstanding,
            });
        }
        Ok(rsp)
    }

    /// The next response, or `None` if there is none yet.
    pub fn next_response(&mut self) -> Result<Option<T::Response>, RingError> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let rsp = self.shared.read_entry(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        self.shared
            .final_check(RSP_EVENT, self.rsp_cons, || self.unconsumed_responses())
    }
}

#[cfg(test)]
mod tests;
