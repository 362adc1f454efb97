//! The ring against io/ring.h's arithmetic and against a hostile peer.
//! Every ring here runs over a [`FakeRingMemory`] confined to the ring:
//! an access outside the indices and slots panics.

use super::*;
use crate::fake::FakeRingMemory;

/// A 16-byte request and an 8-byte response: 4 slots in 128 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Req {
    id: u32,
    value: u32,
    tag: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rsp {
    id: u32,
    status: i32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl RingEntry for Req {
    const SIZE: usize = 16;
    fn from_bytes(b: &[u8]) -> Self {
        let mut tag = [0; 8];
        tag.copy_from_slice(&b[8..16]);
        Self {
            id: u32_at(b, 0),
            value: u32_at(b, 4),
            tag: u64::from_le_bytes(tag),
        }
    }
    fn to_bytes(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.id.to_le_bytes());
        out[4..8].copy_from_slice(&self.value.to_le_bytes());
        out[8..16].copy_from_slice(&self.tag.to_le_bytes());
    }
}

impl RingEntry for Rsp {
    const SIZE: usize = 8;
    fn from_bytes(b: &[u8]) -> Self {
        Self {
            id: u32_at(b, 0),
            status: u32_at(b, 4) as i32,
        }
    }
    fn to_bytes(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.id.to_le_bytes());
        out[4..8].copy_from_slice(&self.status.to_le_bytes());
    }
}

#[derive(Debug)]
struct Test;

impl RingTypes for Test {
    type Request = Req;
    type Response = Rsp;
}

const SLOTS: u32 = 4;

fn memory(bytes: usize) -> FakeRingMemory {
    let geometry = RingGeometry::new(bytes, Test::SLOT_SIZE).unwrap();
    FakeRingMemory::new(bytes).confine_to(geometry)
}

/// A front end and a back end over one 4-slot ring, both at index `start`.
fn pair_at(
    start: u32,
) -> (
    FrontRing<FakeRingMemory, Test>,
    BackRing<FakeRingMemory, Test>,
) {
    let mem = memory(HEADER_SIZE + SLOTS as usize * 16);
    FrontRing::<_, Test>::init_shared(mem.clone()).unwrap();
    for (index, value) in [(REQ_PROD, start), (RSP_PROD, start)] {
        mem.poke_u32(index, value);
    }
    for index in [REQ_EVENT, RSP_EVENT] {
        mem.poke_u32(index, start.wrapping_add(1));
    }
    let front = FrontRing::attach(mem.clone(), start).unwrap();
    let back = BackRing::attach(mem, start).unwrap();
    (front, back)
}

fn pair() -> (
    FrontRing<FakeRingMemory, Test>,
    BackRing<FakeRingMemory, Test>,
) {
    pair_at(0)
}

fn req(id: u32) -> Req {
    Req {
        id,
        value: id.wrapping_mul(10),
        tag: u64::from(id) << 40,
    }
}

/// The back end's loop: consume everything, answer each request with
/// `value + 1`, publish. Returns the ids served.
fn serve(back: &mut BackRing<FakeRingMemory, Test>) -> Result<Vec<u32>, RingError> {
    let mut ids = Vec::new();
    loop {
        while let Some(r) = back.next_request()? {
            back.push_response(&Rsp {
                id: r.id,
                status: r.value.wrapping_add(1) as i32,
            })?;
            ids.push(r.id);
        }
        if !back.final_check_for_requests()? {
            break;
        }
    }
    back.push_responses();
    Ok(ids)
}

fn drain(front: &mut FrontRing<FakeRingMemory, Test>) -> Vec<Rsp> {
    let mut got = Vec::new();
    while let Some(r) = front.next_response().unwrap() {
        got.push(r);
    }
    got
}

