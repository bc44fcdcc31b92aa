//! The model layer on libtorch (`tch`). For now: turning CSR chunks into tensors and choosing a
//! device; the VAE and its training loop build on these.

pub mod tensor;
