//! Checkpoints in the safetensors format: named f32 tensors (PyTorch
//! `state_dict` names and layouts, so a checkpoint loads into the equivalent
//! PyTorch model) plus string metadata (epoch, configuration).
//!
//! A checkpoint is written to a temporary file beside the target, flushed to
//! disk, then renamed over the target: a kill mid-write leaves the previous
//! checkpoint intact.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::autograd::tensor::Tensor;
use crate::runtime::Gpu;

/// What can go wrong reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// Not a safetensors file, or a damaged one.
    #[error(
        "{path} is not a readable safetensors checkpoint ({reason}); was it truncated or written by another tool?"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The metadata lacks something the reader needs.
    #[error("{path}: {reason}; was it written by unet-wgpu?")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is missing or unreadable.
        reason: String,
    },
    /// A tensor the model needs is not in the file.
    #[error("{path} has no tensor {name:?}: it was saved from a different model configuration")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor has another shape or type than the model's.
    #[error(
        "{path}: tensor {name:?} is {got}, the model needs {want}: it was saved from a different model configuration"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What the file holds.
        got: String,
        /// What the model needs.
        want: String,
    },
}

/// A checkpoint read into memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// Tensors by name: shape and f32 values.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// String metadata.
    pub metadata: BTreeMap<String, String>,
    /// Where it was read from (for error messages).
    pub path: PathBuf,
}

/// Read `named` tensors back from the GPU (blocking) and write them with
/// `metadata` to `path`, atomically.
pub fn save(
    gpu: &Gpu,
    path: &Path,
    named: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = named
        .iter()
        .map(|(name, t)| (name.clone(), t.shape().to_vec(), bytemuck::cast_slice(&gpu.read(t)).to_vec()))
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            (name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).expect("shape matches the data"))
        })
        .collect();
    let info: HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes = safetensors::serialize(views, Some(info))
        .map_err(|e| CheckpointError::Format { path: path.to_path_buf(), reason: e.to_string() })?;
    write_atomically(path, &bytes)
}

/// Write `bytes` to a temporary file beside `path`, sync it, rename it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    crate::files::write_atomically(path, bytes)
        .map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })
}

/// Read a checkpoint file.
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
    let format =
        |e: safetensors::SafeTensorError| CheckpointError::Format { path: path.to_path_buf(), reason: e.to_string() };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(format)?;
    let file = SafeTensors::deserialize(&bytes).map_err(format)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::Mismatch {
                path: path.to_path_buf(),
                name,
                got: format!("{:?}", view.dtype()),
                want: "F32".into(),
            });
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.insert(name, (view.shape().to_vec(), values));
    }
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok(Checkpoint { tensors, metadata, path: path.to_path_buf() })
}

impl Checkpoint {
    /// Upload every tensor of `named` from the checkpoint, checking names and
    /// shapes first, so that nothing is written unless everything fits.
    pub fn restore(&self, gpu: &Gpu, named: &[(String, Tensor)]) -> Result<(), CheckpointError> {
        for (name, t) in named {
            let (shape, _) = self
                .tensors
                .get(name)
                .ok_or_else(|| CheckpointError::Missing { path: self.path.clone(), name: name.clone() })?;
            if shape != t.shape() {
                return Err(CheckpointError::Mismatch {
                    path: self.path.clone(),
                    name: name.clone(),
                    got: format!("{shape:?}"),
                    want: format!("{:?}", t.shape()),
                });
            }
        }
        for (name, t) in named {
            gpu.write(t, bytemuck::cast_slice(&self.tensors[name].1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gpu, random_vec};

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("unet-wgpu-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trip_and_clear_errors() {
        let gpu = gpu();
        let dir = temp_dir("ckpt");
        let path = dir.join("model.safetensors");
        let a = gpu.upload(&random_vec(1, 6), &[2, 3]);
        let b = gpu.upload(&random_vec(2, 4), &[4]);
        let named = vec![("enc.weight".to_string(), a.clone()), ("enc.bias".to_string(), b.clone())];
        let meta = BTreeMap::from([("epoch".to_string(), "3".to_string())]);
        save(gpu, &path, &named, &meta).unwrap();
        let ck = load(&path).unwrap();
        assert_eq!(ck.metadata["epoch"], "3");
        assert_eq!(ck.tensors["enc.weight"], (vec![2, 3], gpu.read(&a)));

        let (a2, b2) = (gpu.zeros(&mut gpu.encoder(), &[2, 3]), gpu.empty(&[4]));
        ck.restore(gpu, &[("enc.weight".to_string(), a2.clone()), ("enc.bias".to_string(), b2.clone())]).unwrap();
        assert_eq!(gpu.read(&a2), gpu.read(&a));
        assert_eq!(gpu.read(&b2), gpu.read(&b));

        let wrong = gpu.empty(&[3, 2]);
        let err = ck.restore(gpu, &[("enc.weight".to_string(), wrong)]).unwrap_err().to_string();
        assert!(err.contains("enc.weight") && err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");
        let err = ck.restore(gpu, &[("dec.weight".to_string(), b2)]).unwrap_err().to_string();
        assert!(err.contains("no tensor \"dec.weight\""), "{err}");

        // A truncated file is refused with its name, and the old file survives a failed write.
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = load(&cut).unwrap_err().to_string();
        assert!(err.contains("cut.safetensors") && err.contains("truncated"), "{err}");
        let missing_dir = dir.join("no-such-dir").join("x.safetensors");
        assert!(write_atomically(&missing_dir, b"x").unwrap_err().to_string().contains("no-such-dir"));
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
