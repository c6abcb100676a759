//! The proxy-wasm ABI 0.2.1 host functions: everything the proxy-wasm Rust SDK 0.2.5 imports
//! from module `env`.
//!
//! Conventions, all following Envoy:
//! * every function returns a `Status` code; wasm32 `usize` is a `u32`;
//! * guest pointers are untrusted: out-of-bounds ones yield `InvalidMemoryAccess`;
//! * data returned to the guest lives in memory the guest allocates (see [`crate::memory`]);
//! * only a trap inside the guest's own allocator propagates as a trap.
//!
//! Where the SDK 0.2.5 panics on statuses it does not expect (it treats `Unimplemented` as a
//! bug), unsupported features answer with the statuses the SDK maps to an `Err` instead:
//! gRPC calls → `InternalFailure`, foreign functions and gRPC stream operations → `NotFound`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use wasmtime::{Caller, Linker};

use crate::context::{HostState, LocalReply, PendingCall};
use crate::headers::Headers;
use crate::memory::{self, read, read_string, return_bytes, write_u32, write_u64};
use crate::metrics::MetricKind;

/// proxy-wasm status codes (`WasmResult` in the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// The call succeeded.
    Ok = 0,
    /// No such header, property, buffer, queue or shared-data key.
    NotFound = 1,
    /// An argument is out of range (an unknown map or buffer kind, a bad metric id).
    BadArgument = 2,
    /// A header map the guest passed is not in the ABI's wire encoding.
    SerializationFailure = 3,
    /// Something the guest passed could not be parsed.
    ParseFailure = 4,
    /// A pointer or length the guest passed lies outside its memory.
    InvalidMemoryAccess = 6,
    /// A shared queue has nothing to dequeue.
    Empty = 7,
    /// A shared-data compare-and-swap lost: the value's CAS token changed.
    CasMismatch = 8,
    /// The host failed for a reason of its own (e.g. gRPC calls, which are not supported).
    InternalFailure = 10,
    /// The ABI function exists but this host does not implement it.
    Unimplemented = 12,
}

/// A filter callback's verdict (`FilterHeadersStatus` / `FilterDataStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Pass the headers/data on.
    Continue,
    /// Stop iteration: headers are held; body data is buffered (StopIterationAndBuffer).
    Pause,
}

impl Action {
    /// Anything but 0 stops iteration, as in Envoy.
    pub fn from_abi(v: u32) -> Self {
        if v == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

type HostResult = wasmtime::Result<u32>;

/// Unwrap a `Result<_, Status>`, returning the status to the guest on error.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return Ok(status as u32),
        }
    };
}

const OK: HostResult = Ok(Status::Ok as u32);

/// Every import this host implements, so unknown `proxy_*` imports of other SDKs can be
/// answered with `Unimplemented` instead of failing instantiation.
pub const IMPLEMENTED: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_add_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_grpc_call",
    "proxy_grpc_stream",
    "proxy_grpc_send",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_set_effective_context",
    "proxy_call_foreign_function",
    "proxy_done",
    "proxy_define_metric",
    "proxy_get_metric",
    "proxy_record_metric",
    "proxy_increment_metric",
];

