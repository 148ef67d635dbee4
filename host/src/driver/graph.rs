//! CUDA-graph capture: whether a stream is capturing, and tying a value's
//! lifetime to the graph being captured (`cuUserObjectCreate` +
//! `cuGraphRetainUserObject`).
use cudarc::driver::{result::DriverError, sys};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// The graph `stream` is capturing into, if it is capturing.
///
/// # Safety
/// `stream` is a live stream of the context bound to this thread.
pub unsafe fn capturing_graph(stream: sys::CUstream) -> Result<Option<sys::CUgraph>, DriverError> {
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: a valid out-pointer; `cuStreamIsCapturing` exists in every
    // CUDA API level cudarc binds.
    unsafe { sys::cuStreamIsCapturing(stream, &mut status) }.result()?;
    if status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE {
        return Ok(None);
    }
    let mut id = 0u64;
    let mut graph: sys::CUgraph = std::ptr::null_mut();
    use std::ptr::null_mut as null;
    // SAFETY: valid out-pointers; the dependency and edge outputs are
    // optional (null); the signatures are the driver's (cuda.h).
    let got = unsafe {
        match capture_info() {
            Some(CaptureInfo::V3(f)) => f(stream, &mut status, &mut id, &mut graph, null(), null(), null()),
            Some(CaptureInfo::V2(f)) => f(stream, &mut status, &mut id, &mut graph, null(), null()),
            None => sys::CUresult::CUDA_ERROR_NOT_SUPPORTED,
        }
    };
    got.result()?;
    Ok((status == sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE && !graph.is_null()).then_some(graph))
}

/// `cuStreamGetCaptureInfo`, looked up in the loaded driver: `_v3` (drivers
/// of CUDA 12.3 and newer) or `_v2` (11.3 to 12.x). Not through cudarc's
/// bindings, which offer one or the other depending on the CUDA API level
/// the application picked (CUDA 13 has no `_v2`) and panic when a driver
/// lacks the symbol.
enum CaptureInfo {
    V3(unsafe extern "C" fn(sys::CUstream, *mut sys::CUstreamCaptureStatus, *mut u64, *mut sys::CUgraph, *mut *const sys::CUgraphNode, *mut *const c_void, *mut usize) -> sys::CUresult),
    V2(unsafe extern "C" fn(sys::CUstream, *mut sys::CUstreamCaptureStatus, *mut u64, *mut sys::CUgraph, *mut *const sys::CUgraphNode, *mut usize) -> sys::CUresult),
}

fn capture_info() -> Option<&'static CaptureInfo> {
    static FOUND: std::sync::OnceLock<Option<(libloading::Library, CaptureInfo)>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            // SAFETY: the driver library, already loaded by the process
            // (this only takes another reference to it).
            let lib = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"].iter().find_map(|&n| unsafe { libloading::Library::new(n) }.ok())?;
            // SAFETY: the types are these symbols' signatures in cuda.h; the
            // library stays loaded with the pointers (kept together here).
            let info = unsafe {
                match lib.get(b"cuStreamGetCaptureInfo_v3\0") {
                    Ok(f) => CaptureInfo::V3(*f),
                    Err(_) => CaptureInfo::V2(*lib.get(b"cuStreamGetCaptureInfo_v2\0").ok()?),
                }
            };
            Some((lib, info))
        })
        .as_ref()
        .map(|(_, info)| info)
}

/// Values whose graphs were destroyed, waiting to be dropped on an ordinary
/// thread: a user object's destructor runs on a driver thread, where no CUDA
/// call may be made, and dropping a value may free device memory.
static RELEASED: Mutex<Vec<Box<dyn Send>>> = Mutex::new(Vec::new());

/// Keeps `value` alive as long as `graph` (and every executable graph made
/// from it) exists; then it waits in a list that [`drop_released`] empties.
///
/// # Safety
/// `graph` is a graph being captured on a stream of the context bound to
/// this thread.
pub unsafe fn retain_in_graph<T: Send + Sync + 'static>(graph: sys::CUgraph, value: Arc<T>) -> Result<(), DriverError> {
    unsafe extern "C" fn release<T: Send + Sync + 'static>(ptr: *mut c_void) {
        // SAFETY: `ptr` came from `Arc::into_raw` below, released once (the
        // user object's only reference moved into the graph).
        let value = unsafe { Arc::from_raw(ptr as *const T) };
        RELEASED.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(value));
    }
    let ptr = Arc::into_raw(value) as *mut c_void;
    let mut object: sys::CUuserObject = std::ptr::null_mut();
    // The driver requires CU_USER_OBJECT_NO_DESTRUCTOR_SYNC (the only flag):
    // no CUDA call waits for the destructor, which runs once the graph and
    // every executable made from it are destroyed and their launches done.
    let flags = sys::CUuserObject_flags::CU_USER_OBJECT_NO_DESTRUCTOR_SYNC as u32;
    // SAFETY: valid out-pointer; the destructor makes no CUDA call.
    let created = unsafe { sys::cuUserObjectCreate(&mut object, ptr, Some(release::<T>), 1, flags) }.result();
    if let Err(e) = created {
        // SAFETY: the reference was not handed over.
        drop(unsafe { Arc::from_raw(ptr as *const T) });
        return Err(e);
    }
    let flags = sys::CUuserObjectRetain_flags::CU_GRAPH_USER_OBJECT_MOVE as u32;
    // SAFETY: `object` is live; its one reference moves into the graph.
    let retained = unsafe { sys::cuGraphRetainUserObject(graph, object, 1, flags) }.result();
    if retained.is_err() {
        // SAFETY: the reference did not move: release it (the destructor
        // then hands the value to `drop_released`).
        let _ = unsafe { sys::cuUserObjectRelease(object, 1) };
    }
    retained
}

/// Drops the values of destroyed graphs (see [`retain_in_graph`]). Call it
/// from an ordinary thread.
pub fn drop_released() {
    let released = std::mem::take(&mut *RELEASED.lock().unwrap_or_else(|p| p.into_inner()));
    drop(released);
}
