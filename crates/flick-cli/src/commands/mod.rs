//! One module per subcommand (or group of related subcommands).

pub mod doctor;
pub mod guest;
pub mod images;
pub mod run;
pub mod snapshot;
pub mod version;
pub mod vm;
