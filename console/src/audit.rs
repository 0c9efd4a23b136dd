//! The record of every action taken in the console.
