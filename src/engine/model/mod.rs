//! The model: the VAE (`vae`, with its likelihoods and tests below it), the layers it is built of
//! (`layers`), the minibatch it reads (`input`) and its weights on disk (`stored`).

pub mod input;
pub mod layers;
pub mod stored;
pub mod vae;