/// Register every host function in module `env`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_log", proxy_log)?;
    linker.func_wrap("env", "proxy_get_log_level", proxy_get_log_level)?;
    linker.func_wrap("env", "proxy_get_current_time_nanoseconds", get_time)?;
    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", set_tick)?;
    linker.func_wrap("env", "proxy_get_buffer_bytes", get_buffer_bytes)?;
    linker.func_wrap("env", "proxy_set_buffer_bytes", set_buffer_bytes)?;
    linker.func_wrap("env", "proxy_get_header_map_pairs", get_map_pairs)?;
    linker.func_wrap("env", "proxy_set_header_map_pairs", set_map_pairs)?;
    linker.func_wrap("env", "proxy_get_header_map_value", get_map_value)?;
    linker.func_wrap("env", "proxy_replace_header_map_value", replace_map_value)?;
    linker.func_wrap("env", "proxy_add_header_map_value", add_map_value)?;
    linker.func_wrap("env", "proxy_remove_header_map_value", remove_map_value)?;
    linker.func_wrap("env", "proxy_get_property", get_property)?;
    linker.func_wrap("env", "proxy_set_property", set_property)?;
    linker.func_wrap("env", "proxy_get_shared_data", get_shared_data)?;
    linker.func_wrap("env", "proxy_set_shared_data", set_shared_data)?;
    linker.func_wrap("env", "proxy_register_shared_queue", register_queue)?;
    linker.func_wrap("env", "proxy_resolve_shared_queue", resolve_queue)?;
    linker.func_wrap("env", "proxy_dequeue_shared_queue", dequeue)?;
    linker.func_wrap("env", "proxy_enqueue_shared_queue", enqueue)?;
    linker.func_wrap("env", "proxy_continue_stream", continue_stream)?;
    linker.func_wrap("env", "proxy_close_stream", close_stream)?;
    linker.func_wrap("env", "proxy_send_local_response", send_local_response)?;
    linker.func_wrap("env", "proxy_http_call", http_call)?;
    linker.func_wrap("env", "proxy_grpc_call", grpc_call)?;
    linker.func_wrap("env", "proxy_grpc_stream", grpc_stream)?;
    linker.func_wrap("env", "proxy_grpc_send", grpc_send)?;
    linker.func_wrap("env", "proxy_grpc_cancel", grpc_token_op)?;
    linker.func_wrap("env", "proxy_grpc_close", grpc_token_op)?;
    linker.func_wrap("env", "proxy_get_status", get_status)?;
    linker.func_wrap("env", "proxy_set_effective_context", set_effective_context)?;
    linker.func_wrap("env", "proxy_call_foreign_function", call_foreign_function)?;
    linker.func_wrap("env", "proxy_done", proxy_done)?;
    linker.func_wrap("env", "proxy_define_metric", define_metric)?;
    linker.func_wrap("env", "proxy_get_metric", get_metric)?;
    linker.func_wrap("env", "proxy_record_metric", record_metric)?;
    linker.func_wrap("env", "proxy_increment_metric", increment_metric)?;
    Ok(())
}

type C<'a> = Caller<'a, HostState>;

// ---------------------------------------------------------------------------------------
// Logging, time, ticks

fn proxy_log(c: C<'_>, level: u32, ptr: u32, len: u32) -> HostResult {
    let msg = tri!(read(&c, ptr, len));
    let msg = String::from_utf8_lossy(&msg);
    let ctx = c.data().effective;
    match level {
        0 => tracing::trace!(target: "wasm", context = ctx, "{msg}"),
        1 => tracing::debug!(target: "wasm", context = ctx, "{msg}"),
        2 => tracing::info!(target: "wasm", context = ctx, "{msg}"),
        3 => tracing::warn!(target: "wasm", context = ctx, "{msg}"),
        4 | 5 => tracing::error!(target: "wasm", context = ctx, "{msg}"),
        _ => return Ok(Status::BadArgument as u32),
    }
    OK
}

fn proxy_get_log_level(mut c: C<'_>, ret: u32) -> HostResult {
    let level = c.data().world.config.wasm_log_level as u32;
    tri!(write_u32(&mut c, ret, level));
    OK
}

fn get_time(mut c: C<'_>, ret: u32) -> HostResult {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    tri!(write_u64(&mut c, ret, nanos));
    OK
}

fn set_tick(mut c: C<'_>, period_ms: u32) -> HostResult {
    c.data_mut().tick_period = (period_ms > 0).then(|| Duration::from_millis(period_ms.into()));
    OK
}

// ---------------------------------------------------------------------------------------
// Buffers

fn buffer(state: &mut HostState, kind: u32) -> Result<&mut Vec<u8>, Status> {
    match kind {
        0 => Ok(&mut state
            .effective_stream()
            .ok_or(Status::NotFound)?
            .request_body),
        1 => Ok(&mut state
            .effective_stream()
            .ok_or(Status::NotFound)?
            .response_body),
        _ => Err(Status::NotFound),
    }
}

