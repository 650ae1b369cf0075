// Seeded libtorch generators for the Rust side (models/src/rng/torch_generator.rs), and the CUDA
// caching allocator's statistics (models/src/device.rs), which tch does not expose either.
//
// tch only exposes libtorch's global generators, but A1111 draws each image's noise from its own
// `torch.Generator(device).manual_seed(seed)`. This file creates such private generators and draws
// `at::randn` from them, so the numbers are produced by the very kernels PyTorch uses.
//
// Every function is extern "C" and never lets a C++ exception cross into Rust: failures return
// null and hand back a heap string that the caller releases with diffusiond_rng_error_free.

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/ops/randn.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>

namespace {

char* copy_message(const char* text) {
    const std::size_t len = std::strlen(text);
    char* out = static_cast<char*>(std::malloc(len + 1));
    if (out != nullptr) {
        std::memcpy(out, text, len + 1);
    }
    return out;
}

template <typename F>
void* guarded(char** error, F&& body) {
    *error = nullptr;
    try {
        return body();
    } catch (const std::exception& e) {
        *error = copy_message(e.what());
    } catch (...) {
        *error = copy_message("unknown C++ exception");
    }
    return nullptr;
}

}  // namespace

extern "C" {

// device_type: 0 = CPU, 1 = CUDA. Returns an owned `at::Generator*` seeded like
// `torch.Generator(device).manual_seed(seed)`; never the process-wide default generator.
void* diffusiond_rng_generator_new(int32_t device_type, int32_t device_index, uint64_t seed,
                                   char** error) {
    return guarded(error, [&]() -> void* {
        at::Generator gen;
        if (device_type == 0) {
            gen = at::detail::createCPUGenerator(seed);
        } else if (device_type == 1) {
            const auto& hooks = at::detail::getCUDAHooks();
            if (!hooks.hasCUDA()) {
                throw std::runtime_error("CUDA is not available to libtorch in this process");
            }
            gen = hooks.getNewGenerator(static_cast<c10::DeviceIndex>(device_index));
        } else {
            throw std::runtime_error("unknown generator device type " + std::to_string(device_type));
        }
        // manual_seed also clears cached normal samples (CPU) and the Philox offset (CUDA).
        {
            std::lock_guard<std::mutex> lock(gen.mutex());
            gen.set_current_seed(seed);
        }
        return new at::Generator(std::move(gen));
    });
}

void diffusiond_rng_generator_free(void* gen) {
    delete static_cast<at::Generator*>(gen);
}

// `torch.randn(shape, generator=gen, device=gen's device)` in float32. Returns an owned
// `at::Tensor*`, which is what tch's `Tensor::from_ptr` takes over.
void* diffusiond_rng_randn(void* gen, const int64_t* shape, size_t ndim, char** error) {
    return guarded(error, [&]() -> void* {
        at::Generator& g = *static_cast<at::Generator*>(gen);
        const auto options = at::TensorOptions().dtype(at::kFloat).device(g.device());
        at::Tensor out = at::randn(at::IntArrayRef(shape, ndim), g, options);
        return new at::Tensor(std::move(out));
    });
}

// Loads libtorch's CUDA backend (libtorch_cuda.so, from the folder libtorch_cpu.so was loaded
// from), whose static initialisers register the CUDA kernels and hooks. Rust code never refers to
// a symbol of that library, so the linker's --as-needed drops it from the binary's dependencies
// and, without this, libtorch reports no CUDA device even on a GPU machine. Returns 1 when the
// backend is loaded, 0 when this libtorch has none (a CPU-only build).
int32_t diffusiond_load_cuda_backend() {
    static const int32_t loaded = []() -> int32_t {
        if (dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD) != nullptr) {
            return 1;
        }
        Dl_info info{};
        if (dladdr(reinterpret_cast<void*>(&at::detail::getCUDAHooks), &info) == 0 ||
            info.dli_fname == nullptr) {
            return 0;
        }
        std::string path(info.dli_fname);
        const std::size_t slash = path.rfind('/');
        path = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) +
               "libtorch_cuda.so";
        return dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) != nullptr ? 1 : 0;
    }();
    return loaded;
}

// Memory of CUDA device `device_index`, as `torch.cuda.mem_get_info` and `torch.cuda.memory_stats`
// report it, into `out` (DIFFUSIOND_CUDA_MEMORY_FIELDS int64 values): free and total device
// bytes, then current and peak bytes of the allocator's active, allocated, reserved and
// inactive-split pools (aggregated over pool kinds), then allocation retries and OOMs. Goes
// through c10's device-agnostic allocator interface, so no CUDA header is needed to build it.
// Returns 0, or -1 with `*error` set (no CUDA in this process, an allocator not yet initialised).
int32_t diffusiond_cuda_memory(int32_t device_index, int64_t* out, char** error) {
    void* ok = guarded(error, [&]() -> void* {
        if (!at::detail::getCUDAHooks().hasCUDA()) {
            throw std::runtime_error("CUDA is not available to libtorch in this process");
        }
        c10::DeviceAllocator* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
        if (!allocator->initialized()) {
            throw std::runtime_error("the CUDA caching allocator is not initialised yet");
        }
        const auto device = static_cast<c10::DeviceIndex>(device_index);
        const std::pair<size_t, size_t> info = allocator->getMemoryInfo(device);
        const c10::CachingDeviceAllocator::DeviceStats stats = allocator->getDeviceStats(device);
        // Index 0 of a StatArray is the aggregate over small and large pools ("all").
        const auto all = static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE);
        int64_t* o = out;
        *o++ = static_cast<int64_t>(info.first);
        *o++ = static_cast<int64_t>(info.second);
        for (const auto* pool : {&stats.active_bytes, &stats.allocated_bytes, &stats.reserved_bytes,
                                 &stats.inactive_split_bytes}) {
            *o++ = (*pool)[all].current;
            *o++ = (*pool)[all].peak;
        }
        *o++ = stats.num_alloc_retries;
        *o++ = stats.num_ooms;
        return out;
    });
    return ok == nullptr ? -1 : 0;
}

// `tensor.pin_memory()`: a copy in page-locked host memory. tch's binding passes the deprecated
// device argument, which makes libtorch log a warning for every tensor. Returns an owned
// `at::Tensor*` for tch's `Tensor::from_ptr`.
void* diffusiond_pin_memory(const void* tensor, char** error) {
    return guarded(error, [&]() -> void* {
        return new at::Tensor(static_cast<const at::Tensor*>(tensor)->pin_memory());
    });
}

// `tensor.is_pinned()`: 1 or 0, or -1 with `*error` set.
int32_t diffusiond_is_pinned(const void* tensor, char** error) {
    static int32_t yes = 1;
    static int32_t no = 0;
    void* answer = guarded(error, [&]() -> void* {
        return static_cast<const at::Tensor*>(tensor)->is_pinned() ? &yes : &no;
    });
    return answer == nullptr ? -1 : *static_cast<int32_t*>(answer);
}

void diffusiond_rng_error_free(char* error) {
    std::free(error);
}

}  // extern "C"
