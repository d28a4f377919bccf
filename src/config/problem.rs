//! A problem found by validation (or a warning): the dotted key and what is wrong with it.
//! Its own module so that each part of validation (`validate`, `tls`) can report them.

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}
