//! Choices shared by the front end, the engine and the files they write, as types: each parses
//! from the command line (`clap::ValueEnum`: an unknown value fails at parse time listing the
//! valid ones) and reads and writes as the same lowercase word in manifests and job records
//! (serde), so that a typo can neither train nor be stored. Torch-free.

use serde::{Deserialize, Serialize};

/// The count model of the decoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Likelihood {
    /// Negative binomial (scVI's default).
    #[default]
    Nb,
    /// Zero-inflated negative binomial.
    Zinb,
    Poisson,
}

/// The normalisation of each hidden layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// BatchNorm (scVI's default; needs minibatches of two cells or more).
    #[default]
    Batch,
    /// LayerNorm.
    Layer,
}

/// Where the engine computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// How projection presents the model genes a dataset lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// The encoder is told they are unmeasured (models trained with a presence mask or gene
    /// dropout).
    #[default]
    Mask,
    /// As zero counts.
    Zero,
}

/// The word the command line and the files use.
fn word(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

macro_rules! display_as_word {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&word(self))
            }
        }
    )*};
}
display_as_word!(Likelihood, Norm, DeviceChoice, Missing);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// The command line, the files and messages use one word per choice; others are refused.
    #[test]
    fn one_word_per_choice() {
        for l in Likelihood::value_variants() {
            let w = l.to_string();
            assert_eq!(serde_json::to_string(l).unwrap(), format!("\"{w}\""));
            assert_eq!(Likelihood::from_str(&w, false).unwrap(), *l);
        }
        assert_eq!(Norm::Layer.to_string(), "layer");
        assert_eq!(DeviceChoice::Cuda.to_string(), "cuda");
        assert!(serde_json::from_str::<Norm>("\"lyer\"").is_err());
        assert!(Norm::from_str("lyer", false).is_err());
    }
}
