//! Page fingerprints. A hash only proposes candidates: two pages are shared
//! only after their bytes compared equal, so a collision costs a compare,
//! never a wrong share. The hasher is a trait so tests can force collisions.

use circ_hv::PAGE_SIZE;

/// A 64-bit fingerprint of one page.
pub trait PageHasher {
    fn hash(&self, page: &[u8; PAGE_SIZE]) -> u64;
}

/// XXH3-64: several GB/s per core, good enough dispersion for grouping.
#[derive(Debug, Clone, Copy, Default)]
pub struct Xxh3Hasher;

impl PageHasher for Xxh3Hasher {
    fn hash(&self, page: &[u8; PAGE_SIZE]) -> u64 {
        xxhash_rust::xxh3::xxh3_64(page)
    }
}

/// What a page looks like to the scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageKey {
    /// All bytes zero: the most common duplicate, found without hashing.
    Zero,
    Hash(u64),
}

impl PageKey {
    pub fn of<H: PageHasher + ?Sized>(hasher: &H, page: &[u8; PAGE_SIZE]) -> Self {
        if is_zero(page) {
            PageKey::Zero
        } else {
            PageKey::Hash(hasher.hash(page))
        }
    }
}

/// Whether every byte of `page` is zero, a word at a time.
pub fn is_zero(page: &[u8; PAGE_SIZE]) -> bool {
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_keyed_without_hashing() {
        struct Panics;
        impl PageHasher for Panics {
            fn hash(&self, _: &[u8; PAGE_SIZE]) -> u64 {
                panic!("a zero page must not be hashed")
            }
        }
        assert_eq!(PageKey::of(&Panics, &[0; PAGE_SIZE]), PageKey::Zero);
    }

    #[test]
    fn one_byte_makes_a_page_non_zero_and_changes_the_hash() {
        let mut page = [0u8; PAGE_SIZE];
        page[PAGE_SIZE - 1] = 1;
        assert!(!is_zero(&page));
        let a = PageKey::of(&Xxh3Hasher, &page);
        page[0] = 1;
        let b = PageKey::of(&Xxh3Hasher, &page);
        assert!(matches!(a, PageKey::Hash(_)));
        assert_ne!(a, b);
    }
}
