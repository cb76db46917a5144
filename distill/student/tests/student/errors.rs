//! Files the student refuses, with the error that says why.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use small_agent_student::tiny::{write_tiny_gguf, TinySpec};
use small_agent_student::StudentError;

use crate::default_model_path;

#[test]
fn a_truncated_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, &TinySpec::llama(), &default_model_path()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // Cut in the tensor data: the header still parses, a tensor does not.
    std::fs::write(&path, &bytes[..bytes.len() - 4096]).unwrap();
    let err = small_agent_student::load_cpu(&path).unwrap_err();
    assert!(matches!(err, StudentError::CorruptGguf { .. }), "{err}");
    // Cut in the header.
    std::fs::write(&path, &bytes[..64]).unwrap();
    let err = small_agent_student::load_cpu(&path).unwrap_err();
    assert!(matches!(err, StudentError::CorruptGguf { .. }), "{err}");
    // Not GGUF at all.
    std::fs::write(&path, b"PK\x03\x04 certainly not a model").unwrap();
    let err = small_agent_student::load_cpu(&path).unwrap_err();
    assert!(matches!(err, StudentError::CorruptGguf { .. }), "{err}");
}

#[test]
fn another_architecture_or_extra_tensors_are_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.gguf");
    let cpu = candle_core::Device::Cpu;
    let t = candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
    let arch = Value::String("phi3".into());
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &q)],
    )
    .unwrap();
    drop(f);
    let err = small_agent_student::load_cpu(&path).unwrap_err();
    assert!(matches!(err, StudentError::UnsupportedGguf { .. }), "{err}");
    assert!(err.to_string().contains("phi3"), "{err}");

    // A llama file with a tensor the student does not implement (llama 3's RoPE factors).
    let tiny = dir.path().join("tiny.gguf");
    write_tiny_gguf(&tiny, &TinySpec::llama(), &default_model_path()).unwrap();
    let content = {
        let mut r = std::fs::File::open(&tiny).unwrap();
        gguf_file::Content::read(&mut r).unwrap()
    };
    let mut r = std::fs::File::open(&tiny).unwrap();
    let mut tensors: Vec<(String, QTensor)> = content
        .tensor_infos
        .keys()
        .map(|k| (k.clone(), content.tensor(&mut r, k, &cpu).unwrap()))
        .collect();
    let factors = candle_core::Tensor::ones(8, candle_core::DType::F32, &cpu).unwrap();
    tensors.push((
        "rope_freqs.weight".into(),
        QTensor::quantize(&factors, GgmlDType::F32).unwrap(),
    ));
    let meta: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let trefs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let extra = dir.path().join("extra.gguf");
    let mut f = std::fs::File::create(&extra).unwrap();
    gguf_file::write(&mut f, &meta, &trefs).unwrap();
    drop(f);
    let err = small_agent_student::load_cpu(&extra).unwrap_err();
    assert!(matches!(err, StudentError::UnsupportedGguf { .. }), "{err}");
    assert!(err.to_string().contains("rope_freqs"), "{err}");
}
