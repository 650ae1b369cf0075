// Seeded libtorch generators for the Rust side (models/src/rng/torch_generator.rs).
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

void diffusiond_rng_error_free(char* error) {
    std::free(error);
}

}  // extern "C"