#[test]
fn geometry_matches_ring_h() {
    let slots = |bytes, entry| RingGeometry::new(bytes, entry).unwrap().slots();
    assert_eq!(slots(PAGE_SIZE, 400), 8, "vm_event");
    assert_eq!(slots(PAGE_SIZE, 112), 32, "blkif: BLK_RING_SIZE");
    assert_eq!(slots(PAGE_SIZE, 8), 256, "netif rx");
    let two = RingGeometry::for_pages(2, 112).unwrap();
    assert_eq!(two.slots(), 64, "blkif, ring-page-order 1");
    assert_eq!(two.slot_offset(63), HEADER_SIZE + 63 * 112);
    assert!(two.end() <= 2 * PAGE_SIZE);
    assert_eq!(
        two.slot_offset(64),
        HEADER_SIZE,
        "indices wrap onto the ring"
    );
    assert_eq!(two.slot_offset(u32::MAX), two.slot_offset(63));
    assert_eq!(
        RingGeometry::new(HEADER_SIZE + 399, 400),
        Err(RingError::TooSmall {
            bytes: HEADER_SIZE + 399,
            slot_size: 400
        })
    );
    assert!(RingGeometry::new(PAGE_SIZE, 0).is_err());
    assert_eq!(slots(usize::MAX, 1), 1 << 31, "RING_IDX bounds the slots");
    assert_eq!(Test::SLOT_SIZE, 16, "the union is the larger entry");
}

#[test]
fn requests_and_responses_round_trip() {
    let (mut front, mut back) = pair();
    for id in 1..=3 {
        front.push_request(&req(id)).unwrap();
    }
    assert_eq!(front.free_requests(), 1);
    assert!(
        front.push_requests_and_check_notify(),
        "req_event starts at 1"
    );

    assert_eq!(back.unconsumed_requests(), Ok(3));
    assert_eq!(back.next_request().unwrap(), Some(req(1)));
    back.push_response(&Rsp { id: 1, status: 11 }).unwrap();
    assert_eq!(serve(&mut back).unwrap(), [2, 3]);
    assert_eq!(
        back.push_response(&Rsp { id: 9, status: 0 }),
        Err(RingError::NoRequestToAnswer),
        "every request is answered"
    );

    let got = drain(&mut front);
    assert_eq!(
        got.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
        [(1, 11), (2, 21), (3, 31)]
    );
    assert_eq!(front.free_requests(), SLOTS);
}

#[test]
fn notifications_follow_the_event_indices() {
    let (mut front, mut back) = pair();
    front.push_request(&req(1)).unwrap();
    assert!(front.push_requests_and_check_notify());
    front.push_request(&req(2)).unwrap();
    assert!(
        !front.push_requests_and_check_notify(),
        "the back end has not asked again"
    );
    assert_eq!(serve(&mut back).unwrap(), [1, 2]);
    assert_eq!(back.memory().load_u32(REQ_EVENT, Ordering::Relaxed), 3);
    front.push_request(&req(3)).unwrap();
    assert!(
        front.push_requests_and_check_notify(),
        "req_event = cons + 1"
    );

    // Responses: the front end asks with its final check.
    assert_eq!(serve(&mut back).unwrap(), [3]);
    assert_eq!(drain(&mut front).len(), 3);
    assert!(!front.final_check_for_responses().unwrap());
    front.push_request(&req(4)).unwrap();
    front.push_requests();
    back.next_request().unwrap();
    back.push_response(&Rsp { id: 4, status: 0 }).unwrap();
    assert!(
        back.push_responses_and_check_notify(),
        "rsp_event = cons + 1"
    );
}

#[test]
fn indices_wrap_around_u32() {
    let (mut front, mut back) = pair_at(u32::MAX - 2);
    let mut answered = Vec::new();
    for round in 0..4 {
        for id in 0..3 {
            front.push_request(&req(round * 3 + id)).unwrap();
        }
        front.push_requests();
        serve(&mut back).unwrap();
        answered.extend(drain(&mut front).into_iter().map(|r| r.id));
    }
    assert_eq!(answered, (0..12).collect::<Vec<_>>());
    assert_eq!(back.req_cons(), (u32::MAX - 2).wrapping_add(12));
}

#[test]
fn a_producer_index_that_jumps_is_an_error() {
    let (mut front, mut back) = pair();
    front.push_request(&req(1)).unwrap();
    front.push_requests();
    let mem = back.memory().clone();
    mem.poke_u32(REQ_PROD, SLOTS + 1);
    let err = back.next_request().unwrap_err();
    assert_eq!(
        err,
        RingError::RequestOverflow {
            prod: SLOTS + 1,
            cons: 0,
            slots: SLOTS
        }
    );
    assert_eq!(back.final_check_for_requests(), Err(err));
    assert_eq!(back.req_cons(), 0, "nothing consumed");
    // A whole ring ahead is the most an honest front end can be.
    mem.poke_u32(REQ_PROD, SLOTS);
    assert_eq!(back.unconsumed_requests(), Ok(SLOTS));
    mem.poke_u32(REQ_PROD, u32::MAX);
    assert!(back.next_request().is_err(), "garbage");
}

