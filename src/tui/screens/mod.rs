//! Each screen's own state and what its keys do: the datasets table (`datasets`), the zoo
//! (`models`), a dataset against a model and the pairwise matrix (`overlap`), and the job list
//! with its run monitor (`jobs`). `App` holds one of each, and hands a key to the screen in view
//! after the overlay (`overlay`) and the keys every screen shares.

pub mod datasets;
pub mod jobs;
pub mod models;
pub mod overlap;
pub mod overlay;
