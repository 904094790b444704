//! A deterministic fleet simulator: one seed decides everything.
//!
//! It writes telemetry (DESIGN.md section 2) for hundreds to thousands of
//! hosts over days — office workers, developers, IT admins and servers with
//! realistic benign behaviour (sync clients uploading, browsers mostly
//! downloading, symmetric meetings, Outlook attachments, Office saving to
//! SharePoint, admins' PowerShell downloads, nightly backups, a fleet-wide
//! rollout mid-run) — plus injected exfiltration incidents of several kinds,
//! and a truth file naming them.

pub mod eval;
mod fleet;
pub mod run;

pub use fleet::{simulate, Incident, IncidentKind, SimOptions, SimSummary};
