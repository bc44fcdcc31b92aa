//! Small helpers over `hdf5-metno` for what AnnData and 10x files store: strings of every HDF5
//! flavour (variable or fixed length, ASCII or UTF-8), attributes, and fields of the compound
//! datasets that pre-0.7 AnnData used for `obs`/`var`.

use std::path::Path;

use hdf5::types::{CompoundField, CompoundType, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Container, Datatype, File, Group, Location};

use super::error::{Context, DataError, Result};

const HDF5_SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

/// True if the file starts with the HDF5 signature (at 0 or at a user-block offset).
pub fn has_hdf5_signature(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    // A FIFO would block here and a device never end: regular files only.
    let mut f = crate::files::open_regular(path).map_err(|e| std::io::Error::other(e.message))?;
    let len = f.metadata()?.len();
    let mut buf = [0u8; 8];
    for offset in [0u64, 512, 1024, 2048] {
        if offset + 8 > len {
            break;
        }
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut buf)?;
        if &buf == HDF5_SIGNATURE {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Opens an HDF5 file read-only, with a clear message for non-HDF5 and damaged files.
///
/// scmz never takes HDF5 file locks: a lock lives on the file descriptor, which child processes
/// (jobs, tests) inherit, so one running child could block every other reader of the file.
/// Writers write to private temporary paths instead (see `writer`).
pub fn open_file(path: &Path) -> Result<File> {
    match has_hdf5_signature(path) {
        Ok(true) => {}
        Ok(false) => {
            return Err(DataError::file(path, "not an HDF5 file (no HDF5 signature)")
                .hint("check that the file is an .h5ad or 10x .h5 file and was copied completely"))
        }
        Err(e) => return Err(DataError::file(path, format!("cannot read: {e}"))),
    }
    let file = hdf5::File::with_options()
        .with_fapl(|p| p.file_locking(false))
        .open(path)
        .map_err(|e| {
            DataError::file(path, format!("HDF5 cannot open it ({e})"))
                .hint("the file is damaged or truncated; copy it again")
        })?;
    refuse_outside_storage(path, &file, "", 0)?;
    Ok(file)
}

/// Deepest group nesting walked; AnnData and 10x files use a few levels, a deeper one is hostile
/// (hard links can even make cycles).
const MAX_DEPTH: usize = 16;

/// Refuses what would make HDF5 read another file: external links, datasets with external
/// storage (raw bytes in another file, `/etc/passwd` say) and virtual datasets, anywhere in the
/// file; nothing of them is read. Soft links point inside the file and are not followed here.
fn refuse_outside_storage(path: &Path, group: &Group, prefix: &str, depth: usize) -> Result<()> {
    use hdf5::{LinkType, LocationType};
    let mut links = Vec::new();
    group
        .iter_visit_default(|name, info| {
            links.push((name.to_string(), info.link_type));
            Ok(())
        })
        .map_err(|e| {
            DataError::at(
                path,
                if prefix.is_empty() { "/" } else { prefix },
                format!("cannot list ({e})"),
            )
        })?;
    for (name, kind) in links {
        let element = format!("{prefix}{name}");
        let refuse = |what: &str| {
            Err(DataError::at(
                path,
                &element,
                format!("is {what}, which points outside this file; scmz reads only what the file itself holds"),
            )
            .hint("write the data into the file itself (anndata's write_h5ad does)"))
        };
        match kind {
            LinkType::External => return refuse("an external link"),
            LinkType::Soft => continue,
            LinkType::Hard => {}
        }
        match group.loc_type_by_name(&name) {
            Ok(LocationType::Group) => {
                if depth >= MAX_DEPTH {
                    return Err(DataError::at(
                        path,
                        &element,
                        format!("is nested more than {MAX_DEPTH} groups deep"),
                    ));
                }
                let g = group.group(&name).at(path, &element)?;
                refuse_outside_storage(path, &g, &format!("{element}/"), depth + 1)?;
            }
            Ok(LocationType::Dataset) => {
                let ds = group.dataset(&name).at(path, &element)?;
                let dcpl = ds.dcpl().at(path, &element)?;
                if !dcpl.external().is_empty() {
                    return refuse("a dataset with external storage");
                }
                if dcpl.layout() == hdf5::dataset::Layout::Virtual {
                    return refuse("a virtual dataset");
                }
            }
            _ => {}
        }
    }
    Ok(())
}

pub fn has(group: &Group, name: &str) -> bool {
    group.link_exists(name)
}

pub fn is_group(group: &Group, name: &str) -> bool {
    has(group, name) && group.group(name).is_ok()
}

pub fn is_dataset(group: &Group, name: &str) -> bool {
    has(group, name) && group.dataset(name).is_ok()
}

/// A string attribute, whatever its HDF5 string type; None when absent or not a string.
pub fn attr_string(loc: &Location, name: &str) -> Option<String> {
    let attr = loc.attr(name).ok()?;
    read_strings(&attr).ok()?.into_iter().next()
}

/// A string-array attribute (`column-order`); empty when absent. anndata writes an empty
/// column order as an empty float array, which reads as no strings here.
pub fn attr_strings(loc: &Location, name: &str) -> Vec<String> {
    loc.attr(name)
        .ok()
        .and_then(|a| read_strings(&a).ok())
        .unwrap_or_default()
}

/// An integer attribute's values; None when missing or not stored as integers (HDF5 would
/// truncate floats such as a shape of 2.5 without a word).
pub fn attr_ints(loc: &Location, name: &str) -> Option<Vec<i64>> {
    let attr = loc.attr(name).ok()?;
    match attr.dtype().ok()?.to_descriptor().ok()? {
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) => attr.read_raw::<i64>().ok(),
        _ => None,
    }
}

/// What an HDF5 dataset stores, in words (for refusals).
pub fn describe_type(t: &TypeDescriptor) -> String {
    match t {
        TypeDescriptor::Integer(s) => format!("{}-bit integers", *s as usize * 8),
        TypeDescriptor::Unsigned(s) => format!("{}-bit unsigned integers", *s as usize * 8),
        TypeDescriptor::Float(s) => format!("{}-bit floats", *s as usize * 8),
        TypeDescriptor::Boolean => "booleans".into(),
        TypeDescriptor::Enum(_) => "enumerated values".into(),
        TypeDescriptor::Compound(_) => "compound records".into(),
        TypeDescriptor::FixedArray(..) | TypeDescriptor::VarLenArray(_) => "arrays".into(),
        TypeDescriptor::FixedAscii(_)
        | TypeDescriptor::FixedUnicode(_)
        | TypeDescriptor::VarLenAscii
        | TypeDescriptor::VarLenUnicode => "strings".into(),
        _ => "values of an unsupported type".into(),
    }
}

/// Whether `ds` stores numbers (integers or floats); otherwise what it stores, in words.
pub fn numeric(ds: &hdf5::Dataset, integers_only: bool) -> std::result::Result<(), String> {
    let t = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|_| "has a type HDF5 cannot describe".to_string())?;
    match t {
        TypeDescriptor::Integer(_) | TypeDescriptor::Unsigned(_) => Ok(()),
        TypeDescriptor::Float(_) if !integers_only => Ok(()),
        other => Err(format!(
            "holds {}, where {} are needed",
            describe_type(&other),
            if integers_only { "integers" } else { "numbers" }
        )),
    }
}

