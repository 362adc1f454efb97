//! Both ends of a shared ring (`circ_hv::ring`) over memory the input
//! fills and keeps scribbling on, as a hostile peer could: indices,
//! event thresholds, padding and slots. Neither end may panic or touch
//! memory outside its indices and slots (the confined fake memory panics
//! if it does), and each keeps its own invariants: the back end never owes
//! more responses than the ring has slots, the front end never has more
//! requests in flight.
#![no_main]

use std::sync::atomic::Ordering;

use circ_hv::fake::FakeRingMemory;
use circ_hv::ring::{BackRing, FrontRing, RingEntry, RingGeometry, RingMemory, RingTypes};
use libfuzzer_sys::fuzz_target;

/// An entry of `N` raw bytes.
struct Raw<const N: usize>([u8; N]);

impl<const N: usize> RingEntry for Raw<N> {
    const SIZE: usize = N;
    fn from_bytes(bytes: &[u8]) -> Self {
        let mut a = [0; N];
        a.copy_from_slice(bytes);
        Self(a)
    }
    fn to_bytes(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.0);
    }
}

/// Requests of `N` bytes, responses of 8 (slot: the larger).
struct Proto<const N: usize>;

impl<const N: usize> RingTypes for Proto<N> {
    type Request = Raw<N>;
    type Response = Raw<8>;
}

/// Takes bytes off the front of the input; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u32(&mut self) -> u32 {
        let mut w = [0; 4];
        let b = self.bytes(4);
        w[..b.len()].copy_from_slice(b);
        u32::from_le_bytes(w)
    }
}

fn run<const N: usize>(mut input: Input<'_>) {
    let slot = N.max(8);
    let size = 64 + slot + usize::from(input.u8()) * 8;
    let Ok(geometry) = RingGeometry::new(size, slot) else {
        return;
    };
    let mut bytes = input.bytes(size).to_vec();
    bytes.resize(size, 0);
    let mem = FakeRingMemory::from_bytes(bytes).confine_to(geometry);
    let (start_back, start_front) = (input.u32(), input.u32());
    let mut back = BackRing::<_, Proto<N>>::attach(mem.clone(), start_back).expect("fits");
    let mut front = FrontRing::<_, Proto<N>>::attach(mem.clone(), start_front).expect("fits");
    let slots = geometry.slots();

    while !input.0.is_empty() {
        match input.u8() % 10 {
            0 => mem.poke_u32(0, input.u32()),
            1 => {
                let index = usize::from(input.u8() % 4) * 4;
                mem.poke_u32(index, input.u32());
            }
            2 => {
                let offset = (input.u32() as usize) % size;
                let len = usize::from(input.u8()).min(size - offset);
                let data = input.bytes(len).to_vec();
                mem.poke(offset, &data);
            }
            3 | 4 => {
                let _ = back.next_request();
            }
            5 => {
                let mut rsp = [0; 8];
                let b = input.bytes(8);
                rsp[..b.len()].copy_from_slice(b);
                let _ = back.push_response(&Raw(rsp));
            }
            6 => {
                if input.u8() & 1 == 0 {
                    let _ = back.push_responses_and_check_notify();
                } else {
                    let _ = back.final_check_for_requests();
                }
            }
            7 => {
                let mut req = [0; N];
                let b = input.bytes(N);
                req[..b.len()].copy_from_slice(b);
                let _ = front.push_request(&Raw(req));
                let _ = front.push_requests_and_check_notify();
            }
            8 => {
                let _ = front.next_response();
            }
            _ => {
                let _ = front.final_check_for_responses();
            }
        }
        let owed = back.req_cons().wrapping_sub(back.rsp_prod_pvt());
        assert!(owed <= slots, "back end owes {owed} on {slots} slots");
        assert!(front.free_requests() <= slots);
        let _ = mem.load_u32(0, Ordering::Relaxed);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    match input.u8() % 4 {
        0 => run::<8>(input),
        1 => run::<16>(input),
        2 => run::<112>(input),
        _ => run::<400>(input),
    }
});
