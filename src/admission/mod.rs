//! AdmissionReview in, AdmissionReview out.
//!
//! [`parse_review`] (`review.rs`, the wire format), [`plan`] (`plan.rs`) and [`decide`]
//! (`decide.rs`) are pure; [`Admitter::review`] (`admitter.rs`) glues them to the resolver.
//! `warnings.rs` bounds what the answer says.

mod admitter;
mod decide;
mod logline;
mod plan;
mod review;
mod warnings;

pub use admitter::{AdmissionConfig, Admitter};
pub use decide::{decide, response, Decision, Endpoint};
pub use plan::{credential_request, plan, Plan};
pub use review::{
    parse_review, parse_review_header, parse_review_with, AdmissionRequest, AdmissionReview,
    Base64Patch, Envelope, GroupVersionKind, Reader, ResponseOut, ReviewError, ReviewOut,
    StatusOut,
};
pub use warnings::{
    bound_warnings, split_warning, MAX_DENIAL_BYTES, MAX_WARNINGS, MAX_WARNING_BYTES,
};

#[cfg(test)]
mod tests;
