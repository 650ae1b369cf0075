//! The safe pickle reader against small checkpoints written by torch 2.11
//! (`reference/gen_pickle_fixtures.py`): every supported container and layout is compared bit for
//! bit with the `*.expected.safetensors` file the generator wrote next to it, and the hostile
//! fixtures must be refused without running anything.

use std::path::{Path, PathBuf};

use models::weights::pickle::{sniff, PickleFile};
use models::weights::safetensors_file::SafetensorsFile;
use models::weights::TensorSource;
use models::Error;
use tch::{Kind, Tensor};

/// What `forbidden.pt` would create if its `os.system` call ever ran.
const MARKER: &str = "/tmp/diffusiond-pickle-pwned";

/// The checkpoints that the reader must load (file, expected-values stem).
const LOADABLE: &[(&str, &str)] = &[
    ("dtypes.pt", "dtypes"),
    ("shared_storage.pt", "shared_storage"),
    ("strided.pt", "strided"),
    ("lightning.ckpt", "lightning"),
    ("embedding.pt", "embedding"),
    ("embedding_paramdict.pt", "embedding_paramdict"),
    ("legacy.pth", "legacy"),
    ("legacy_protocol5.pth", "legacy_protocol5"),
    ("protocol4.pt", "protocol4"),
    ("tensor_state.pt", "tensor_state"),
    ("nested.pt", "nested"),
    ("deflated.pt", "deflated"),
    ("bigendian.pt", "bigendian"),
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pickle").join(name)
}

fn open(name: &str) -> PickleFile {
    match PickleFile::open(fixture(name)) {
        Ok(f) => f,
        Err(e) => panic!("{name}: {e}"),
    }
}

fn open_err(name: &str) -> Error {
    match PickleFile::open(fixture(name)) {
        Ok(_) => panic!("{name} opened, but must be refused"),
        Err(e) => e,
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

fn raw_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous();
    let n = t.numel();
    let mut bytes = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut bytes, n).expect("copy tensor bytes");
    bytes
}

/// `file` holds exactly the tensors of `<stem>.expected.safetensors`, with the same dtype, shape
/// and bytes, and `info` agrees with what `read` returns.
fn assert_matches_expected(file: &str, stem: &str) {
    let got = open(file);
    let want =
        SafetensorsFile::open(fixture(&format!("{stem}.expected.safetensors"))).expect("expected file");
    assert_eq!(sorted(got.names()), sorted(want.names()), "{file}: tensor names");
    for name in want.names() {
        let w = want.read(&name).expect("expected tensor");
        let g = got.read(&name).unwrap_or_else(|e| panic!("{file}: reading {name}: {e}"));
        let info = got.info(&name).expect("info of a listed tensor");
        assert_eq!((info.kind, info.shape.clone()), (w.kind(), w.size()), "{file}: info of {name}");
        assert_eq!((g.kind(), g.size()), (w.kind(), w.size()), "{file}: {name}");
        assert!(g.is_contiguous(), "{file}: {name} is not contiguous");
        assert_eq!(g.device(), tch::Device::Cpu);
        assert_eq!(raw_bytes(&g), raw_bytes(&w), "{file}: bytes of {name}");
    }
}

#[test]
fn pickle_dtypes_match_torch() {
    assert_matches_expected("dtypes.pt", "dtypes");
    let f = open("dtypes.pt");
    let kind = |n: &str| f.info(n).map(|i| i.kind);
    assert_eq!(kind("f64"), Some(Kind::Double));
    assert_eq!(kind("f32"), Some(Kind::Float));
    assert_eq!(kind("f16"), Some(Kind::Half));
    assert_eq!(kind("bf16"), Some(Kind::BFloat16));
    assert_eq!(kind("i64"), Some(Kind::Int64));
    assert_eq!(kind("i32"), Some(Kind::Int));
    assert_eq!(kind("i16"), Some(Kind::Int16));
    assert_eq!(kind("i8"), Some(Kind::Int8));
    assert_eq!(kind("u8"), Some(Kind::Uint8));
    assert_eq!(kind("bool"), Some(Kind::Bool));
    assert_eq!(f.info("scalar").map(|i| i.shape), Some(vec![]));
    assert_eq!(f.info("empty").map(|i| i.shape), Some(vec![0, 3]));
    assert_eq!(f.read("i64").ok().map(|t| Vec::<i64>::try_from(t).ok()), Some(Some(vec![-2, -1, 0, 1, 2])));
}

