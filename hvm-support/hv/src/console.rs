//! A guest's PV console ring (`xen/include/public/io/console.h`): 1 KiB
//! of input, 2 KiB of output and four indices, on the page the toolstack
//! grants the console back end as [`CONSOLE_GRANT`]. Not an `io/ring.h`
//! ring: bytes, not entries.

use std::sync::atomic::Ordering;

use crate::ring::RingMemory;
use crate::GrantRef;

/// `GNTTAB_RESERVED_CONSOLE`: the grant the toolstack seeds for the
/// console page (xenconsoled maps it).
pub const CONSOLE_GRANT: GrantRef = GrantRef(0);

/// `offsetof(struct xencons_interface, out)` and its size.
pub const OUT_AT: usize = 1024;
pub const OUT_SIZE: u32 = 2048;
/// `offsetof(struct xencons_interface, out_prod)`.
pub const OUT_PROD_AT: usize = 3084;
/// `sizeof(struct xencons_interface)`.
pub const INTERFACE_SIZE: usize = 3088;

/// The guest's last console output, up to the ring's 2 KiB, consumed by
/// the back end or not: bytes stay in the ring until the guest overwrites
/// them. The guest controls `out_prod`; it only chooses which of the ring's
/// bytes come back, in which order. `None` if `mem` is smaller than a
/// console page's interface.
pub fn recent_output(mem: &impl RingMemory) -> Option<Vec<u8>> {
    if mem.size() < INTERFACE_SIZE {
        return None;
    }
    let prod = mem.load_u32(OUT_PROD_AT, Ordering::Acquire);
    let len = prod.min(OUT_SIZE);
    let start = prod.wrapping_sub(len) % OUT_SIZE;
    let mut out = vec![0; len as usize];
    // At most two pieces: up to the end of the ring, then from its start.
    let first = len.min(OUT_SIZE - start) as usize;
    let (head, tail) = out.split_at_mut(first);
    mem.read(OUT_AT + start as usize, head);
    mem.read(OUT_AT, tail);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeRingMemory;

    fn console(prod: u32, fill: impl Fn(u32) -> u8) -> FakeRingMemory {
        let mem = FakeRingMemory::pages(1);
        for i in 0..OUT_SIZE {
            mem.poke(OUT_AT + i as usize, &[fill(i)]);
        }
        mem.poke_u32(OUT_PROD_AT, prod);
        mem
    }

    #[test]
    fn short_output_comes_back_whole() {
        let mem = FakeRingMemory::pages(1);
        mem.poke(OUT_AT, b"circ-guest: up\n");
        mem.poke_u32(OUT_PROD_AT, 15);
        assert_eq!(recent_output(&mem).unwrap(), b"circ-guest: up\n");
    }

    #[test]
    fn wrapped_output_comes_back_in_order() {
        // Byte i of the stream sits at i % 2048; the guest wrote 5000.
        let mem = console(5000, |slot| {
            let i = if slot < 5000 % OUT_SIZE {
                4096 + slot
            } else {
                2048 + slot
            };
            (i % 251) as u8
        });
        let out = recent_output(&mem).unwrap();
        let expected: Vec<u8> = (5000 - 2048..5000).map(|i| (i % 251) as u8).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn any_producer_index_stays_in_the_ring() {
        for prod in [0, 1, 2047, 2048, 2049, u32::MAX, 0x8000_0000] {
            let out = recent_output(&console(prod, |_| b'x')).unwrap();
            assert_eq!(out.len(), prod.min(OUT_SIZE) as usize, "prod {prod}");
        }
        assert!(recent_output(&FakeRingMemory::new(INTERFACE_SIZE - 1)).is_none());
    }
}
