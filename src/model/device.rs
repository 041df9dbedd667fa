//! Where a model runs: `cpu`, `cuda[:N]` or `metal[:N]`, as `--device` names it.
//!
//! The CPU is always there. CUDA and Metal exist only in a build with the `cuda` or `metal` cargo
//! feature (candle's backends); without it candle answers "not compiled with CUDA support", which
//! [`DeviceSpec::open`] turns into the command that builds one.

use candle_core::Device;

/// A device as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
    Metal(usize),
}

/// Why a device could not be opened or named.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "--device {0:?}: not a device; use cpu, cuda, cuda:N (the N-th GPU, from 0), metal or metal:N"
    )]
    Unknown(String),
    #[error(
        "--device {spec}: this infill was built without {backend}; build it with `cargo install --path . --features {feature}`{needs}, or run on the CPU (--device cpu)"
    )]
    NotBuilt {
        spec: DeviceSpec,
        backend: &'static str,
        feature: &'static str,
        needs: &'static str,
    },
    #[error("--device {spec}: {why}")]
    Unavailable { spec: DeviceSpec, why: String },
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || DeviceError::Unknown(s.to_string());
        let lower = s.trim().to_ascii_lowercase();
        let (kind, ordinal) = match lower.split_once(':') {
            Some((kind, n)) => (kind, Some(n.parse::<usize>().map_err(|_| unknown())?)),
            None => (lower.as_str(), None),
        };
        match (kind, ordinal) {
            ("cpu", None) => Ok(Self::Cpu),
            ("cuda" | "gpu", n) => Ok(Self::Cuda(n.unwrap_or(0))),
            ("metal", n) => Ok(Self::Metal(n.unwrap_or(0))),
            _ => Err(unknown()),
        }
    }
}

impl DeviceSpec {
    /// Opens the device, or says in one line why it cannot be (not built in, no such GPU).
    pub fn open(self) -> Result<Device, DeviceError> {
        let opened = match self {
            Self::Cpu => return Ok(Device::Cpu),
            Self::Cuda(n) => Device::new_cuda(n),
            Self::Metal(n) => Device::new_metal(n),
        };
        opened.map_err(|e| match e {
            candle_core::Error::NotCompiledWithCudaSupport => DeviceError::NotBuilt {
                spec: self,
                backend: "CUDA",
                feature: "cuda",
                needs: " (it needs the CUDA toolkit's nvcc)",
            },
            candle_core::Error::NotCompiledWithMetalSupport => DeviceError::NotBuilt {
                spec: self,
                backend: "Metal",
                feature: "metal",
                needs: " (on macOS)",
            },
            other => DeviceError::Unavailable {
                spec: self,
                // candle's errors can run to several lines (a backtrace, a driver's report).
                why: other
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or("cannot be opened")
                    .to_string(),
            },
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (name, spec) in [
            ("cpu", DeviceSpec::Cpu),
            ("CPU", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:1", DeviceSpec::Cuda(1)),
            ("gpu", DeviceSpec::Cuda(0)),
            ("metal", DeviceSpec::Metal(0)),
            ("metal:2", DeviceSpec::Metal(2)),
        ] {
            assert_eq!(name.parse::<DeviceSpec>().unwrap(), spec, "{name}");
            assert_eq!(spec.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
        for bad in ["", "tpu", "cuda:", "cuda:x", "cpu:0", "cuda:-1", "cuda:0:1"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(
                err.contains("not a device") && err.contains("cuda:N"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_cpu_opens_and_a_backend_not_built_in_says_how_to_build_it() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        if !candle_core::utils::cuda_is_available() {
            let err = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
            assert!(
                err.contains("--features cuda") && !err.contains('\n'),
                "{err}"
            );
        }
        if !candle_core::utils::metal_is_available() {
            let err = DeviceSpec::Metal(0).open().unwrap_err().to_string();
            assert!(
                err.contains("--features metal") && !err.contains('\n'),
                "{err}"
            );
        }
    }
}
