//! Which device the models run on: the CPU, or a CUDA GPU in a build with the `cuda` feature.
//!
//! A `cuda` build names the NVIDIA driver (`libcuda.so.1`) and CUDA 13's cuBLAS, cuBLASLt,
//! cuRAND and NVRTC as needed libraries (candle links its CUDA binding, `cudarc`, that way),
//! so the dynamic loader already refused to start the binary if one were missing; what can
//! still fail is opening the device, which [`open`] reports as an error.

use candle_core::Device;

/// Why the requested device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A CUDA device was asked of a binary built without the `cuda` feature.
    #[error(
        "this gpu-backend was built without the `cuda` feature; build it with scripts/cuda-build.sh"
    )]
    NotBuilt,
    /// The device did not open (no GPU, wrong ordinal, driver error).
    #[error("no CUDA device {ordinal}: {source}")]
    Open {
        /// The device asked for.
        ordinal: usize,
        /// candle's (cudarc's) error.
        source: candle_core::Error,
    },
}

/// The CPU for `None`; CUDA device `n` for `Some(n)`.
pub fn open(cuda_device: Option<usize>) -> Result<Device, DeviceError> {
    match cuda_device {
        None => Ok(Device::Cpu),
        Some(ordinal) => open_cuda(ordinal),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, DeviceError> {
    Device::new_cuda(ordinal).map_err(|source| DeviceError::Open { ordinal, source })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotBuilt)
}

/// How the device runs chat models, for the start-up line: the CPU kernels' name, or the GPU.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => {
            format!("CPU, matmul kernels: {}", crate::kernels::kernel_name())
        }
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("CUDA device {gpu_id}, candle ops"),
        candle_core::DeviceLocation::Metal { gpu_id } => {
            format!("Metal device {gpu_id}, candle ops")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_needs_nothing() {
        assert!(open(None).unwrap().is_cpu());
    }

    /// Without the feature, asking for CUDA is a clear error; with it, on a machine without
    /// a GPU, an error too, not a panic.
    #[test]
    fn cuda_without_a_gpu_is_an_error_not_a_panic() {
        match open(Some(0)) {
            Ok(device) => assert!(device.is_cuda(), "a GPU is here: it must be CUDA"),
            Err(e) => {
                let text = e.to_string();
                if cfg!(feature = "cuda") {
                    assert!(text.starts_with("no CUDA device 0"), "{text}");
                } else {
                    assert!(matches!(e, DeviceError::NotBuilt), "{text}");
                }
            }
        }
    }
}
