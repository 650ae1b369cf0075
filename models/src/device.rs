//! Device and compute-dtype policy: fp32 on CPU; fp16 (or bf16 on request) on CUDA.

use tch::{Device, Kind};

/// Where a model runs and in which floating-point type it computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    pub device: Device,
    pub kind: Kind,
}

impl Placement {
    pub fn cpu() -> Self {
        Placement { device: Device::Cpu, kind: Kind::Float }
    }

    /// The default compute type for a device: fp32 on CPU, fp16 on CUDA (bf16 when `prefer_bf16`).
    pub fn for_device(device: Device, prefer_bf16: bool) -> Self {
        let kind = match device {
            Device::Cuda(_) if prefer_bf16 => Kind::BFloat16,
            Device::Cuda(_) => Kind::Half,
            _ => Kind::Float,
        };
        Placement { device, kind }
    }
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Option<Device> {
    if s != "cpu" {
        load_cuda_backend();
    }
    match s {
        "auto" => Some(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Some(Device::Cpu),
        "cuda" => Some(Device::Cuda(0)),
        _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Device::Cuda),
    }
}

/// The memory of one CUDA device, in bytes: what `torch.cuda.mem_get_info()` and
/// `torch.cuda.memory_stats()` report, and what A1111's `/sdapi/v1/memory` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CudaMemory {
    /// Free and total device memory, as the driver sees it (every process included).
    pub free: i64,
    pub total: i64,
    /// The caching allocator's pools, each as (current, peak): memory in live tensors (`active`,
    /// `allocated`), held from the driver (`reserved`), and free fragments of split blocks
    /// (`inactive`).
    pub active: (i64, i64),
    pub allocated: (i64, i64),
    pub reserved: (i64, i64),
    pub inactive: (i64, i64),
    /// Allocations that succeeded only after the cache was flushed, and those that failed.
    pub retries: i64,
    pub ooms: i64,
}

/// Values `diffusiond_cuda_memory` writes (csrc/rng_shim.cpp).
const CUDA_MEMORY_FIELDS: usize = 12;

extern "C" {
    fn diffusiond_pin_memory(
        tensor: *const std::ffi::c_void,
        error: *mut *mut std::os::raw::c_char,
    ) -> *mut std::ffi::c_void;
    fn diffusiond_is_pinned(tensor: *const std::ffi::c_void, error: *mut *mut std::os::raw::c_char) -> i32;
    fn diffusiond_load_cuda_backend() -> i32;
    fn diffusiond_cuda_memory(device_index: i32, out: *mut i64, error: *mut *mut std::os::raw::c_char)
        -> i32;
    fn diffusiond_rng_error_free(error: *mut std::os::raw::c_char);
}

/// Takes the error string a shim call handed back, if any.
#[allow(unsafe_code)]
fn take_error(error: *mut std::os::raw::c_char) -> String {
    if error.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a non-null error is a NUL-terminated string allocated by the shim, released here.
    unsafe {
        let message = std::ffi::CStr::from_ptr(error).to_string_lossy().into_owned();
        diffusiond_rng_error_free(error);
        message
    }
}

/// A copy of `t` in page-locked host memory, from which copies to a GPU can run asynchronously.
#[allow(unsafe_code)]
pub fn pin_memory(t: &tch::Tensor) -> crate::Result<tch::Tensor> {
    let mut error = std::ptr::null_mut();
    // SAFETY: `as_ptr` is a live `at::Tensor*` for the duration of the call; the shim catches
    // every C++ exception and returns an owned `at::Tensor*` or null.
    let ptr = unsafe { diffusiond_pin_memory(t.as_ptr().cast(), &mut error) };
    if ptr.is_null() {
        return Err(tch::TchError::Torch(take_error(error)).into());
    }
    // SAFETY: the shim returned a new, owned `at::Tensor*`, which tch takes over.
    Ok(unsafe { tch::Tensor::from_ptr(ptr.cast()) })
}

/// Whether `t` lives in page-locked host memory.
#[allow(unsafe_code)]
pub fn is_pinned(t: &tch::Tensor) -> bool {
    let mut error = std::ptr::null_mut();
    // SAFETY: as in `pin_memory`.
    let answer = unsafe { diffusiond_is_pinned(t.as_ptr().cast(), &mut error) };
    if answer < 0 {
        tracing::debug!(cause = %take_error(error), "is_pinned failed");
    }
    answer == 1
}

/// Makes libtorch's CUDA backend available to this process (see `csrc/rng_shim.cpp`: the linker
/// drops the library nothing refers to). Call before asking `tch::Cuda` anything; cheap after the
/// first call. Returns whether this libtorch has a CUDA backend (not whether a GPU is present).
#[allow(unsafe_code)]
pub fn load_cuda_backend() -> bool {
    // SAFETY: no arguments; the shim only calls dlopen/dladdr and catches nothing that can throw.
    unsafe { diffusiond_load_cuda_backend() == 1 }
}

/// Memory statistics of `device`; `None` on a device that is not CUDA, or when CUDA is not usable
/// in this process (no GPU, or nothing allocated on it yet).
#[allow(unsafe_code)]
pub fn cuda_memory(device: Device) -> Option<CudaMemory> {
    let Device::Cuda(index) = device else { return None };
    if !load_cuda_backend() || !tch::Cuda::is_available() {
        return None;
    }
    let mut out = [0i64; CUDA_MEMORY_FIELDS];
    let mut error = std::ptr::null_mut();
    // SAFETY: `out` has room for every value the shim writes; the shim catches every C++
    // exception and hands back an error string that is released below.
    let rc = unsafe { diffusiond_cuda_memory(index as i32, out.as_mut_ptr(), &mut error) };
    if rc != 0 {
        tracing::debug!(cause = %take_error(error), "no CUDA memory statistics");
        return None;
    }
    Some(CudaMemory {
        free: out[0],
        total: out[1],
        active: (out[2], out[3]),
        allocated: (out[4], out[5]),
        reserved: (out[6], out[7]),
        inactive: (out[8], out[9]),
        retries: out[10],
        ooms: out[11],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_memory_is_none_off_cuda() {
        assert_eq!(cuda_memory(Device::Cpu), None);
        if !tch::Cuda::is_available() {
            assert_eq!(cuda_memory(Device::Cuda(0)), None, "no CUDA device here");
        }
    }
}
