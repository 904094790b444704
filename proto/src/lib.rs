//! The wire contract (`proto/outflow/v1/*.proto`) and the conversions between
//! its prost types and the engine's domain types. Conversions live here and
//! nowhere else: domain crates use domain types.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("outflow.v1");
}

mod convert;

pub use convert::*;

mod fleet_convert;

pub use fleet_convert::*;
