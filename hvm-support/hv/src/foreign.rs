//! The [`ForeignMemory`] trait: mapping another domain's pages into ours.

use crate::{DomId, Errno, Gfn, HvError};

/// Access the mapping is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    Read,
    ReadWrite,
}

/// Where in our address space the mapping goes.
///
/// There is no safe "fixed address" choice here: `MAP_FIXED` replaces
/// whatever is mapped there, so `circ-xen` offers it only as an `unsafe fn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Let the kernel choose.
    Anywhere,
    /// Prefer this page-aligned address; the kernel may choose another.
    Hint(usize),
}

/// Maps pages of other domains.
pub trait ForeignMemory {
    type Mapping: ForeignMapping;

    /// Map `gfns` (in this order) into one contiguous range. Frames that
    /// could not be mapped (holes, paged out, not permitted) are reported per
    /// page by [`ForeignMapping::page_error`]; only a failure of the whole
    /// call is an `Err`. An empty `gfns` is `InvalidInput`: there is no
    /// mapping of zero frames.
    fn map(
        &self,
        dom: DomId,
        gfns: &[Gfn],
        prot: Protection,
        placement: Placement,
    ) -> Result<Self::Mapping, HvError>;
}

/// A batch of mapped foreign pages, unmapped on drop.
///
/// Pages are copied in and out rather than lent as slices: the guest may
/// write them concurrently, which a `&[u8]` would not allow.
pub trait ForeignMapping {
    fn dom(&self) -> DomId;

    /// The frames requested, by page index.
    fn gfns(&self) -> &[Gfn];

    /// Start of the mapping in our address space.
    fn address(&self) -> usize;

    /// Why page `index` is not mapped, or `None` if it is.
    ///
    /// # Panics
    /// If `index` is out of range, like slice indexing.
    fn page_error(&self, index: usize) -> Option<Errno>;

    /// Copy part of page `index`, from `offset`, into `buf`.
    /// Fails if the page is not mapped or the range leaves the page.
    fn read(&self, index: usize, offset: usize, buf: &mut [u8]) -> Result<(), HvError>;

    /// Copy `data` into page `index` at `offset` (needs `ReadWrite`).
    fn write(&self, index: usize, offset: usize, data: &[u8]) -> Result<(), HvError>;

    fn len(&self) -> usize {
        self.gfns().len()
    }

    fn is_empty(&self) -> bool {
        self.gfns().is_empty()
    }
}
