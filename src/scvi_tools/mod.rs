//! scvi-tools models in the zoo. `torch.save` files are read without running their pickles
//! (`pickle`, `torchzip`); `import` turns a folder saved by scvi-tools' `model.save()` into an
//! ordinary zoo model; `export` writes a zoo model as such a folder.

pub mod export;
pub mod import;
pub mod pickle;
pub mod torchzip;
