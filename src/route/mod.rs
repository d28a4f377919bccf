//! Route table and matching: which `[[routes]]` rule a request matches, by specificity (an exact
//! host before a wildcard before any host; then an exact path, the longest prefix, regexes in
//! file order; a route with more conditions before one with fewer), on the normalised host and
//! path (`http::normalize`). Built once per configuration (`table`); a lookup allocates nothing.

mod table;

pub use table::RouteTable;
