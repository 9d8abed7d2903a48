//! A `.safetensors` reader for untrusted files: every declared size and offset is
//! checked against the file before anything is allocated, and every error is one line
//! that names the file, the tensor when there is one, and the problem.
//!
//! The format: 8 bytes (little-endian u64 N), N bytes of JSON (`{"name": {"dtype",
//! "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the data, in
//! which each tensor's bytes are `begin..end`. The `safetensors` crate that tch uses
//! reports bare kind names (`InvalidOffset("input")`, `HeaderTooLarge`), keeps the last
//! of two entries with the same name, and returns tensors in hash order; this reader
//! returns them in file (offset) order.
use serde::de::{MapAccess, Visitor};
use std::path::Path;
use tch::{Kind, Tensor};

/// The largest JSON header read (the format's own limit).
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

/// What one header entry says.
#[derive(serde::Deserialize)]
struct Info {
    dtype: String,
    shape: Vec<i64>,
    data_offsets: (u64, u64),
}

/// The header's entries in order, keeping duplicates (so they can be refused).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The dtype's libtorch kind and element size, or `None` for one libtorch lacks.
fn kind_of(dtype: &str) -> Option<(Kind, u64)> {
    Some(match dtype {
        "F64" => (Kind::Double, 8),
        "F32" => (Kind::Float, 4),
        "F16" => (Kind::Half, 2),
        "BF16" => (Kind::BFloat16, 2),
        "I64" => (Kind::Int64, 8),
        "I32" => (Kind::Int, 4),
        "I16" => (Kind::Int16, 2),
        "I8" => (Kind::Int8, 1),
        "U8" => (Kind::Uint8, 1),
        "BOOL" => (Kind::Bool, 1),
        _ => return None,
    })
}

/// One tensor the header declares: where its bytes lie in the data section, and what they are.
struct Entry {
    begin: u64,
    end: u64,
    key: String,
    kind: Kind,
    shape: Vec<i64>,
}

/// Checks the 8-byte length prefix of a file of `size` bytes and returns the header's length.
fn header_len(prefix: &[u8], size: u64, bad: &dyn Fn(String) -> String) -> Result<u64, String> {
    if size < 8 {
        return Err(bad(format!(
            "it is {size} bytes, shorter than the 8-byte header length"
        )));
    }
    let n = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
    if n > size - 8 {
        return Err(bad(format!(
            "its first 8 bytes declare a {n}-byte header but the file has {size} bytes (truncated, or not safetensors: a torch.save checkpoint is read from a .pt/.pth/.ckpt/.bin name)"
        )));
    }
    if n > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "its header is {n} bytes, more than the format's limit of 100 MiB"
        )));
    }
    Ok(n)
}