#[test]
fn a_producer_index_that_runs_backwards_is_an_error() {
    let (mut front, mut back) = pair();
    for id in 0..3 {
        front.push_request(&req(id)).unwrap();
    }
    front.push_requests();
    assert_eq!(serve(&mut back).unwrap(), [0, 1, 2]);
    back.memory().poke_u32(REQ_PROD, 1);
    assert_eq!(
        back.next_request(),
        Err(RingError::RequestOverflow {
            prod: 1,
            cons: 3,
            slots: SLOTS
        })
    );
}

#[test]
fn requests_over_unanswered_slots_wait_for_the_answers() {
    let (mut front, mut back) = pair();
    for id in 0..SLOTS {
        front.push_request(&req(id)).unwrap();
    }
    front.push_requests();
    for id in 0..SLOTS {
        assert_eq!(back.next_request().unwrap().map(|r| r.id), Some(id));
    }
    // A front end claiming a whole new ring of requests before any answer
    // would have written them over the slots our answers go to.
    back.memory().poke_u32(REQ_PROD, 2 * SLOTS);
    assert_eq!(back.unconsumed_requests(), Ok(0));
    assert_eq!(back.next_request(), Ok(None));
    back.push_response(&Rsp { id: 0, status: 0 }).unwrap();
    assert_eq!(back.unconsumed_requests(), Ok(1), "one slot answered");
}

#[test]
fn garbage_event_indices_and_padding_change_only_notifications() {
    let (mut front, mut back) = pair();
    let mem = back.memory().clone();
    mem.poke(16, &[0xa5; HEADER_SIZE - 16]);
    for garbage in [0, 1, 0x8000_0000, u32::MAX] {
        mem.poke_u32(REQ_EVENT, garbage);
        mem.poke_u32(RSP_EVENT, garbage);
        front.push_request(&req(garbage)).unwrap();
        let _ = front.push_requests_and_check_notify();
        assert_eq!(back.next_request().unwrap().map(|r| r.id), Some(garbage));
        assert!(!back.final_check_for_requests().unwrap());
        assert_eq!(
            mem.load_u32(REQ_EVENT, Ordering::Relaxed),
            back.req_cons() + 1,
            "our req_event overwrites theirs"
        );
        back.push_response(&Rsp { id: 0, status: 0 }).unwrap();
        let _ = back.push_responses_and_check_notify();
        assert_eq!(drain(&mut front).len(), 1);
    }
}

#[test]
fn a_response_with_no_request_is_refused() {
    let (_front, mut back) = pair();
    assert_eq!(
        back.push_response(&Rsp { id: 1, status: 0 }),
        Err(RingError::NoRequestToAnswer)
    );
}

#[test]
fn responses_beyond_requests_are_an_error_for_the_front_end() {
    let (mut front, back) = pair();
    front.push_request(&req(1)).unwrap();
    front.push_requests();
    back.memory().poke_u32(RSP_PROD, 2);
    assert_eq!(
        front.next_response(),
        Err(RingError::ResponseOverflow {
            prod: 2,
            cons: 0,
            outstanding: 1
        })
    );
    back.memory().poke_u32(RSP_PROD, u32::MAX);
    assert!(front.final_check_for_responses().is_err(), "backwards");
}

#[test]
fn a_full_ring_refuses_requests() {
    let (mut front, _back) = pair();
    for id in 0..SLOTS {
        front.push_request(&req(id)).unwrap();
    }
    assert_eq!(front.push_request(&req(9)), Err(RingError::Full));
}

