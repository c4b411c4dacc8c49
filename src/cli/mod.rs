//! One module per subcommand.

pub mod demo;
pub mod inspect;
pub mod plan;
pub mod update;