#[test]
fn pickle_shared_storage_views_use_element_offsets() {
    assert_matches_expected("shared_storage.pt", "shared_storage");
    let f = open("shared_storage.pt");
    let middle = Vec::<f32>::try_from(f.read("middle").expect("middle")).expect("f32");
    assert_eq!(middle, vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    let tail = f.read("tail").expect("tail");
    assert_eq!(tail.size(), vec![2, 5]);
    assert_eq!(tail.double_value(&[1, 4]), 19.0);
}

#[test]
fn pickle_non_contiguous_views_are_made_contiguous() {
    assert_matches_expected("strided.pt", "strided");
}

#[test]
fn pickle_lightning_checkpoint_unwraps_state_dict() {
    // Counters, the ModelCheckpoint callback, numpy scalars and arrays, torch.Size/device/dtype
    // values and optimizer tensors are all outside `state_dict` and must not show up.
    assert_matches_expected("lightning.ckpt", "lightning");
}

#[test]
fn pickle_textual_inversion_embeddings() {
    assert_matches_expected("embedding.pt", "embedding");
    assert_eq!(open("embedding.pt").names(), vec!["string_to_param.*".to_string()]);
    // The original-TI layout: a ParameterDict whose `_parameters` hold the vectors.
    assert_matches_expected("embedding_paramdict.pt", "embedding_paramdict");
}

#[test]
fn pickle_legacy_stream() {
    assert_matches_expected("legacy.pth", "legacy");
    assert_matches_expected("legacy_protocol5.pth", "legacy_protocol5");
}

#[test]
fn pickle_protocol4_zip() {
    assert_matches_expected("protocol4.pt", "protocol4");
}

#[test]
fn pickle_parameter_and_subclass_wrappers() {
    // `_rebuild_parameter_with_state` and `_rebuild_from_type_v2(_rebuild_tensor_v2, Tensor, …)`.
    assert_matches_expected("tensor_state.pt", "tensor_state");
}

#[test]
fn pickle_nested_dicts_are_flattened() {
    assert_matches_expected("nested.pt", "nested");
}

#[test]
fn pickle_deflated_records_are_inflated() {
    assert_matches_expected("deflated.pt", "deflated");
}

#[test]
fn pickle_big_endian_archive_is_byte_swapped() {
    assert!(open("bigendian.pt").is_big_endian());
    assert_matches_expected("bigendian.pt", "bigendian");
}

#[test]
fn pickle_rebuild_tensor_v3_dtypes() {
    let f = open("v3_dtypes.pt");
    assert_eq!(sorted(f.names()), vec!["f32", "f8", "u16"]);
    let want = SafetensorsFile::open(fixture("v3_dtypes.expected.safetensors")).expect("expected file");
    let f8 = f.read("f8").expect("float8 tensor");
    assert_eq!(f8.kind(), Kind::Float8e4m3fn);
    assert_eq!(raw_bytes(&f8), raw_bytes(&want.read("f8_bits").expect("bits")));
    assert_eq!(raw_bytes(&f.read("f32").expect("f32")), raw_bytes(&want.read("f32").expect("f32")));
    // uint16 has no tch kind: listed with the "unsupported" marker kind, refused on read.
    assert_eq!(f.info("u16").map(|i| (i.kind, i.shape)), Some((Kind::ComplexHalf, vec![2])));
    match f.read("u16") {
        Err(Error::UnsupportedDtype { dtype, .. }) => assert_eq!(dtype, "uint16"),
        other => panic!("u16 read: {other:?}"),
    }
}

#[test]
fn pickle_forbidden_global_is_refused() {
    // The marker is only ever created by running the file's payload; clear leftovers first so
    // the assertion below means something.
    let _ = std::fs::remove_file(MARKER);
    let path = fixture("forbidden.pt");
    match PickleFile::open(&path) {
        Err(Error::ForbiddenGlobal { file, global }) => {
            assert_eq!(global, "posix.system");
            assert_eq!(file, path);
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("forbidden.pt opened"),
    }
    let message = open_err("forbidden.pt").to_string();
    assert!(message.contains("posix.system") && message.contains("forbidden.pt"), "{message}");
    assert!(!Path::new(MARKER).exists(), "the pickle payload ran");
}

#[test]
fn pickle_torchscript_archive_is_refused() {
    match open_err("torchscript.pt") {
        Error::UnknownFormat { reason, .. } => assert!(reason.contains("TorchScript"), "{reason}"),
        e => panic!("wrong error: {e}"),
    }
}

#[test]
fn pickle_malformed_archives_are_refused() {
    match open_err("duplicate.pt") {
        Error::Pickle { reason, .. } => assert!(reason.contains("duplicate"), "{reason}"),
        e => panic!("duplicate.pt: wrong error: {e}"),
    }
    match open_err("outside.pt") {
        Error::Pickle { reason, .. } => assert!(reason.contains("outside the archive"), "{reason}"),
        e => panic!("outside.pt: wrong error: {e}"),
    }
    for name in ["plain_pickle.pkl", "dtypes.expected.safetensors"] {
        match open_err(name) {
            Error::UnknownFormat { file, .. } => assert_eq!(file, fixture(name)),
            e => panic!("{name}: wrong error: {e}"),
        }
    }
}

#[test]
fn pickle_sniff_recognises_fixtures() {
    for (file, _) in LOADABLE.iter().chain(&[("forbidden.pt", ""), ("v3_dtypes.pt", "")]) {
        let bytes = std::fs::read(fixture(file)).expect("fixture");
        assert!(sniff(&bytes), "{file}");
        assert!(sniff(&bytes[..16]), "{file}: first 16 bytes");
        assert!(sniff(&bytes[..64]), "{file}: first 64 bytes");
    }
    // TorchScript archives name data.pkl only further in; `open` refuses them explicitly.
    let script = std::fs::read(fixture("torchscript.pt")).expect("fixture");
    assert!(sniff(&script));
    for file in ["plain_pickle.pkl", "dtypes.expected.safetensors"] {
        let bytes = std::fs::read(fixture(file)).expect("fixture");
        assert!(!sniff(&bytes), "{file}");
    }
}

/// Every strict prefix of every fixture is refused with an error (never a panic, never a
/// half-loaded file).
#[test]
fn pickle_truncated_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("truncated.pt");
    for (file, _) in LOADABLE {
        let bytes = std::fs::read(fixture(file)).expect("fixture");
        let tail = bytes.len().saturating_sub(100);
        let lengths = (0..bytes.len()).step_by(7).chain(tail..bytes.len());
        for n in lengths {
            std::fs::write(&path, &bytes[..n]).expect("write");
            match PickleFile::open(&path) {
                Ok(_) => panic!("{file} truncated to {n} of {} bytes opened", bytes.len()),
                Err(e) => assert!(e.to_string().contains("truncated.pt"), "{e}"),
            }
        }
    }
}

/// Random byte corruption (fixed-seed xorshift) gives errors or garbage values, never a panic;
/// whatever opens can be read.
#[test]
fn pickle_corrupted_files_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("corrupt.pt");
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut opened = 0;
    for (file, _) in LOADABLE {
        let original = std::fs::read(fixture(file)).expect("fixture");
        for _ in 0..150 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % bytes.len() as u64) as usize;
                bytes[i] = next() as u8;
            }
            std::fs::write(&path, &bytes).expect("write");
            if let Ok(f) = PickleFile::open(&path) {
                opened += 1;
                for name in f.names() {
                    let _ = f.info(&name);
                    let _ = f.read(&name);
                }
            }
        }
    }
    // Most single-byte changes hit tensor data or padding, which still opens.
    assert!(opened > 0);
}
