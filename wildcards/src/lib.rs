//! Dynamic-prompt templating.
