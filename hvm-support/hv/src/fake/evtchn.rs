//! [`FakeEventChannels`]: interdomain event channels between fake domains.
//!
//! Each [`FakeEventChannel`] handle acts for one domain. Ports are numbered
//! per domain from 1, as Xen does. Delivery follows Linux's evtchn driver:
//! a port that fires is queued for its handle and masked; events while it
//! is masked are held (one pending bit) and delivered on unmask. `pending`
//! never blocks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::os_err;
use crate::{DomId, EventChannel, EvtchnPort, HvError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// Waiting for this domain to bind.
    Unbound(DomId),
    Bound(DomId, EvtchnPort),
}

#[derive(Debug)]
struct Port {
    handle: u64,
    peer: Peer,
    masked: bool,
    pending: bool,
}

#[derive(Debug, Default)]
struct Board {
    ports: BTreeMap<(DomId, EvtchnPort), Port>,
    /// Ports fired and not yet read, per handle.
    queues: HashMap<u64, VecDeque<EvtchnPort>>,
    next_handle: u64,
}

impl Board {
    fn alloc(&mut self, dom: DomId, handle: u64, peer: Peer) -> EvtchnPort {
        let port = (1..)
            .map(EvtchnPort)
            .find(|p| !self.ports.contains_key(&(dom, *p)))
            .unwrap_or(EvtchnPort(u32::MAX));
        self.ports.insert(
            (dom, port),
            Port {
                handle,
                peer,
                masked: false,
                pending: false,
            },
        );
        port
    }

    fn fire(&mut self, dom: DomId, port: EvtchnPort) {
        let Some(p) = self.ports.get_mut(&(dom, port)) else {
            return;
        };
        if p.masked {
            p.pending = true;
        } else {
            p.masked = true;
            self.queues.entry(p.handle).or_default().push_back(port);
        }
    }

    /// Close `port` of `dom`; its peer becomes unbound again, as in Xen.
    fn close(&mut self, dom: DomId, port: EvtchnPort) {
        if let Some(Port {
            peer: Peer::Bound(rdom, rport),
            ..
        }) = self.ports.remove(&(dom, port))
        {
            if let Some(r) = self.ports.get_mut(&(rdom, rport)) {
                r.peer = Peer::Unbound(dom);
            }
        }
    }
}

/// The event channels of a fake host. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct FakeEventChannels {
    board: Arc<Mutex<Board>>,
}

impl FakeEventChannels {
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle acting for `dom` (a back end in dom0, a test's front end
    /// in a guest).
    pub fn open(&self, dom: DomId) -> FakeEventChannel {
        let mut board = lock(&self.board);
        board.next_handle += 1;
        FakeEventChannel {
            board: Arc::clone(&self.board),
            dom,
            id: board.next_handle,
        }
    }
}

fn lock(board: &Mutex<Board>) -> MutexGuard<'_, Board> {
    board.lock().unwrap_or_else(|p| p.into_inner())
}

/// One domain's handle; closing it (drop) unbinds its ports.
#[derive(Debug)]
pub struct FakeEventChannel {
    board: Arc<Mutex<Board>>,
    dom: DomId,
    id: u64,
}

impl FakeEventChannel {
    pub fn dom(&self) -> DomId {
        self.dom
    }

    fn lock(&self) -> MutexGuard<'_, Board> {
        lock(&self.board)
    }

    /// ENOTCONN unless `port` was bound through this handle (as the driver).
    fn own<'b>(&self, board: &'b mut Board, port: EvtchnPort) -> Result<&'b mut Port, HvError> {
        board
            .ports
            .get_mut(&(self.dom, port))
            .filter(|p| p.handle == self.id)
            .ok_or_else(|| os_err(format!("port {port} is not bound here"), libc::ENOTCONN))
    }
}

impl EventChannel for FakeEventChannel {
    fn bind_unbound_port(&self, remote: DomId) -> Result<EvtchnPort, HvError> {
        Ok(self.lock().alloc(self.dom, self.id, Peer::Unbound(remote)))
    }

