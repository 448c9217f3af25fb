//! Where the agent's `State` comes from. Today: a directory of Kubernetes-shaped YAML documents
//! (file mode), watched for changes.

pub mod file;
pub mod objects;

pub use file::{load_dir, watch, ConfigError, Loaded};
