//! Files written by `torch.save` (a zip: `<top>/data.pkl`, the pickle of the saved object, and
//! `<top>/data/<key>`, one raw little-endian storage per key), read without running the pickle
//! (`pickle`). Entries with paths that leave the archive, entries larger than the file and
//! storages shorter than their tensors are refused.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use super::pickle::{self, Dtype, TensorRef, Value};

/// A torch file: what its pickle builds, and its storages by key.
pub struct TorchFile {
    pub root: Value,
    storages: HashMap<String, Vec<u8>>,
}

/// A tensor's numbers as `f32`, row-major, with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Floats {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl TorchFile {
    /// Reads `path`; an error is one line naming what was refused and why.
    pub fn open(path: &Path) -> Result<TorchFile, String> {
        // Not opened unless it is a regular file: opening a FIFO would wait forever.
        let meta = std::fs::metadata(path).map_err(|e| crate::files::describe(&e))?;
        if !meta.is_file() {
            return Err("is not a regular file; give the file model.save() wrote".into());
        }
        let file = std::fs::File::open(path).map_err(|e| crate::files::describe(&e))?;
        let file_len = file.metadata().map_err(|e| crate::files::describe(&e))?.len();
        // torch stores its entries uncompressed: what they unpack to stays near the file's size.
        // Compressed entries are read, but not past this many bytes in all (no zip bombs).
        let budget = file_len.saturating_mul(4).saturating_add(64 << 20);
        let mut unpacked = 0u64;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| format!("is not a torch zip file ({e}); scmz reads models saved by torch 1.6 or later"))?;
        let mut pkl = None;
        let mut storages = HashMap::new();
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| format!("has a damaged zip entry ({e})"))?;
            let name = entry.name().to_string();
            if entry.enclosed_name().is_none() || name.split(['/', '\\']).any(|p| p == "..") {
                return Err(format!("has an entry `{name}` whose path leaves the archive; refused"));
            }
            if entry.size() > file_len {
                return Err(format!(
                    "has an entry `{name}` that claims {} bytes, more than the whole file ({file_len}); refused",
                    entry.size()
                ));
            }
            let mut parts = name.splitn(2, '/');
            let (Some(_top), Some(rest)) = (parts.next(), parts.next()) else {
                continue;
            };
            let wanted = rest == "data.pkl" || rest.starts_with("data/");
            if !wanted {
                continue;
            }
            unpacked = unpacked.saturating_add(entry.size());
            if unpacked > budget {
                return Err(format!(
                    "unpacks to more than {} MB from {} MB (a zip bomb, or not a torch file); refused",
                    budget >> 20,
                    file_len >> 20
                ));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry
                .by_ref()
                .take(file_len + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("has an entry `{name}` that cannot be read ({e})"))?;
            if bytes.len() as u64 != entry.size() {
                return Err(format!(
                    "has an entry `{name}` whose size differs from what the archive says"
                ));
            }
            if rest == "data.pkl" {
                if pkl.is_some() {
                    return Err("holds two `data.pkl` entries; refused".into());
                }
                pkl = Some(bytes);
            } else {
                storages.insert(rest["data/".len()..].to_string(), bytes);
            }
        }
        let pkl = pkl.ok_or("holds no `data.pkl`: it is not a file that torch.save wrote")?;
        let root = pickle::load(&pkl)?;
        Ok(TorchFile { root, storages })
    }

    /// The numbers of `t` as `f32` (floating-point and integer storages alike), contiguous.
    pub fn floats(&self, t: &TensorRef) -> Result<Floats, String> {
        let key = &t.storage.key;
        let bytes = self
            .storages
            .get(key)
            .ok_or_else(|| format!("has no storage `data/{key}` for a tensor its pickle names"))?;
        let size = t.storage.dtype.size();
        let n_storage = bytes.len() / size;
        let shape: Vec<usize> = t.shape.iter().map(|&s| s as usize).collect();
        let numel = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s));
        // A tensor may repeat its storage's values (stride 0, as `expand` makes), but not into
        // more than 16M values from a smaller storage.
        let numel = numel
            .filter(|&n| n <= n_storage.max(1 << 24))
            .filter(|_| t.offset >= 0 && t.shape.iter().chain(&t.stride).all(|&x| x >= 0))
            .filter(|_| t.shape.len() == t.stride.len())
            .ok_or_else(|| {
                format!(
                    "has a tensor of impossible shape {:?} (strides {:?}, offset {}) over storage `data/{key}`",
                    t.shape, t.stride, t.offset
                )
            })?;
        if numel > 0 {
            let last = t
                .shape
                .iter()
                .zip(&t.stride)
                .map(|(&s, &st)| (s - 1).checked_mul(st))
                .try_fold(t.offset, |a, x| x.and_then(|x| a.checked_add(x)));
            if last.is_none_or(|l| l as u64 >= n_storage as u64) {
                return Err(format!(
                    "has a tensor of shape {:?} whose storage `data/{key}` is shorter than it ({n_storage} values); refused",
                    t.shape
                ));
            }
        }
        let read = |i: usize| -> f32 {
            let b = &bytes[i * size..(i + 1) * size];
            match t.storage.dtype {
                Dtype::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
                Dtype::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
                Dtype::F16 => half_to_f32(u16::from_le_bytes(b.try_into().expect("2 bytes"))),
                Dtype::BF16 => f32::from_bits((u16::from_le_bytes(b.try_into().expect("2 bytes")) as u32) << 16),
                Dtype::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
                Dtype::I32 => i32::from_le_bytes(b.try_into().expect("4 bytes")) as f32,
                Dtype::I16 => i16::from_le_bytes(b.try_into().expect("2 bytes")) as f32,
                Dtype::I8 => b[0] as i8 as f32,
                Dtype::U8 | Dtype::Bool => b[0] as f32,
            }
        };
        let mut data = Vec::with_capacity(numel);
        let mut index = vec![0usize; shape.len()];
        for _ in 0..numel {
            let at: i64 = t.offset + index.iter().zip(&t.stride).map(|(&i, &s)| i as i64 * s).sum::<i64>();
            data.push(read(at as usize));
            for d in (0..shape.len()).rev() {
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(Floats { shape, data })
    }
}

fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // Subnormal: normalise.
            let mut e = -14;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (((e + 127) as u32) << 23) | ((f & 0x3ff) << 13)
        }
        31 => sign | 0x7f80_0000 | (frac << 13),
        e => sign | (((e - 15 + 127) as u32) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}
