//! Private, seeded libtorch generators: the CPU (mt19937) and CUDA (Philox) engines behind
//! `torch.Generator(device).manual_seed(seed)`, reached through `csrc/rng_shim.cpp` because tch
//! only exposes the process-wide default generators.
//!
//! Draws call libtorch's own `at::randn(size, generator, options)`, so they are the numbers
//! PyTorch produces for the same seed, shape and draw order: bit-exact by construction on CPU
//! (including the scalar path below 16 elements and the vectorised Box-Muller path above), and
//! the same Philox stream as PyTorch on a CUDA device.

use std::ffi::{c_char, c_void, CStr};

use tch::{Device, Tensor};

use crate::error::{Error, Result};

// Declarations of `csrc/rng_shim.cpp`. Pointers returned by these functions are owned: a
// generator is released with `diffusiond_rng_generator_free`, a tensor is an `at::Tensor*` that
// tch's `Tensor` takes over, an error string goes back through `diffusiond_rng_error_free`.
extern "C" {
    fn diffusiond_rng_generator_new(
        device_type: i32,
        device_index: i32,
        seed: u64,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn diffusiond_rng_generator_free(generator: *mut c_void);
    fn diffusiond_rng_randn(
        generator: *mut c_void,
        shape: *const i64,
        ndim: usize,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn diffusiond_rng_error_free(error: *mut c_char);
}

const DEVICE_CPU: i32 = 0;
const DEVICE_CUDA: i32 = 1;

/// Turns the shim's (pointer, error) pair into a result, releasing the error string.
#[allow(unsafe_code)]
fn check(ptr: *mut c_void, error: *mut c_char, what: &str) -> Result<*mut c_void> {
    if !ptr.is_null() {
        return Ok(ptr);
    }
    let message = if error.is_null() {
        "no error message".to_owned()
    } else {
        // SAFETY: a non-null error is a NUL-terminated string from malloc in the shim, read once
        // and then released by the shim's matching free.
        unsafe {
            let text = CStr::from_ptr(error).to_string_lossy().into_owned();
            diffusiond_rng_error_free(error);
            text
        }
    };
    Err(Error::Rng(format!("{what}: {message}")))
}

/// An owned libtorch generator, seeded like `torch.Generator(device).manual_seed(seed)`.
///
/// Never the default generator: `tch::manual_seed` and other users of the global generators do
/// not disturb it, and it does not disturb them.
pub struct Generator {
    /// An `at::Generator*` owned by this value.
    ptr: *mut c_void,
    device: Device,
    seed: u64,
}

// SAFETY: `at::Generator` is a reference-counted handle to a generator implementation that
// libtorch's sampling kernels lock while they use it; this value is its only handle, so moving it
// to another thread is sound. It stays !Sync (draws take `&mut self`).
#[allow(unsafe_code)]
unsafe impl Send for Generator {}

impl Generator {
    /// PyTorch's CPU generator (mt19937). As in PyTorch, only the low 32 bits of `seed` reach the
    /// engine, so `seed` and `seed + 2^32` give the same numbers.
    pub fn cpu(seed: u64) -> Result<Self> {
        Self::new(Device::Cpu, seed)
    }

    /// PyTorch's CUDA generator (Philox, cuRAND's algorithm) for the CUDA device `index`, with
    /// offset 0; all 64 bits of `seed` are used. Fails when libtorch has no usable CUDA device.
    pub fn cuda(index: usize, seed: u64) -> Result<Self> {
        Self::new(Device::Cuda(index), seed)
    }

    /// A generator for `device` (CPU or CUDA).
    pub fn new(device: Device, seed: u64) -> Result<Self> {
        let (device_type, device_index) = match device {
            Device::Cpu => (DEVICE_CPU, -1),
            Device::Cuda(index) => (DEVICE_CUDA, index as i32),
            other => return Err(Error::Rng(format!("no seeded generator for device {other:?}"))),
        };
        let mut error = std::ptr::null_mut();
        #[allow(unsafe_code)]
        // SAFETY: plain values in, an owned pointer or an owned error string out.
        let ptr = unsafe { diffusiond_rng_generator_new(device_type, device_index, seed, &mut error) };
        let ptr = check(ptr, error, "creating a seeded generator")?;
        Ok(Generator { ptr, device, seed })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next `torch.randn(shape, generator=self)`: float32 on the generator's device.
    pub fn randn(&mut self, shape: &[i64]) -> Result<Tensor> {
        let mut error = std::ptr::null_mut();
        #[allow(unsafe_code)]
        // SAFETY: `self.ptr` is a live `at::Generator*`; `shape` outlives the call.
        let ptr = unsafe { diffusiond_rng_randn(self.ptr, shape.as_ptr(), shape.len(), &mut error) };
        let ptr = check(ptr, error, "drawing normal noise")?;
        #[allow(unsafe_code)]
        // SAFETY: the shim returns a heap `at::Tensor*` (torch-sys' `C_tensor`) that nothing else
        // owns; tch's `Tensor` frees it on drop.
        let tensor = unsafe { Tensor::from_ptr(ptr.cast::<torch_sys::C_tensor>()) };
        Ok(tensor)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: `self.ptr` came from `diffusiond_rng_generator_new` and is released only here.
        unsafe {
            diffusiond_rng_generator_free(self.ptr)
        };
    }
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").field("device", &self.device).field("seed", &self.seed).finish()
    }
}
