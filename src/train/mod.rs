//! Training: one loop for every method ([`trainer`]), driven by an objective ([`objective`],
//! [`classification`]) and the trainer's and optimizer's settings ([`config`], [`optim`]), inside a
//! stage that owns its directory, resume key and finished write ([`stage`], [`key`], [`checkpoint`]).

pub mod checkpoint;
pub mod classification;
pub mod config;
pub mod key;
pub mod loss;
pub mod objective;
pub mod optim;
pub mod stage;
pub mod trainer;
