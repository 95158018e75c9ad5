//! Debug files fetched in the background, so that symbolizing a hit never waits for the
//! network.
//!
//! When the symbolizer loads a file that has only `.dynsym` and no local debug file
//! (`ElfImage::missing_debug_file`), it answers at once from what it has and asks this
//! fetcher for the build-id. One worker thread fetches queued build-ids one at a time
//! (each bounded by the client's timeouts) and exits when the queue is empty; a build-id
//! already queued or in flight is not asked twice. When a file arrives, the callbacks
//! registered for its build-id run on the worker: the symbolizer's swaps the image in its
//! cache for one with the full symbols, so later lookups of that file get them.

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::Mutex,
};

use crate::elf::{BuildId, debuginfod::Client};

/// What to do when the debug file of a build-id is in the cache.
pub(super) type OnArrival = Box<dyn FnOnce(&Path) + Send>;

/// The queue and the worker's state.
#[derive(Default)]
struct Queue {
    /// Build-ids waiting or in flight, with what to run on arrival.
    pending: HashMap<BuildId, Vec<OnArrival>>,
    /// Build-ids not yet taken by the worker, oldest first.
    order: VecDeque<BuildId>,
    /// True while a worker thread is running (it exits on an empty queue).
    worker: bool,
}

/// Background fetches through one client.
pub(super) struct Fetcher {
    /// The client (its own negative cache keeps a missing build-id from being re-asked).
    client: &'static Client,
    /// Pending build-ids.
    queue: Mutex<Queue>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher through `client`.
    pub(super) fn new(client: &'static Client) -> Self {
        Self {
            client,
            queue: Mutex::default(),
        }
    }

    /// The client.
    pub(super) fn client(&self) -> &'static Client {
        self.client
    }

    /// Fetches `id` in the background and runs `then` with the file's path when it is
    /// cached; returns at once. Never blocks on the network (only on this queue's mutex,
    /// held for a few map operations).
    pub(super) fn request(self: &std::sync::Arc<Self>, id: BuildId, then: OnArrival) {
        let mut queue = self.lock();
        let waiting = queue.pending.entry(id.clone()).or_default();
        let first = waiting.is_empty();
        waiting.push(then);
        if first {
            queue.order.push_back(id);
        }
        if queue.worker {
            return;
        }
        queue.worker = true;
        drop(queue);
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("probed-debuginfod".into())
            .spawn(move || this.work());
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the debuginfod thread; debug files are not fetched");
            self.lock().worker = false;
        }
    }

    /// The worker: fetch queued build-ids until none is left.
    fn work(&self) {
        loop {
            let id = {
                let mut queue = self.lock();
                match queue.order.pop_front() {
                    Some(id) => id,
                    None => {
                        queue.worker = false;
                        return;
                    }
                }
            };
            let result = self.client.fetch(&id);
            // Callbacks registered while the fetch ran are taken too: their images were
            // loaded before the file was in the cache.
            let callbacks = self.lock().pending.remove(&id).unwrap_or_default();
            match result {
                Ok(path) => callbacks.into_iter().for_each(|then| then(&path)),
                Err(e) => {
                    tracing::debug!(build_id = %id, error = %e, "no debug file from debuginfod");
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Every change under the lock is a single map or queue operation.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
