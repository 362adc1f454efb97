//! [`FakeRingMemory`]: shared memory for a ring over a `Vec`; fake foreign
//! mappings as ring memory.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use super::FakeForeignMapping;
use crate::ring::{RingGeometry, RingMemory, HEADER_SIZE};
use crate::{ErrorKind, ForeignMapping, PAGE_SIZE};

/// Bytes both ends of a ring see: clones share them, as a front end's
/// pages and a back end's mapping of them do. Out-of-range access panics.
///
/// [`confine_to`](Self::confine_to) makes it also panic on any access a
/// correct ring never makes (anything but the four indices, the header
/// padding and whole slots), for tests and fuzzing that check that a
/// hostile peer cannot steer the ring code elsewhere.
#[derive(Debug, Clone)]
pub struct FakeRingMemory {
    bytes: Arc<Mutex<Vec<u8>>>,
    confined: Option<RingGeometry>,
}

impl FakeRingMemory {
    /// `size` zero bytes.
    pub fn new(size: usize) -> Self {
        Self::from_bytes(vec![0; size])
    }

    /// `pages` zeroed pages.
    pub fn pages(pages: usize) -> Self {
        Self::new(pages * PAGE_SIZE)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            bytes: Arc::new(Mutex::new(bytes)),
            confined: None,
        }
    }

    /// Panic on accesses outside the header and `geometry`'s slots, and on
    /// slot accesses that do not start at a slot or leave it.
    pub fn confine_to(mut self, geometry: RingGeometry) -> Self {
        self.confined = Some(geometry);
        self
    }

    /// A copy of the bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Overwrite bytes at `offset`, as a peer scribbling on the ring would.
    pub fn poke(&self, offset: usize, data: &[u8]) {
        self.lock()[offset..offset + data.len()].copy_from_slice(data);
    }

    /// Set the `u32` at `offset` (e.g. an index) behind the ring's back.
    pub fn poke_u32(&self, offset: usize, value: u32) {
        self.poke(offset, &value.to_ne_bytes());
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_index(&self, offset: usize) {
        if self.confined.is_some() {
            assert!(
                offset % 4 == 0 && offset < 16,
                "ring index access at {offset}"
            );
        }
    }

    fn check_bytes(&self, offset: usize, len: usize) {
        let Some(g) = self.confined else { return };
        if offset == 16 && len == HEADER_SIZE - 16 {
            return; // SHARED_RING_INIT's padding
        }
        let slot = offset
            .checked_sub(HEADER_SIZE)
            .filter(|o| o % g.slot_size() == 0)
            .map(|o| o / g.slot_size());
        assert!(
            slot.is_some_and(|s| s < g.slots() as usize) && len <= g.slot_size(),
            "ring slot access of {len} bytes at {offset} outside {g:?}"
        );
    }
}

impl RingMemory for FakeRingMemory {
    fn size(&self) -> usize {
        self.lock().len()
    }

    fn load_u32(&self, offset: usize, _order: Ordering) -> u32 {
        self.check_index(offset);
        assert!(offset % 4 == 0, "unaligned u32 at {offset}");
        let bytes = self.lock();
        let mut word = [0; 4];
        word.copy_from_slice(&bytes[offset..offset + 4]);
        u32::from_ne_bytes(word)
    }

    fn store_u32(&self, offset: usize, value: u32, _order: Ordering) {
        self.check_index(offset);
        assert!(offset % 4 == 0, "unaligned u32 at {offset}");
        self.lock()[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn read(&self, offset: usize, buf: &mut [u8]) {
        self.check_bytes(offset, buf.len());
        buf.copy_from_slice(&self.lock()[offset..offset + buf.len()]);
    }

    fn write(&self, offset: usize, data: &[u8]) {
        self.check_bytes(offset, data.len());
        self.lock()[offset..offset + data.len()].copy_from_slice(data);
    }
}

/// A foreign mapping as ring memory: how tests play a guest's front end
/// on its own pages. Accesses may span pages. A page that went away (its
/// domain was destroyed) reads as zeros and ignores writes.
///
/// # Panics
/// On a write through a read-only mapping, or outside the mapping.
impl RingMemory for FakeForeignMapping {
    fn size(&self) -> usize {
        self.len() * PAGE_SIZE
    }

    fn load_u32(&self, offset: usize, _order: Ordering) -> u32 {
        assert!(offset % 4 == 0, "unaligned u32 at {offset}");
        let mut word = [0; 4];
        RingMemory::read(self, offset, &mut word);
        u32::from_ne_bytes(word)
    }

    fn store_u32(&self, offset: usize, value: u32, _order: Ordering) {
        assert!(offset % 4 == 0, "unaligned u32 at {offset}");
        RingMemory::write(self, offset, &value.to_ne_bytes());
    }

    fn read(&self, offset: usize, buf: &mut [u8]) {
        for (page, at, range) in page_pieces(self.size(), offset, buf.len()) {
            let piece = &mut buf[range];
            if ForeignMapping::read(self, page, at, piece).is_err() {
                piece.fill(0);
            }
        }
    }

    fn write(&self, offset: usize, data: &[u8]) {
        for (page, at, range) in page_pieces(self.size(), offset, data.len()) {
            if let Err(e) = ForeignMapping::write(self, page, at, &data[range]) {
                assert!(
                    e.kind() != ErrorKind::PermissionDenied,
                    "write through a read-only mapping"
                );
            }
        }
    }
}

/// `[offset, offset + len)` of a `size`-byte mapping cut at page
/// boundaries: (page index, offset in the page, range of the buffer).
fn page_pieces(
    size: usize,
    offset: usize,
    len: usize,
) -> impl Iterator<Item = (usize, usize, Range<usize>)> {
    let end = offset.checked_add(len).filter(|end| *end <= size);
    assert!(
        end.is_some(),
        "access of {len} bytes at {offset} leaves {size} bytes"
    );
    let mut done = 0;
    std::iter::from_fn(move || {
        (done < len).then(|| {
            let at = offset + done;
            let n = (PAGE_SIZE - at % PAGE_SIZE).min(len - done);
            let piece = (at / PAGE_SIZE, at % PAGE_SIZE, done..done + n);
            done += n;
            piece
        })
    })
}
