//! The data plane's threads, one per core as nginx has its workers: each a tokio runtime of
//! one worker with its own listener on the data port (`SO_REUSEPORT`: the kernel spreads the
//! connections over them) and its own backend connections (see [`crate::driven`]), so a
//! request is read, forwarded, answered and logged on one thread and never wakes another.
//! What outlives a request (the write tasks a request spawns) runs on its thread's runtime
//! too; the background work (replay, health, admin, metrics) stays on the process's shared
//! runtime.
//!
//! Each runtime is a multi-thread runtime of a single worker rather than a current-thread
//! one, so `block_in_place` (a failpoint's pause in the tests) still hands the worker's I/O
//! and timers to another thread instead of stalling the connections.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;

thread_local! {
    /// 1 + the index of the data-plane thread this is; 0 on any other thread.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// How many per-thread slots the backend pools keep; threads past it share slots.
pub const SLOTS: usize = 64;

/// The slot of the current thread: 0 off the data plane, 1.. on a data-plane thread. The
/// backend pools keep one set of connections per slot.
pub fn slot() -> usize {
    SLOT.with(Cell::get)
}

/// The data plane's runtimes. Dropping them stops them without waiting (their connections
/// were drained by then; see [`crate::server::serve_threads`]).
pub struct DataPlaneThreads {
    runtimes: Vec<Runtime>,
}

impl std::fmt::Debug for DataPlaneThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlaneThreads")
            .field("threads", &self.runtimes.len())
            .finish()
    }
}

impl DataPlaneThreads {
    /// Starts `count` runtimes of one worker each (threads `data-plane-N`).
    pub fn start(count: usize) -> io::Result<DataPlaneThreads> {
        let runtimes = (0..count)
            .map(|index| {
                let slot = index % SLOTS + 1;
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("data-plane-{index}"))
                    .on_thread_start(move || SLOT.with(|cell| cell.set(slot)))
                    .enable_all()
                    .build()
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(DataPlaneThreads { runtimes })
    }

    /// The number of threads `[server] data_plane_threads` asks for: one per core when unset.
    pub fn count(configured: Option<usize>) -> usize {
        configured.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn len(&self) -> usize {
        self.runtimes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runtimes.is_empty()
    }

    pub(crate) fn runtimes(&self) -> &[Runtime] {
        &self.runtimes
    }
}

impl Drop for DataPlaneThreads {
    fn drop(&mut self) {
        // `shutdown_background` may be called from async code, where dropping a runtime
        // panics.
        for runtime in self.runtimes.drain(..) {
            runtime.shutdown_background();
        }
    }
}

/// Binds `count` listeners (at least one) on `addr` with `SO_REUSEPORT`: the first on `addr`
/// (port 0 picks a free one), the others on the address the first got.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(count.max(1));
    let mut at = addr;
    for _ in 0..count.max(1) {
        let socket = if at.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(at)?;
        let listener: TcpListener = socket.listen(1024)?;
        at = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}
