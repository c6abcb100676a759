//! This VM's streams that wait in a model's queue for capacity, and how the root context's
//! tick wakes them.
//!
//! proxy-wasm has no per-stream timer, so a stream the core told to wait (`Action::Wait`)
//! stays paused and is listed here, per queue, in arrival order. On every tick the root
//! context walks each queue oldest first: it makes the stream the effective context and feeds
//! it `Event::Retry`; when one still finds every deployment full, the rest of that queue are
//! left for the next tick (they would find the same) unless their wait is up, so each is
//! answered within one tick of its `until_ms`. A freed slot therefore goes to the oldest
//! waiting stream of this worker; across Envoy's workers the first worker to tick after the
//! slot freed takes it (each worker has its own VM and list; the queue's depth is shared).
//!
//! A stream woken from the root's callback that dispatches an HTTP call has that call
//! registered by the SDK to the *root* context (it records the context whose callback is
//! running), so its answer arrives at the root, which hands it back to the stream
//! ([`take_call`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Weak;
use std::time::Duration;

use proxy_wasm::hostcalls;

use crate::http::SwitchyardHttp;

/// How often the root context wakes waiting streams (and so the latency a freed slot may
/// sit unused, and the most a wait may overrun its bound).
pub const TICK: Duration = Duration::from_millis(50);

/// The tick while woken streams are left over from the last one.
pub const BUSY_TICK: Duration = Duration::from_millis(5);

/// The most streams one tick wakes. Envoy runs what a callback asked of other streams (a
/// local reply, a resume) after the callback returns, each from the tail of the previous one's
/// own VM call: a thousand replies from one tick nest a thousand deep and overflow V8's stack
/// (seen at 5,000 waiting streams whose waits ran out together). The rest wait for the next,
/// quicker tick.
const WAKE_BUDGET: usize = 32;

/// A stream, as this VM's lists hold it (gone once the SDK drops its context).
type StreamRef = Weak<RefCell<SwitchyardHttp>>;

/// A paused stream in a queue.
struct Waiter {
    context_id: u32,
    stream: StreamRef,
    until_ms: u64,
}

thread_local! {
    static QUEUES: RefCell<BTreeMap<String, VecDeque<Waiter>>> = const { RefCell::new(BTreeMap::new()) };
    static CALLS: RefCell<HashMap<u32, (u32, StreamRef)>> = RefCell::new(HashMap::new());
    static DRIVING: Cell<bool> = const { Cell::new(false) };
}

/// Lists a stream at the back of `queue`.
pub fn add(queue: &str, context_id: u32, stream: StreamRef, until_ms: u64) {
    QUEUES.with(|q| {
        q.borrow_mut()
            .entry(queue.to_string())
            .or_default()
            .push_back(Waiter {
                context_id,
                stream,
                until_ms,
            })
    });
}

/// Whether a stream is being driven from the root context's callback (its HTTP calls then
/// answer to the root).
pub fn driving() -> bool {
    DRIVING.with(Cell::get)
}

/// Remembers that the answer to call `token` belongs to this stream.
pub fn forward_call(token: u32, context_id: u32, stream: StreamRef) {
    CALLS.with(|c| c.borrow_mut().insert(token, (context_id, stream)));
}

/// Delivers the answer to call `token` to the stream that made it from the root context;
/// `false` when the call is not a stream's.
pub fn deliver_call(
    root_id: u32,
    token: u32,
    num_headers: usize,
    body_size: usize,
    num_trailers: usize,
) -> bool {
    let Some((context_id, stream)) = CALLS.with(|c| c.borrow_mut().remove(&token)) else {
        return false;
    };
    if let Some(stream) = stream.upgrade() {
        drive(context_id, || {
            use proxy_wasm::traits::Context;
            stream
                .borrow_mut()
                .on_http_call_response(token, num_headers, body_size, num_trailers);
        });
    }
    let _ = hostcalls::set_effective_context(root_id);
    true
}

/// Runs `f` with `context_id` as the effective context, marked as driven from the root.
fn drive(context_id: u32, f: impl FnOnce()) -> bool {
    if hostcalls::set_effective_context(context_id).is_err() {
        return false; // The stream is gone.
    }
    DRIVING.with(|d| d.set(true));
    f();
    DRIVING.with(|d| d.set(false));
    true
}

/// Wakes this VM's waiting streams (see the module docs for the order); `true` when some
/// were left for the next tick by the per-tick budget.
pub fn wake(root_id: u32, now_ms: u64) -> bool {
    let mut queues = QUEUES.with(|q| std::mem::take(&mut *q.borrow_mut()));
    let mut budget = WAKE_BUDGET;
    let mut left_over = false;
    for list in queues.values_mut() {
        let mut full = false;
        list.retain(|w| {
            let Some(stream) = w.stream.upgrade() else {
                return false;
            };
            if full && now_ms < w.until_ms {
                return true;
            }
            if budget == 0 {
                left_over = true;
                return true;
            }
            budget -= 1;
            let mut still = false;
            let driven = drive(w.context_id, || still = stream.borrow_mut().retry());
            full |= still;
            driven && still
        });
    }
    queues.retain(|_, list| !list.is_empty());
    // Streams listed while waking (none in practice) queue behind the ones already waiting.
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        for (name, added) in std::mem::take(&mut *q) {
            queues.entry(name).or_default().extend(added);
        }
        *q = queues;
    });
    let _ = hostcalls::set_effective_context(root_id);
    left_over
}