#[test]
fn a_multi_page_ring_uses_every_slot() {
    let geometry = RingGeometry::for_pages(2, 112).unwrap();
    let mem = FakeRingMemory::pages(2).confine_to(geometry);

    #[derive(Debug)]
    struct Wide;
    #[derive(Debug, PartialEq)]
    struct Blk([u8; 112]);
    impl RingEntry for Blk {
        const SIZE: usize = 112;
        fn from_bytes(b: &[u8]) -> Self {
            let mut a = [0; 112];
            a.copy_from_slice(b);
            Self(a)
        }
        fn to_bytes(&self, out: &mut [u8]) {
            out.copy_from_slice(&self.0);
        }
    }
    impl RingTypes for Wide {
        type Request = Blk;
        type Response = Blk;
    }

    let mut front = FrontRing::<_, Wide>::init_shared(mem.clone()).unwrap();
    let mut back = BackRing::<_, Wide>::new(mem).unwrap();
    assert_eq!(back.geometry().slots(), 64);
    for round in 0..3u8 {
        for i in 0..64u8 {
            front.push_request(&Blk([round ^ i; 112])).unwrap();
        }
        front.push_requests();
        for i in 0..64u8 {
            let r = back.next_request().unwrap().unwrap();
            assert_eq!(r, Blk([round ^ i; 112]));
            back.push_response(&Blk([!i; 112])).unwrap();
        }
        back.push_responses();
        for i in 0..64u8 {
            assert_eq!(front.next_response().unwrap(), Some(Blk([!i; 112])));
        }
    }
}

/// A peer that writes random indices and entries between every step of
/// the back end: the back end errs or serves, and never leaves the ring
/// (the confined memory would panic).
#[test]
fn a_random_hostile_front_end_never_steers_the_back_end_out_of_the_ring() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (_front, mut back) = pair();
    let mem = back.memory().clone();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let r = next();
        match r % 8 {
            0 => mem.poke_u32(REQ_PROD, back.req_cons().wrapping_add((r >> 8) as u32 % 6)),
            1 => mem.poke_u32(REQ_PROD, (r >> 8) as u32),
            2 => mem.poke_u32(
                [REQ_EVENT, RSP_PROD, RSP_EVENT][(r >> 8) as usize % 3],
                (r >> 16) as u32,
            ),
            3 => mem.poke(
                HEADER_SIZE + (r >> 8) as usize % (SLOTS as usize * 16 - 8),
                &r.to_le_bytes(),
            ),
            4 | 5 => match back.next_request() {
                Ok(Some(_)) => served += 1,
                Ok(None) => {}
                Err(RingError::RequestOverflow { .. }) => refused += 1,
                Err(e) => panic!("unexpected {e}"),
            },
            6 => {
                let _ = back.push_response(&Rsp { id: 0, status: 0 });
                let _ = back.push_responses_and_check_notify();
            }
            _ => {
                let _ = back.final_check_for_requests();
            }
        }
        let owed = back.req_cons().wrapping_sub(back.rsp_prod_pvt());
        assert!(owed <= SLOTS, "owes {owed} responses on {SLOTS} slots");
    }
    assert!(
        served > 1000 && refused > 1000,
        "served {served}, refused {refused}"
    );
}

#[test]
fn unsolicited_responses_are_published_in_slot_order_at_most_a_ring_at_a_time() {
    let mem = memory(HEADER_SIZE + SLOTS as usize * 16);
    let mut back = BackRing::<_, Test>::init_shared(mem.clone()).unwrap();
    let rsps: Vec<Rsp> = (0..SLOTS).map(|id| Rsp { id, status: 7 }).collect();
    assert_eq!(back.push_unsolicited_responses(&rsps), Ok(()));
    assert_eq!(mem.load_u32(RSP_PROD, Ordering::Acquire), SLOTS);
    for (i, r) in rsps.iter().enumerate() {
        let mut buf = [0u8; 8];
        mem.read(back.geometry().slot_offset(i as u32), &mut buf);
        assert_eq!(Rsp::from_bytes(&buf), *r);
    }
    // The next batch (once the front end read these) goes on from there.
    assert_eq!(back.push_unsolicited_responses(&rsps[..1]), Ok(()));
    assert_eq!(mem.load_u32(RSP_PROD, Ordering::Acquire), SLOTS + 1);
    let too_many: Vec<Rsp> = (0..=SLOTS).map(|id| Rsp { id, status: 0 }).collect();
    assert_eq!(
        back.push_unsolicited_responses(&too_many),
        Err(RingError::Full)
    );
}

#[test]
fn unsolicited_responses_never_overwrite_owed_ones() {
    let (mut front, mut back) = pair();
    front.push_request(&req(1)).unwrap();
    front.push_requests();
    assert!(back.next_request().unwrap().is_some());
    assert_eq!(
        back.push_unsolicited_responses(&[Rsp { id: 9, status: 0 }]),
        Err(RingError::NoRequestToAnswer)
    );
}
