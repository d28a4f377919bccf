//! A problem found by validation (or a warning): the dotted key and what is wrong with it.
//! Its own module so that each part of validation (`validate`, `routing`, `tls`) can report them.

/// The dotted key, what is wrong with it, and another key the problem involves (the other
/// route of an ambiguous pair), whose place is named too.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub message: String,
    pub related: Option<String>,
}
