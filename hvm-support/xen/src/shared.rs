//! [`SharedPages`]: the [`RingMemory`] of pages mapped from another domain
//! (a grant mapping, or the sharing ring's foreign mapping).

use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

use circ_hv::ring::RingMemory;

/// A borrowed view of `len` mapped, writable bytes that another domain
/// may access concurrently: indices through atomics, everything else
/// through volatile byte copies. Every access is bounds-checked (a
/// failed check panics, as slice indexing does).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedPages<'a> {
    base: NonNull<u8>,
    len: usize,
    mapping: std::marker::PhantomData<&'a ()>,
}

impl SharedPages<'_> {
    /// # Safety
    /// `[base, base + len)` must be mapped readable and writable, and stay
    /// so for the lifetime `'a` chosen by the caller; `base` must be
    /// 4-aligned (page-aligned mappings are).
    pub(crate) unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self {
            base,
            len,
            mapping: std::marker::PhantomData,
        }
    }

    /// Pointer to `[offset, offset + n)`, after checking it is inside.
    fn at(&self, offset: usize, n: usize) -> *mut u8 {
        let end = offset.checked_add(n);
        assert!(
            end.is_some_and(|end| end <= self.len),
            "access of {n} bytes at {offset} leaves {} mapped bytes",
            self.len
        );
        // SAFETY: offset + n <= len (checked above): inside the mapping.
        unsafe { self.base.as_ptr().add(offset) }
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        assert!(offset % 4 == 0, "unaligned u32 at {offset}");
        let p = self.at(offset, 4).cast::<u32>();
        // SAFETY: 4 in-bounds bytes (at), 4-aligned (base is, offset is),
        // mapped for 'a (new's contract). The other domain accesses them
        // concurrently, which is what atomics are for; we never make a
        // non-atomic reference to them.
        unsafe { AtomicU32::from_ptr(p) }
    }
}

impl RingMemory for SharedPages<'_> {
    fn size(&self) -> usize {
        self.len
    }

    fn load_u32(&self, offset: usize, order: Ordering) -> u32 {
        self.index(offset).load(order)
    }

    fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        self.index(offset).store(value, order)
    }

    fn read(&self, offset: usize, buf: &mut [u8]) {
        let src = self.at(offset, buf.len());
        for (i, byte) in buf.iter_mut().enumerate() {
            // SAFETY: src + i is in bounds (at checked the whole range).
            // Volatile: the other domain may write concurrently.
            *byte = unsafe { ptr::read_volatile(src.add(i)) };
        }
    }

    fn write(&self, offset: usize, data: &[u8]) {
        let dst = self.at(offset, data.len());
        for (i, byte) in data.iter().enumerate() {
            // SAFETY: dst + i is in bounds (at) and writable (new's
            // contract). Volatile: the other domain may read concurrently.
            unsafe { ptr::write_volatile(dst.add(i), *byte) };
        }
    }
}

/// `impl RingMemory for $ty` through its `fn pages(&self) -> SharedPages`.
macro_rules! ring_memory_via_pages {
    ($ty:ty) => {
        impl circ_hv::ring::RingMemory for $ty {
            fn size(&self) -> usize {
                self.pages().size()
            }

            fn load_u32(&self, offset: usize, order: std::sync::atomic::Ordering) -> u32 {
                self.pages().load_u32(offset, order)
            }

            fn store_u32(&self, offset: usize, value: u32, order: std::sync::atomic::Ordering) {
                self.pages().store_u32(offset, value, order)
            }

            fn read(&self, offset: usize, buf: &mut [u8]) {
                self.pages().read(offset, buf)
            }

            fn write(&self, offset: usize, data: &[u8]) {
                self.pages().write(offset, data)
            }
        }
    };
}
pub(crate) use ring_memory_via_pages;
