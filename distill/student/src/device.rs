//! Where the student computes. burn 0.22 dispatches on a [`Device`] value at run time, so
//! the trainer's back-end is chosen here, once, and everything else follows the device the
//! model's weights are on: `flex` (pure-Rust CPU, always built) or `wgpu` (Vulkan/Metal
//! GPUs, behind the opt-in cargo feature `wgpu`; built and run on no GPU here yet).

use std::str::FromStr;

use burn::tensor::Device;

use crate::error::{Result, StudentError};

/// A compute back-end of the student.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// burn's `flex` CPU back-end (threads: rayon's global pool).
    Cpu,
    /// burn's `wgpu` back-end on the default GPU adapter.
    Wgpu,
}

impl Backend {
    /// The device, or an error saying how to get a build that has it.
    pub fn device(self) -> Result<Device> {
        match self {
            Backend::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            Backend::Wgpu => Err(StudentError::InvalidInput(
                "this build has no GPU back-end: rebuild with `cargo build --release -p small-agent-distill --features wgpu`"
                    .into(),
            )),
        }
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "wgpu" | "gpu" => Ok(Backend::Wgpu),
            other => Err(format!("unknown device {other:?} (cpu or wgpu)")),
        }
    }
}
