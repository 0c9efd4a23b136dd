//! Reading the topics the pages show.
