//! The AUTOMATIC1111 wire contract.
//!
//! Layout:
//! - `api`: request and response types of the HTTP API (`/sdapi/v1`), their pydantic-style
//!   lenient parsing, and A1111's error bodies.
//! - `prompt`: the A1111 prompt language (extra networks, `AND`, prompt editing and
//!   alternation schedules, attention/emphasis) and prompt validation.
//! - `infotext`: the generation-parameters text A1111 writes into images, and its parser.
//! - `error`: error types of the prompt and infotext code.
//! - `samplers`: A1111 sampler and scheduler names, aliases and resolution.

pub mod api;
pub mod error;
pub mod infotext;
pub mod prompt;
pub mod samplers;