fn get_buffer_bytes(
    mut c: C<'_>,
    kind: u32,
    start: u32,
    max: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> HostResult {
    let data: Vec<u8> = {
        let state = c.data_mut();
        let whole: &[u8] = match kind {
            0 | 1 => tri!(buffer(state, kind)),
            4 => match &state.call_response {
                Some(r) => &r.body,
                None => return Ok(Status::NotFound as u32),
            },
            6 => &state.world.config.vm_config,
            7 => &state.world.config.plugin_config,
            _ => return Ok(Status::NotFound as u32),
        };
        let start = (start as usize).min(whole.len());
        let end = start.saturating_add(max as usize).min(whole.len());
        whole[start..end].to_vec()
    };
    tri!(return_bytes(&mut c, &data, ret_ptr, ret_len, false)?);
    OK
}

/// Replace `size` bytes at `start` with the given data. This covers Envoy's three cases
/// (prepend: start 0 size 0; replace all: start 0 size >= len; append: start >= len) and
/// also general splices.
fn set_buffer_bytes(
    mut c: C<'_>,
    kind: u32,
    start: u32,
    size: u32,
    ptr: u32,
    len: u32,
) -> HostResult {
    let data = tri!(read(&c, ptr, len));
    let buf = tri!(buffer(c.data_mut(), kind));
    let start = (start as usize).min(buf.len());
    let end = start.saturating_add(size as usize).min(buf.len());
    buf.splice(start..end, data);
    OK
}

// ---------------------------------------------------------------------------------------
// Header maps

fn map(state: &mut HostState, kind: u32) -> Result<&mut Headers, Status> {
    if kind == 6 || kind == 7 {
        let r = state.call_response.as_mut().ok_or(Status::NotFound)?;
        return Ok(if kind == 6 {
            &mut r.headers
        } else {
            &mut r.trailers
        });
    }
    let s = state.effective_stream().ok_or(Status::NotFound)?;
    match kind {
        0 => Ok(&mut s.request_headers),
        1 => Ok(&mut s.request_trailers),
        2 => Ok(&mut s.response_headers),
        3 => Ok(&mut s.response_trailers),
        _ => Err(Status::NotFound),
    }
}

fn get_map_pairs(mut c: C<'_>, kind: u32, ret_ptr: u32, ret_len: u32) -> HostResult {
    // A map that does not exist right now reads as empty (the SDK panics on NotFound here).
    let bytes = map(c.data_mut(), kind)
        .map(|m| m.serialize())
        .unwrap_or_else(|_| Headers::new().serialize());
    tri!(return_bytes(&mut c, &bytes, ret_ptr, ret_len, false)?);
    OK
}

fn set_map_pairs(mut c: C<'_>, kind: u32, ptr: u32, len: u32) -> HostResult {
    let bytes = tri!(read(&c, ptr, len));
    let headers = tri!(Headers::deserialize(&bytes));
    *tri!(map(c.data_mut(), kind)) = headers;
    OK
}

fn get_map_value(
    mut c: C<'_>,
    kind: u32,
    kptr: u32,
    klen: u32,
    ret_ptr: u32,
    ret_len: u32,
) -> HostResult {
    let key = tri!(read(&c, kptr, klen));
    let value = tri!(map(c.data_mut(), kind)).get(&key).map(<[u8]>::to_vec);
    let value = tri!(value.ok_or(Status::NotFound));
    tri!(return_bytes(&mut c, &value, ret_ptr, ret_len, true)?);
    OK
}

fn replace_map_value(
    mut c: C<'_>,
    kind: u32,
    kptr: u32,
    klen: u32,
    vptr: u32,
    vlen: u32,
) -> HostResult {
    let key = tri!(read(&c, kptr, klen));
    let value = tri!(read(&c, vptr, vlen));
    tri!(map(c.data_mut(), kind)).replace(&key, &value);
    OK
}

fn add_map_value(
    mut c: C<'_>,
    kind: u32,
    kptr: u32,
    klen: u32,
    vptr: u32,
    vlen: u32,
) -> HostResult {
    let key = tri!(read(&c, kptr, klen));
    let value = tri!(read(&c, vptr, vlen));
    tri!(map(c.data_mut(), kind)).add(&key, &value);
    OK
}

fn remove_map_value(mut c: C<'_>, kind: u32, kptr: u32, klen: u32) -> HostResult {
    let key = tri!(read(&c, kptr, klen));
    tri!(map(c.data_mut(), kind)).remove(&key);
    OK
}

// ---------------------------------------------------------------------------------------
// Properties

fn get_property(mut c: C<'_>, ptr: u32, len: u32, ret_ptr: u32, ret_len: u32) -> HostResult {
    let path = tri!(read(&c, ptr, len));
    let value = tri!(lookup_property(c.data_mut(), &path).ok_or(Status::NotFound));
    tri!(return_bytes(&mut c, &value, ret_ptr, ret_len, true)?);
    OK
}

fn set_property(mut c: C<'_>, ptr: u32, len: u32, vptr: u32, vlen: u32) -> HostResult {
    let path = tri!(read(&c, ptr, len));
    let value = tri!(read(&c, vptr, vlen));
    let path = normalize_path(&path);
    let state = c.data_mut();
    let effective = state.effective;
    match state.streams.get_mut(&effective) {
        Some(s) => s.properties.insert(path, value),
        None => state.root_properties.insert(path, value),
    };
    OK
}

/// Property paths are NUL-separated segments; the SDK adds a trailing NUL.
fn normalize_path(path: &[u8]) -> Vec<u8> {
    let mut p = path.to_vec();
    while p.last() == Some(&0) {
        p.pop();
    }
    p
}

fn lookup_property(state: &mut HostState, raw: &[u8]) -> Option<Vec<u8>> {
    let path = normalize_path(raw);
    let effective = state.effective;
    if let Some(v) = state
        .streams
        .get(&effective)
        .and_then(|s| s.properties.get(&path))
        .or_else(|| state.root_properties.get(&path))
    {
        return Some(v.clone());
    }
    let segments: Vec<&[u8]> = path.split(|b| *b == 0).collect();
    let config = &state.world.config;
    let text = |s: &str| Some(s.as_bytes().to_vec());
    let int = |n: u64| Some(n.to_le_bytes().to_vec());
    match segments.as_slice() {
        [b"plugin_name"] => return text(&config.plugin_name),
        [b"plugin_root_id"] => return text(&config.root_id),
        [b"plugin_vm_id"] => return text(&config.vm_id),
        _ => {}
    }
    let s = state.streams.get(&effective)?;
    let header = |name: &str| s.request_headers.get(name.as_bytes()).map(<[u8]>::to_vec);
    match segments.as_slice() {
        [b"request", b"path"] => header(":path"),
        [b"request", b"url_path"] => header(":path").map(|p| {
            let end = p.iter().position(|b| *b == b'?').unwrap_or(p.len());
            p[..end].to_vec()
        }),
        [b"request", b"host"] => header(":authority"),
        [b"request", b"method"] => header(":method"),
        [b"request", b"scheme"] => header(":scheme"),
        [b"request", b"id"] => header("x-request-id"),
        [b"request", b"protocol"] => text(s.info.protocol),
        [b"request", b"time"] => int(s
            .info
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)),
        [b"source", b"address"] => text(&s.info.downstream.to_string()),
        [b"source", b"port"] => int(s.info.downstream.port().into()),
        [b"destination", b"address"] => text(&s.info.local.to_string()),
        [b"destination", b"port"] => int(s.info.local.port().into()),
        [b"response", b"code"] => s
            .response_headers
            .get_str(":status")
            .and_then(|v| v.parse::<u64>().ok())
            .and_then(int),
        [b"response", b"flags"] => int(s.response_flags),
        [b"cluster_name"] | [b"xds", b"cluster_name"] => s.cluster.as_deref().and_then(text),
        [b"upstream", b"address"] => s
            .cluster
            .as_deref()
            .and_then(|name| state.world.clusters.get(name))
            .and_then(|c| text(&c.authority)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Shared data and queues

fn get_shared_data(
    mut c: C<'_>,
    kptr: u32,
    klen: u32,
    ret_ptr: u32,
    ret_len: u32,
    ret_cas: u32,
) -> HostResult {
    let key = tri!(read(&c, kptr, klen));
    let (value, cas) = tri!(c.data().world.shared_data.get(&key).ok_or(Status::NotFound));
    tri!(write_u32(&mut c, ret_cas, cas));
    tri!(return_bytes(&mut c, &value, ret_ptr, ret_len, false)?);
    OK
}

fn set_shared_data(c: C<'_>, kptr: u32, klen: u32, vptr: u32, vlen: u32, cas: u32) -> HostResult {
    let key = tri!(read(&c, kptr, klen));
    let value = tri!(read(&c, vptr, vlen));
    tri!(c.data().world.shared_data.set(&key, value, cas));
    OK
}

fn register_queue(mut c: C<'_>, ptr: u32, len: u32, ret: u32) -> HostResult {
    let name = tri!(read_string(&c, ptr, len));
    let state = c.data();
    let id =
        state
            .world
            .queues
            .register(&state.world.config.vm_id, &name, state.queue_waker.clone());
    tri!(write_u32(&mut c, ret, id));
    OK
}

fn resolve_queue(mut c: C<'_>, vptr: u32, vlen: u32, nptr: u32, nlen: u32, ret: u32) -> HostResult {
    let vm_id = tri!(read_string(&c, vptr, vlen));
    let name = tri!(read_string(&c, nptr, nlen));
    let world = &c.data().world;
    let vm_id = if vm_id.is_empty() {
        world.config.vm_id.clone()
    } else {
        vm_id
    };
    let id = tri!(world.queues.resolve(&vm_id, &name).ok_or(Status::NotFound));
    tri!(write_u32(&mut c, ret, id));
    OK
}

fn dequeue(mut c: C<'_>, id: u32, ret_ptr: u32, ret_len: u32) -> HostResult {
    // Check the out-parameters before taking the item, so a bad pointer loses nothing.
    tri!(memory::write_u32(&mut c, ret_ptr, 0));
    tri!(memory::write_u32(&mut c, ret_len, 0));
    let item = tri!(c.data().world.queues.dequeue(id));
    tri!(return_bytes(&mut c, &item, ret_ptr, ret_len, true)?);
    OK
}

fn enqueue(c: C<'_>, id: u32, ptr: u32, len: u32) -> HostResult {
    let item = tri!(read(&c, ptr, len));
    tri!(c.data().world.queues.enqueue(id, item));
    OK
}

// ---------------------------------------------------------------------------------------
// Stream control

fn continue_stream(mut c: C<'_>, kind: u32) -> HostResult {
    let state = c.data_mut();
    let id = state.effective;
    let s = tri!(state.streams.get_mut(&id).ok_or(Status::NotFound));
    match kind {
        0 => s.control.continue_request = true,
        1 => s.control.continue_response = true,
        // Downstream/upstream (TCP) streams do not exist in an HTTP-only host.
        2 | 3 => return OK,
        _ => return Ok(Status::BadArgument as u32),
    }
    state.touched.push(id);
    OK
}

fn close_stream(mut c: C<'_>, _kind: u32) -> HostResult {
    let state = c.data_mut();
    let id = state.effective;
    let s = tri!(state.streams.get_mut(&id).ok_or(Status::NotFound));
    s.control.close = true;
    state.touched.push(id);
    OK
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    mut c: C<'_>,
    status: u32,
    dptr: u32,
    dlen: u32,
    bptr: u32,
    blen: u32,
    hptr: u32,
    hlen: u32,
    _grpc_status: i32,
) -> HostResult {
    // Envoy's response code details: nothing here reports them, but a bad pointer is still an
    // error the guest must see.
    tri!(read(&c, dptr, dlen));
    let body = tri!(read(&c, bptr, blen));
    let headers = tri!(Headers::deserialize(&tri!(read(&c, hptr, hlen))));
    let status = tri!(u16::try_from(status)
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or(Status::BadArgument));
    let state = c.data_mut();
    let id = state.effective;
    let s = tri!(state.streams.get_mut(&id).ok_or(Status::NotFound));
    s.control.local_reply = Some(LocalReply {
        status,
        headers,
        body: Bytes::from(body),
    });
    state.touched.push(id);
    OK
}

// ---------------------------------------------------------------------------------------
// HTTP and gRPC callouts

#[allow(clippy::too_many_arguments)]
fn http_call(
    mut c: C<'_>,
    uptr: u32,
    ulen: u32,
    hptr: u32,
    hlen: u32,
    bptr: u32,
    blen: u32,
    _tptr: u32,
    _tlen: u32,
    timeout_ms: u32,
    ret_token: u32,
) -> HostResult {
    let cluster = tri!(read_string(&c, uptr, ulen));
    let headers =
        tri!(Headers::deserialize(&tri!(read(&c, hptr, hlen))).map_err(|_| Status::BadArgument));
    let body = tri!(read(&c, bptr, blen));
    if c.data().world.clusters.get(&cluster).is_none() {
        tracing::warn!(cluster, "dispatch_http_call to an unknown cluster");
        return Ok(Status::BadArgument as u32);
    }
    // Envoy rejects callouts without these pseudo headers.
    if [":method", ":path", ":authority"]
        .iter()
        .any(|h| headers.get(h.as_bytes()).is_none())
    {
        return Ok(Status::BadArgument as u32);
    }
    let token = c.data().next_token;
    tri!(write_u32(&mut c, ret_token, token));
    let state = c.data_mut();
    state.next_token = state.next_token.wrapping_add(1).max(1);
    let context_id = state.effective;
    state.pending_calls.push(PendingCall {
        token,
        context_id,
        cluster,
        headers,
        body: Bytes::from(body),
        timeout: Duration::from_millis(if timeout_ms == 0 {
            5_000
        } else {
            timeout_ms.into()
        }),
    });
    OK
}

#[allow(clippy::too_many_arguments)]
fn grpc_call(
    _c: C<'_>,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
) -> HostResult {
    Ok(Status::InternalFailure as u32)
}

#[allow(clippy::too_many_arguments)]
fn grpc_stream(
    _c: C<'_>,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
    _: u32,
) -> HostResult {
    Ok(Status::InternalFailure as u32)
}

fn grpc_send(_c: C<'_>, _token: u32, _ptr: u32, _len: u32, _end: u32) -> HostResult {
    Ok(Status::NotFound as u32)
}

fn grpc_token_op(_c: C<'_>, _token: u32) -> HostResult {
    Ok(Status::NotFound as u32)
}

fn get_status(mut c: C<'_>, ret_code: u32, ret_ptr: u32, ret_len: u32) -> HostResult {
    // Only gRPC callouts carry a status; there are none, so report OK with no message.
    tri!(write_u32(&mut c, ret_code, 0));
    tri!(return_bytes(&mut c, &[], ret_ptr, ret_len, false)?);
    OK
}

// ---------------------------------------------------------------------------------------
// Contexts and misc

fn set_effective_context(mut c: C<'_>, id: u32) -> HostResult {
    let state = c.data_mut();
    if id == state.root_id || state.streams.contains_key(&id) {
        state.effective = id;
        OK
    } else {
        Ok(Status::BadArgument as u32)
    }
}

fn call_foreign_function(_c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32) -> HostResult {
    Ok(Status::NotFound as u32)
}

fn proxy_done(_c: C<'_>) -> HostResult {
    OK
}

fn define_metric(mut c: C<'_>, kind: u32, ptr: u32, len: u32, ret: u32) -> HostResult {
    let kind = tri!(MetricKind::from_abi(kind).ok_or(Status::BadArgument));
    let name = tri!(read_string(&c, ptr, len));
    let id = c.data().world.metrics.define(kind, &name);
    tri!(write_u32(&mut c, ret, id));
    OK
}

fn get_metric(mut c: C<'_>, id: u32, ret: u32) -> HostResult {
    let value = tri!(c.data().world.metrics.get(id));
    tri!(write_u64(&mut c, ret, value));
    OK
}

fn record_metric(c: C<'_>, id: u32, value: u64) -> HostResult {
    tri!(c.data().world.metrics.record(id, value));
    OK
}

fn increment_metric(c: C<'_>, id: u32, offset: i64) -> HostResult {
    tri!(c.data().world.metrics.increment(id, offset));
    OK
}