    fn bind_interdomain(
        &self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, HvError> {
        let mut board = self.lock();
        let offered = board
            .ports
            .get(&(remote, remote_port))
            .is_some_and(|p| p.peer == Peer::Unbound(self.dom));
        if !offered {
            return Err(os_err(
                format!("failed to bind to port {remote_port} of domain {remote}"),
                libc::EINVAL,
            ));
        }
        let port = board.alloc(self.dom, self.id, Peer::Bound(remote, remote_port));
        if let Some(r) = board.ports.get_mut(&(remote, remote_port)) {
            r.peer = Peer::Bound(self.dom, port);
        }
        Ok(port)
    }

    fn unbind(&self, port: EvtchnPort) -> Result<(), HvError> {
        let mut board = self.lock();
        self.own(&mut board, port)?;
        board.close(self.dom, port);
        if let Some(q) = board.queues.get_mut(&self.id) {
            q.retain(|p| *p != port);
        }
        Ok(())
    }

    fn notify(&self, port: EvtchnPort) -> Result<(), HvError> {
        let mut board = self.lock();
        // Xen drops a notification on a port nobody bound yet.
        if let Peer::Bound(rdom, rport) = self.own(&mut board, port)?.peer {
            board.fire(rdom, rport);
        }
        Ok(())
    }

    fn pending(&self, _timeout: Duration) -> Result<Option<EvtchnPort>, HvError> {
        Ok(self
            .lock()
            .queues
            .get_mut(&self.id)
            .and_then(VecDeque::pop_front))
    }

    fn unmask(&self, port: EvtchnPort) -> Result<(), HvError> {
        let mut board = self.lock();
        // The driver ignores ports that are not this handle's.
        let Ok(p) = self.own(&mut board, port) else {
            return Ok(());
        };
        p.masked = false;
        if std::mem::take(&mut p.pending) {
            board.fire(self.dom, port);
        }
        Ok(())
    }
}

impl Drop for FakeEventChannel {
    fn drop(&mut self) {
        let mut board = lock(&self.board);
        let mine: Vec<EvtchnPort> = board
            .ports
            .iter()
            .filter(|(_, p)| p.handle == self.id)
            .map(|((_, port), _)| *port)
            .collect();
        for port in mine {
            board.close(self.dom, port);
        }
        board.queues.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const GUEST: DomId = DomId(5);
    const ZERO: Duration = Duration::ZERO;

    /// A guest offers a port, dom0 binds it: (guest handle, its port, dom0
    /// handle, its port).
    fn connected() -> (FakeEventChannel, EvtchnPort, FakeEventChannel, EvtchnPort) {
        connected_on(&FakeEventChannels::new())
    }

    fn connected_on(
        chans: &FakeEventChannels,
    ) -> (FakeEventChannel, EvtchnPort, FakeEventChannel, EvtchnPort) {
        let guest = chans.open(GUEST);
        let dom0 = chans.open(DomId::DOM0);
        let gport = guest.bind_unbound_port(DomId::DOM0).unwrap();
        let port = dom0.bind_interdomain(GUEST, gport).unwrap();
        (guest, gport, dom0, port)
    }

    #[test]
    fn notify_reaches_the_other_end_once_until_unmasked() {
        let (guest, gport, dom0, port) = connected();
        assert_eq!(dom0.pending(ZERO).unwrap(), None);
        guest.notify(gport).unwrap();
        guest.notify(gport).unwrap();
        assert_eq!(dom0.pending(ZERO).unwrap(), Some(port));
        assert_eq!(dom0.pending(ZERO).unwrap(), None, "masked: held");
        dom0.unmask(port).unwrap();
        assert_eq!(dom0.pending(ZERO).unwrap(), Some(port), "held event");
        dom0.unmask(port).unwrap();
        assert_eq!(dom0.pending(ZERO).unwrap(), None);

        dom0.notify(port).unwrap();
        assert_eq!(guest.pending(ZERO).unwrap(), Some(gport));
    }

    #[test]
    fn binding_needs_a_port_offered_to_us() {
        let chans = FakeEventChannels::new();
        let guest = chans.open(GUEST);
        let dom0 = chans.open(DomId::DOM0);
        let for_other = guest.bind_unbound_port(DomId(7)).unwrap();
        let err = dom0.bind_interdomain(GUEST, for_other).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(dom0.bind_interdomain(GUEST, EvtchnPort(99)).is_err());
        let offered = guest.bind_unbound_port(DomId::DOM0).unwrap();
        dom0.bind_interdomain(GUEST, offered).unwrap();
        assert!(
            dom0.bind_interdomain(GUEST, offered).is_err(),
            "bound already"
        );
    }

    #[test]
    fn ports_belong_to_their_handle_and_close_with_it() {
        let chans = FakeEventChannels::new();
        let (guest, gport, dom0, port) = connected_on(&chans);
        let other = chans.open(DomId::DOM0);
        assert_eq!(
            other.notify(port).unwrap_err().errno().map(|e| e.0),
            Some(libc::ENOTCONN)
        );
        drop(dom0);
        // The guest's port is unbound again: notifying it goes nowhere,
        // and dom0 can bind it anew.
        guest.notify(gport).unwrap();
        let again = other.bind_interdomain(GUEST, gport).unwrap();
        guest.notify(gport).unwrap();
        assert_eq!(other.pending(ZERO).unwrap(), Some(again));
        other.unbind(again).unwrap();
        assert!(other.unbind(again).is_err());
    }
}