pub fn attr_bool(loc: &Location, name: &str) -> Option<bool> {
    let attr = loc.attr(name).ok()?;
    if let Ok(v) = attr.read_raw::<bool>() {
        return v.first().copied();
    }
    attr.read_raw::<i64>().ok()?.first().map(|v| *v != 0)
}

/// Reads a 1-D (or scalar) string dataset or attribute of any HDF5 string type.
pub fn read_strings(c: &Container) -> hdf5::Result<Vec<String>> {
    match c.dtype()?.to_descriptor()? {
        TypeDescriptor::VarLenUnicode => Ok(c
            .read_raw::<VarLenUnicode>()?
            .iter()
            // Bytes, not `as_str`: that assumes valid UTF-8, which a damaged file need not hold.
            .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
            .collect()),
        TypeDescriptor::VarLenAscii => Ok(c
            .read_raw::<VarLenAscii>()?
            .iter()
            .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
            .collect()),
        TypeDescriptor::FixedAscii(n) | TypeDescriptor::FixedUnicode(n) => {
            let bytes = read_raw_bytes(c, &c.dtype()?, n)?;
            Ok(split_fixed(&bytes, n))
        }
        other => Err(hdf5::Error::from(format!("holds {other}, not strings"))),
    }
}

/// Reads strings and reports failures against the file and element.
pub fn strings_at(path: &Path, c: &Container, element: &str) -> Result<Vec<String>> {
    read_strings(c).at(path, element)
}

