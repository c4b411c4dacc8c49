//! One module per subcommand.

pub mod demo;
pub mod faults;
pub mod inspect;
pub mod plan;
pub mod update;