/// The header's entries, checked against the `data_len` bytes of data that follow it, in
/// the order of their data.
fn entries(
    header: &[u8],
    data_len: u64,
    bad: &dyn Fn(String) -> String,
) -> Result<Vec<Entry>, String> {
    let header = std::str::from_utf8(header).map_err(|e| {
        bad(format!(
            "its header is not UTF-8 (byte {})",
            e.valid_up_to()
        ))
    })?;
    let entries: Entries = serde_json::from_str(header).map_err(|e| {
        bad(format!(
            "its header is not a JSON object ({})",
            one_line(&e.to_string())
        ))
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut tensors: Vec<Entry> = Vec::new();
    for (key, value) in entries.0 {
        if !seen.insert(key.clone()) {
            return Err(bad(format!("the header names `{key}` twice")));
        }
        if key == "__metadata__" {
            continue;
        }
        let t = |what: String| bad(format!("tensor `{key}`: {what}"));
        let info: Info = serde_json::from_value(value)
            .map_err(|e| t(format!("malformed entry ({})", one_line(&e.to_string()))))?;
        let (kind, elem) = kind_of(&info.dtype)
            .ok_or_else(|| t(format!("dtype {} is not one libtorch holds", info.dtype)))?;
        if let Some(d) = info.shape.iter().find(|d| **d < 0) {
            return Err(t(format!(
                "negative dimension {d} in shape {:?}",
                info.shape
            )));
        }
        let numel = info
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| {
                t(format!(
                    "shape {:?} has more elements than 2^64",
                    info.shape
                ))
            })?;
        let need = numel
            .checked_mul(elem)
            .ok_or_else(|| t(format!("shape {:?} needs more than 2^64 bytes", info.shape)))?;
        let (begin, end) = info.data_offsets;
        if begin > end || end > data_len {
            return Err(t(format!(
                "its data offsets {begin}..{end} are not within the {data_len} bytes of data"
            )));
        }
        if end - begin != need {
            return Err(t(format!(
                "{} x {:?} needs {need} bytes but its offsets span {}",
                info.dtype,
                info.shape,
                end - begin
            )));
        }
        tensors.push(Entry {
            begin,
            end,
            key,
            kind,
            shape: info.shape,
        });
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    // The format's rule: tensors tile the data exactly, without overlap or gap.
    let mut at = 0u64;
    for e in &tensors {
        if e.begin != at {
            return Err(bad(format!(
                "tensor `{}` starts at data byte {}, but the previous tensor ends at {at} (overlapping or out-of-order offsets)",
                e.key, e.begin
            )));
        }
        at = e.end;
    }
    if at != data_len {
        return Err(bad(format!(
            "{} bytes of data after the last tensor",
            data_len - at
        )));
    }
    Ok(tensors)
}

/// Parses the safetensors `bytes` (the whole file; `name` names it in errors) into
/// `(name, tensor)` pairs in the order of their data in the file.
pub fn parse(bytes: &[u8], name: &str) -> Result<Vec<(String, Tensor)>, String> {
    let bad = |what: String| format!("{name}: not a valid safetensors file: {what}");
    let n = header_len(bytes, bytes.len() as u64, &bad)?;
    let data = &bytes[8 + n as usize..];
    entries(&bytes[8..8 + n as usize], data.len() as u64, &bad)?
        .into_iter()
        .map(|e| {
            let t =
                Tensor::f_from_data_size(&data[e.begin as usize..e.end as usize], &e.shape, e.kind)
                    .map_err(|err| {
                        bad(format!(
                            "tensor `{}`: {}",
                            e.key,
                            one_line(&err.to_string())
                        ))
                    })?;
            Ok((e.key, t))
        })
        .collect()
}

/// Reads the safetensors file at `path` (a regular file, read once).
///
/// The header is checked first (as [`parse`] does); then each tensor's bytes are read from
/// the file straight into the tensor's own memory. Nothing holds the whole file, so loading
/// a checkpoint costs its tensors and not twice that: a 1.2 GB Prithvi-EO-2.0-300M file
/// used to peak at the file, its tensors and the model at once.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>, String> {
    use std::io::Read;
    let name = path.display().to_string();
    let io = |e: std::io::Error| format!("{name}: {e}");
    let bad = |what: String| format!("{name}: not a valid safetensors file: {what}");
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(format!("{name} is not a regular file"));
    }
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let size = meta.len();
    let mut prefix = [0u8; 8];
    if size >= 8 {
        file.read_exact(&mut prefix).map_err(io)?;
    }
    let n = header_len(&prefix, size, &bad)?;
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    let list = entries(&header, size - 8 - n, &bad)?;
    drop(header);
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        let t = Tensor::f_empty(&e.shape, (e.kind, tch::Device::Cpu)).map_err(|err| {
            bad(format!(
                "tensor `{}`: {}",
                e.key,
                one_line(&err.to_string())
            ))
        })?;
        let len = (e.end - e.begin) as usize;
        if len > 0 {
            // SAFETY: `t` is a fresh contiguous CPU tensor of exactly `len` bytes (the header
            // check above ties `len` to its shape and dtype), owned here and not yet shared.
            let dst = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, len) };
            file.read_exact(dst).map_err(|err| {
                format!(
                    "{name}: tensor `{}`: {err} (was the file changed while it was read?)",
                    e.key
                )
            })?;
        }
        out.push((e.key, t));
    }
    Ok(out)
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    fn err(bytes: &[u8]) -> String {
        parse(bytes, "x.safetensors").expect_err("refused")
    }

    #[test]
    fn what_tch_writes_reads_back_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let a = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).view([2, 3]);
        let b = Tensor::from_slice(&[1i64, -2]);
        Tensor::write_safetensors(&[("b", &b), ("a", &a)], &p).unwrap();
        let got = read(&p).unwrap();
        let theirs = Tensor::read_safetensors(&p).unwrap();
        assert_eq!(got.len(), 2);
        for (k, t) in &got {
            let other = &theirs.iter().find(|(n, _)| n == k).unwrap().1;
            assert!(t.equal(other), "{k}");
        }
    }

    #[test]
    fn reading_a_file_gives_what_parsing_its_bytes_gives() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let opts = (Kind::Float, tch::Device::Cpu);
        let tensors = [
            ("f32", Tensor::randn([3, 5], opts)),
            ("bf16", Tensor::randn([7], opts).to_kind(Kind::BFloat16)),
            ("f16", Tensor::randn([2, 2, 2], opts).to_kind(Kind::Half)),
            ("i64", Tensor::from_slice(&[i64::MIN, 0, i64::MAX])),
            ("u8", Tensor::from_slice(&[0u8, 7, 255])),
            ("empty", Tensor::zeros([0, 4], opts)),
            ("scalar", Tensor::from(2.5f64)),
        ];
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (*k, t)).collect();
        Tensor::write_safetensors(&named, &p).unwrap();
        let streamed = read(&p).unwrap();
        let parsed = parse(&std::fs::read(&p).unwrap(), "t").unwrap();
        assert_eq!(streamed.len(), tensors.len());
        for ((ka, a), (kb, b)) in streamed.iter().zip(&parsed) {
            assert_eq!(ka, kb);
            assert_eq!(a.kind(), b.kind(), "{ka}");
            assert!(a.equal(b), "{ka}");
            let original = &tensors.iter().find(|(k, _)| k == ka).unwrap().1;
            assert!(a.equal(original), "{ka}");
        }
        // A file cut short is refused by its header check, before any tensor is allocated.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let e = read(&p).unwrap_err();
        assert!(
            e.contains("bytes of data") || e.contains("not within"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn hostile_headers_are_refused_in_one_line() {
        let e = err(&u64::MAX.to_le_bytes());
        assert!(
            e.contains("declare a 18446744073709551615-byte header"),
            "{e}"
        );
        let mut big = (1u64 << 40).to_le_bytes().to_vec();
        big.extend_from_slice(b"{}");
        assert!(err(&big).contains("truncated, or not safetensors"));
        let mut bad_utf8 = 3u64.to_le_bytes().to_vec();
        bad_utf8.extend_from_slice(b"{\xff}");
        assert!(err(&bad_utf8).contains("not UTF-8"));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(&file(&deep, b"")).contains("not a JSON object"));
        let e = err(&file(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("names `a` twice"), "{e}");
        let e = err(&file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ));
        assert!(
            e.contains("tensor `a`") && e.contains("needs 8 bytes"),
            "{e}"
        );
        let e = err(&file(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("not within"), "{e}");
        let e = err(&file(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("overlapping"), "{e}");
        let e = err(&file(
            r#"{"a":{"dtype":"F32","shape":[9223372036854775807,4],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("2^64"), "{e}");
        let e = err(&file(
            r#"{"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}"#,
            &[0; 1],
        ));
        assert!(e.contains("dtype F8_E4M3"), "{e}");
        let e = err(&file(
            r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("negative dimension"), "{e}");
        assert!(!err(&[1, 2, 3]).contains('\n'));
    }
}
