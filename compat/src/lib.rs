//! The AUTOMATIC1111 wire contract.
