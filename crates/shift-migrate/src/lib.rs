//! Migration tools for chroma-shift.
//!
//! - [`client`]: a typed Chroma v2 client over the proxy's HTTP client.
//! - [`backfill`]: copies what the source held before dual writes began, inside the running
//!   proxy so it shares the per-record order locks with live traffic.
//! - [`inventory`]: what one store holds, tenant by tenant.
//! - [`verify`]: compares the two stores by ids, record content and A/B queries.
//! - [`repair`]: brings the target in line with a verify report through the running proxy.

pub mod backfill;
pub mod client;
pub mod inventory;
pub mod repair;
pub mod verify;