fn split_fixed(bytes: &[u8], n: usize) -> Vec<String> {
    if n == 0 {
        return Vec::new();
    }
    bytes
        .chunks(n)
        .map(|b| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).trim_end().to_string()
        })
        .collect()
}

/// Reads the whole container into bytes laid out as `mem_type`, which must have `elem_size`.
fn read_raw_bytes(c: &Container, mem_type: &Datatype, elem_size: usize) -> hdf5::Result<Vec<u8>> {
    let n = c.size();
    let mut buf = vec![0u8; n * elem_size];
    if n == 0 {
        return Ok(buf);
    }
    // SAFETY: `buf` holds `n` elements of `elem_size` bytes, the size of `mem_type` (the caller's
    // contract), and the container has `n` elements; HDF5 writes no more.
    let status = hdf5::sync::sync(|| unsafe {
        if c.id_type() == hdf5_sys::h5i::H5I_type_t::H5I_ATTR {
            hdf5_sys::h5a::H5Aread(c.id(), mem_type.id(), buf.as_mut_ptr().cast())
        } else {
            hdf5_sys::h5d::H5Dread(
                c.id(),
                mem_type.id(),
                hdf5_sys::h5s::H5S_ALL,
                hdf5_sys::h5s::H5S_ALL,
                hdf5_sys::h5p::H5P_DEFAULT,
                buf.as_mut_ptr().cast(),
            )
        }
    });
    if status < 0 {
        return Err(hdf5::Error::from("HDF5 read failed"));
    }
    Ok(buf)
}

/// Fields of a compound dataset (pre-0.7 AnnData `obs`/`var`).
pub fn compound_fields(ds: &Container) -> hdf5::Result<Vec<CompoundField>> {
    match ds.dtype()?.to_descriptor()? {
        TypeDescriptor::Compound(ct) => Ok(ct.fields),
        other => Err(hdf5::Error::from(format!("holds {other}, not a compound type"))),
    }
}

/// Reads one field of a compound dataset, converted by HDF5 to the memory type `ty`.
fn read_field(ds: &Container, field: &str, ty: TypeDescriptor) -> hdf5::Result<Vec<u8>> {
    let size = ty.size();
    let mem = Datatype::from_descriptor(&TypeDescriptor::Compound(CompoundType {
        fields: vec![CompoundField::new(field, ty, 0, 0)],
        size,
    }))?;
    read_raw_bytes(ds, &mem, size)
}

pub fn read_field_f64(ds: &Container, field: &str) -> hdf5::Result<Vec<f64>> {
    let bytes = read_field(ds, field, TypeDescriptor::Float(hdf5::types::FloatSize::U8))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|b| f64::from_ne_bytes(b.try_into().expect("8 bytes")))
        .collect())
}

pub fn read_field_i64(ds: &Container, field: &str) -> hdf5::Result<Vec<i64>> {
    let bytes = read_field(ds, field, TypeDescriptor::Integer(hdf5::types::IntSize::U8))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|b| i64::from_ne_bytes(b.try_into().expect("8 bytes")))
        .collect())
}

pub fn read_field_strings(ds: &Container, field: &str, ty: &TypeDescriptor) -> hdf5::Result<Vec<String>> {
    match ty {
        TypeDescriptor::FixedAscii(n) | TypeDescriptor::FixedUnicode(n) => {
            Ok(split_fixed(&read_field(ds, field, ty.clone())?, *n))
        }
        other => Err(hdf5::Error::from(format!(
            "field {field} holds {other}; only fixed-length strings are read"
        ))),
    }
}

/// Number of elements along the first axis.
pub fn len(ds: &Container) -> usize {
    ds.shape().first().copied().unwrap_or(0)
}

/// Creates (truncating) or opens read-write an HDF5 file, without file locks (see `open_file`).
pub fn create_unlocked(path: &Path) -> hdf5::Result<File> {
    File::with_options().with_fapl(|p| p.file_locking(false)).create(path)
}

pub fn open_rw_unlocked(path: &Path) -> hdf5::Result<File> {
    File::with_options().with_fapl(|p| p.file_locking(false)).open_rw(path)
}
