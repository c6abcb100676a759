//! The heap one request holds while it waits for its upstream (head and body fed, the
//! attempt sent): at thousands of connections an edge holds that many at once, and a wasm
//! guest's memory never shrinks from its peak.
//!
//! `cargo run --release -p switchyard-core --example inflight_memory [fast|relayed|translated]`
//! prints the exchange's inline size, the heap bytes still allocated per exchange after 1,000
//! of them were fed and kept, and the allocations made per exchange on the way. For where
//! those bytes come from: `valgrind --tool=dhat` on the same binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

#[allow(dead_code)] // shared with the benches; this example uses the gateway and the request
#[path = "../benches/common/mod.rs"]
mod common;

use common::{ctx, gateway, routed_gateway, sent, REQUEST};
use switchyard_core::exchange::Exchange;

/// The system allocator, counting the bytes live and the allocations made.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `GlobalAlloc::alloc`, passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` through `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn main() {
    let kind = std::env::args().nth(1).unwrap_or_else(|| "fast".into());
    let gw = if kind == "relayed" {
        routed_gateway()
    } else {
        gateway()
    };
    let model = if kind == "translated" {
        "translated"
    } else {
        "fast"
    };
    let body = REQUEST.replace("MODEL", model);
    let cx = ctx();
    let n = 1000;
    let mut waiting = Vec::with_capacity(n);
    let (bytes_before, allocations_before) = (
        LIVE_BYTES.load(Ordering::Relaxed),
        ALLOCATIONS.load(Ordering::Relaxed),
    );
    for _ in 0..n {
        waiting.push(sent(&gw, body.as_bytes(), &cx));
    }
    let bytes = (LIVE_BYTES.load(Ordering::Relaxed) - bytes_before) as usize / n;
    let allocations = (ALLOCATIONS.load(Ordering::Relaxed) - allocations_before) / n;
    println!(
        "{kind}: exchange {} B inline, {bytes} B of heap held per request waiting, \
         {allocations} allocations per request so far ({} B request body)",
        std::mem::size_of::<Exchange>(),
        body.len()
    );
}
