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
    match s {
        "auto" => Some(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Some(Device::Cpu),
        "cuda" => Some(Device::Cuda(0)),
        _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Device::Cuda),
    }
}
