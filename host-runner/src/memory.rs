//! Bounds-checked access to guest linear memory, and returning host data to the guest.
//!
//! Every pointer the guest hands us is untrusted: a bad one must turn into an
//! `InvalidMemoryAccess` status for that call, never a host crash and never a trap. Data
//! returned to the guest is placed in memory the guest allocates itself (through `malloc` or
//! `proxy_on_memory_allocate`), because the guest SDK frees it with its own allocator.

use wasmtime::{AsContext, AsContextMut, Caller, Memory, TypedFunc};

use crate::abi::Status;
use crate::context::HostState;

/// The guest exports the host needs for memory traffic.
#[derive(Clone)]
pub struct GuestMemory {
    /// The guest's linear memory (export `memory`).
    pub memory: Memory,
    /// The guest allocator: `proxy_on_memory_allocate(size) -> ptr`, or `malloc`.
    pub alloc: TypedFunc<u32, u32>,
}

fn memory(caller: &Caller<'_, HostState>) -> Result<Memory, Status> {
    caller
        .data()
        .guest
        .as_ref()
        .map(|g| g.memory)
        .ok_or(Status::InternalFailure)
}

/// Copy `len` bytes at `ptr` out of guest memory.
pub fn read(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> Result<Vec<u8>, Status> {
    let mem = memory(caller)?;
    let data = mem.data(caller.as_context());
    let start = ptr as usize;
    let end = start
        .checked_add(len as usize)
        .ok_or(Status::InvalidMemoryAccess)?;
    data.get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

/// Read a UTF-8 string (names, keys, cluster names). Invalid UTF-8 is a bad argument.
pub fn read_string(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> Result<String, Status> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| Status::BadArgument)
}

/// Write `bytes` at `ptr` in guest memory.
pub fn write(caller: &mut Caller<'_, HostState>, ptr: u32, bytes: &[u8]) -> Result<(), Status> {
    let mem = memory(caller)?;
    let data = mem.data_mut(caller.as_context_mut());
    let start = ptr as usize;
    let end = start
        .checked_add(bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?;
    data.get_mut(start..end)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

/// Write a little-endian u32 (wasm32 `usize` and `u32` out-parameters).
pub fn write_u32(caller: &mut Caller<'_, HostState>, ptr: u32, value: u32) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Write a little-endian u64 out-parameter.
pub fn write_u64(caller: &mut Caller<'_, HostState>, ptr: u32, value: u64) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Check that `len` bytes at `ptr` are inside guest memory without touching them.
fn check(caller: &Caller<'_, HostState>, ptr: u32, len: usize) -> Result<(), Status> {
    let mem = memory(caller)?;
    let size = mem.data_size(caller.as_context());
    match (ptr as usize).checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Status::InvalidMemoryAccess),
    }
}

/// Return `data` to the guest: allocate exactly `data.len()` bytes with the guest allocator
/// (the Rust SDK rebuilds a `Vec` with capacity == size from it), copy the data in, and store
/// the pointer and size at `ret_ptr` / `ret_len`. Empty data is returned as a null pointer
/// and size 0, which the SDK reads as "no value" — unless `empty_is_value` (an empty header
/// value is still a value), in which case a zero-sized allocation is made.
///
/// The outer `Result` is a trap inside the guest allocator (fatal for the call); the inner one
/// is a status for the guest.
pub fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    data: &[u8],
    ret_ptr: u32,
    ret_len: u32,
    empty_is_value: bool,
) -> wasmtime::Result<Result<(), Status>> {
    // Validate the out-parameters first, so a bad pointer does not leak a guest allocation.
    if let Err(s) = check(caller, ret_ptr, 4).and_then(|_| check(caller, ret_len, 4)) {
        return Ok(Err(s));
    }
    if data.is_empty() && !empty_is_value {
        return Ok(write_u32(caller, ret_ptr, 0).and_then(|_| write_u32(caller, ret_len, 0)));
    }
    let Ok(len) = u32::try_from(data.len()) else {
        return Ok(Err(Status::BadArgument));
    };
    let Some(alloc) = caller.data().guest.as_ref().map(|g| g.alloc.clone()) else {
        return Ok(Err(Status::InternalFailure));
    };
    let ptr = alloc.call(&mut *caller, len)?;
    if ptr == 0 && len > 0 {
        return Ok(Err(Status::InternalFailure));
    }
    Ok(write(caller, ptr, data)
        .and_then(|_| write_u32(caller, ret_ptr, ptr))
        .and_then(|_| write_u32(caller, ret_len, len)))
}
